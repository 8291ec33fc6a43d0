"""The paper's LSTM prediction baselines: recurrent decoders that read no graph.

    LSTM (single): every object's trajectory through the same LSTM (shared
      weights), alone: no interaction at all.
    LSTM (joint): one LSTM over all objects' states side by side, so any
      interaction can be learned, but without a graph to say which.

Both follow the original's recurrent baseline: a per-object input MLP (D -> H -> H,
ReLU), a 2-layer LSTM (width H, or N x H over the concatenated objects for the joint
one), an output MLP (width -> width, ReLU, -> D per object) and the residual
``x_{t+1} = x_t + out``. They roll out like the recurrent NRI decoder
(`rollouts.RECURRENT`: trained with a burn-in, tested after reading frames 0..T_enc)
and take the same arguments; the edge weights are accepted and ignored. Train them
alone (`--method full-graph`, or `true-graph`: the same run, as no graph is read).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from nri_jax.decoders import maybe_remat
from nri_jax.encoders import check_trajectories
from nri_jax.nn import check_compute_dtype, hidden_relu, torch_dense
from nri_jax.rollouts import ONE_STEP, RECURRENT, Protocol, Teaching

N_LAYERS = 2  # the original's default


class LSTMCell(nn.Module):
    """``i, f, g, o = split(x W_x + h W_h + b)``; ``c' = sigmoid(f) c + sigmoid(i) tanh(g)``,
    ``h' = sigmoid(o) tanh(c')``, PyTorch's gate order and initialisation (one bias
    instead of its two, which only ever appear summed)."""

    hidden: int
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, h: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [..., F], h and c [..., H] -> (h', c')."""
        gates = (torch_dense(4 * self.hidden, self.hidden, name="input",
                             compute_dtype=self.compute_dtype)(x)
                 + torch_dense(4 * self.hidden, self.hidden, use_bias=False, name="recurrent",
                               compute_dtype=self.compute_dtype)(h))
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c


class _LSTMStep(nn.Module):
    """One step: input MLP per object, the LSTM layers, output MLP, residual."""

    hidden: int
    joint: bool
    dropout: float
    train: bool
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, carry, xs):
        """carry (per-layer (h, c), last prediction [B, N, D]); xs (frame [B, N, D],
        read the frame?) -> (carry, (prediction [B, N, D], the top layer's h))."""
        states, last = carry
        frame, read_frame = xs
        x = jnp.where(read_frame, frame, last)
        b, n, d = x.shape
        drop = nn.Dropout(self.dropout, deterministic=not self.train)
        cd, hid = self.compute_dtype, self.hidden
        h = drop(hidden_relu(torch_dense(hid, d, name="in1", compute_dtype=cd)(x), cd))
        h = hidden_relu(torch_dense(hid, hid, name="in2", compute_dtype=cd)(h), cd)
        if self.joint:
            h = h.reshape(b, n * hid)
        width = h.shape[-1]
        new_states = []
        for layer, (h_prev, c_prev) in enumerate(states):
            h, c = LSTMCell(width, cd, name=f"lstm{layer}")(h, h_prev, c_prev)
            new_states.append((h, c))
        out = drop(hidden_relu(torch_dense(width, width, name="out1", compute_dtype=cd)(h), cd))
        out = torch_dense(n * d if self.joint else d, width, name="out2", compute_dtype=cd)(out)
        prediction = x + out.reshape(b, n, d)
        return (tuple(new_states), prediction), (prediction, h)


class LSTMDecoder(nn.Module):
    """A graph-free recurrent baseline (module docstring): `joint` or single.

    Attributes:
      hidden: H, the input MLP's width (and the LSTM's, times N when `joint`).
      joint: one LSTM over the concatenated objects; else one per object.
      dropout: dropout rate after the first layer of the input and output MLPs.
      compute_dtype: dtype of the matrix products ("float32" or "bfloat16").
      remat: recompute each step's activations in the backward pass.
    """

    hidden: int = 256
    joint: bool = False
    dropout: float = 0.0
    compute_dtype: str = "float32"
    remat: bool = False
    protocol: ClassVar[Protocol] = RECURRENT
    reads_graph: ClassVar[bool] = False
    learned: ClassVar[bool] = True

    @classmethod
    def from_config(cls, config, physics=None) -> "LSTMDecoder":
        """The baseline a `model.ModelConfig` describes (`physics` is not used)."""
        return cls(hidden=config.decoder_hidden, dropout=config.decoder_dropout,
                   compute_dtype=config.compute_dtype, remat=config.remat)

    def __call__(self, inputs: jax.Array, edges: jax.Array | None = None, *, train: bool,
                 teaching: Teaching | None = None) -> jax.Array:
        """inputs [B, N, T, D] (edges ignored) -> predictions [B, N, T-1, D].

        Step s reads the ground-truth frame s where `teaching` says so (default:
        a burn-in of T - 10 steps, at least 1) and its previous prediction otherwise.
        """
        del edges
        teaching = self.protocol.training(inputs.shape[2]) if teaching is None else teaching
        return self._rollout(inputs, train, teaching)[0]

    def hidden_states(self, inputs: jax.Array) -> jax.Array:
        """The top LSTM layer's state after each ground-truth frame (the input of
        "Corr. (LSTM)", `correlation.CorrelationLSTMEncoder`).

        Args:
          inputs: [B, N, T, D] trajectories, each step reading the true frame.

        Returns:
          [B, N, T-1, H]: entry (b, i, s) is object i's h after reading frames 0..s
          (evaluation mode: no dropout).

        Raises:
          ValueError: for the joint LSTM, whose states are not per object.
        """
        if self.joint:
            raise ValueError("the joint LSTM's hidden states mix all objects; "
                             "per-object states need the single LSTM ('lstm-single')")
        return self._rollout(inputs, False, ONE_STEP)[1]

    @nn.compact
    def _rollout(self, inputs: jax.Array, train: bool,
                 teaching: Teaching) -> tuple[jax.Array, jax.Array]:
        """-> (predictions [B, N, T-1, D], top-layer states [B, N, T-1, H] or joint [B, T-1, N H])."""
        check_trajectories(inputs)
        check_compute_dtype(self.compute_dtype)
        b, n, t, d = inputs.shape
        if t < 2:
            raise ValueError(f"inputs must have T >= 2 frames, got shape {inputs.shape}")
        frames = jnp.moveaxis(inputs, 2, 0)[:-1]  # [T-1, B, N, D]
        width = (b, n * self.hidden) if self.joint else (b, n, self.hidden)
        zeros = jnp.zeros(width, inputs.dtype)
        carry = (tuple((zeros, zeros) for _ in range(N_LAYERS)), jnp.zeros_like(frames[0]))
        rollout = nn.scan(maybe_remat(_LSTMStep, self.remat), variable_broadcast="params",
                          split_rngs={"params": False, "dropout": True}, length=t - 1)
        _, (predictions, hidden) = rollout(
            self.hidden, self.joint, self.dropout, train, self.compute_dtype, name="step")(
            carry, (frames, jnp.asarray(teaching.ground_truth(t - 1))))
        return jnp.moveaxis(predictions, 0, 2), jnp.moveaxis(hidden, 0, -2)


class JointLSTMDecoder(LSTMDecoder):
    """LSTM (joint): `LSTMDecoder` with ``joint=True``."""

    joint: bool = True
