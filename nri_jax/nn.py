"""Building blocks: the reference MLP block, initialisers, the message-gated GRU cell.

Train/eval behaviour is switched explicitly with `train: bool`: dropout is active
and BatchNorm uses (and updates) batch statistics only when `train` is True.
BatchNorm state lives in the 'batch_stats' collection; dropout draws from the
'dropout' RNG stream.

Initialisation follows the reference: encoder layers use Xavier-normal weights
and biases 0.1; decoder layers keep PyTorch's default Linear initialisation,
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases alike.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's xavier_normal_ is an untruncated normal with variance 2 / (fan_in + fan_out).
xavier_normal = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")
# PyTorch's BatchNorm1d momentum 0.1 weights the new batch; flax's momentum weights the old state.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


def torch_uniform(fan_in: int):
    """PyTorch's default Linear initialiser, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), any shape."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def reference_dense(features: int, name: str | None = None) -> nn.Dense:
    """Encoder Linear layer: Xavier-normal weights, biases 0.1."""
    return nn.Dense(features, kernel_init=xavier_normal,
                    bias_init=nn.initializers.constant(0.1), name=name)


def torch_dense(features: int, fan_in: int, *, use_bias: bool = True,
                name: str | None = None) -> nn.Dense:
    """Decoder Linear layer with PyTorch's default initialisation for `fan_in` inputs."""
    return nn.Dense(features, use_bias=use_bias, kernel_init=torch_uniform(fan_in),
                    bias_init=torch_uniform(fan_in), name=name)


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm over all rows (every axis but the last), PyTorch's momentum and eps."""
    return nn.BatchNorm(use_running_average=not train, momentum=BATCH_NORM_MOMENTUM,
                        epsilon=BATCH_NORM_EPSILON, name=name)


class MLP(nn.Module):
    """The reference block: Linear -> ELU -> dropout -> Linear -> ELU -> BatchNorm.

    Attributes:
      hidden: width of the first layer.
      out: width of the output.
      dropout: dropout rate after the first layer (training only).
    """

    hidden: int
    out: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps [..., F_in] -> [..., out]; BatchNorm pools all leading axes as rows."""
        x = nn.elu(reference_dense(self.hidden, name="fc1")(x))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        x = nn.elu(reference_dense(self.out, name="fc2")(x))
        return batch_norm(train, name="batch_norm")(x)


def gru_blend(hidden: jax.Array, candidate: jax.Array, update: jax.Array) -> jax.Array:
    """GRU state update h' = (1 - z) * n + z * h (z = update gate, n = candidate)."""
    return (1.0 - update) * candidate + update * hidden


class MessageGRUCell(nn.Module):
    """GRU cell whose recurrent input is the aggregated message, as in the NRI decoder.

    r = sigmoid(W_ir x + b_ir + W_mr m), z = sigmoid(W_iz x + b_iz + W_mz m),
    n = tanh(W_in x + b_in + r * (W_mn m)), h' = (1 - z) n + z h.
    The three input maps are one [D, 3H] product (with biases) and the three
    message maps one [H, 3H] product (no biases): the same parameters as the
    reference's six Linear layers, in two larger matrix products.

    Attributes:
      hidden: H, the hidden (and message) width.
    """

    hidden: int

    @nn.compact
    def __call__(self, inputs: jax.Array, messages: jax.Array, hidden: jax.Array) -> jax.Array:
        """inputs [..., D], messages [..., H], hidden [..., H] -> new hidden [..., H]."""
        h = self.hidden
        x_r, x_z, x_n = jnp.split(
            torch_dense(3 * h, inputs.shape[-1], name="input")(inputs), 3, axis=-1)
        m_r, m_z, m_n = jnp.split(
            torch_dense(3 * h, h, use_bias=False, name="message")(messages), 3, axis=-1)
        reset = nn.sigmoid(x_r + m_r)
        update = nn.sigmoid(x_z + m_z)
        candidate = jnp.tanh(x_n + reset * m_n)
        return gru_blend(hidden, candidate, update)
