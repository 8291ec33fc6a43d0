"""Building blocks: the reference MLP block, initialisers, the message-gated GRU cell.

Train/eval behaviour is switched explicitly with `train: bool`: dropout is active
and BatchNorm uses (and updates) batch statistics only when `train` is True.
BatchNorm state lives in the 'batch_stats' collection; dropout draws from the
'dropout' RNG stream.

Initialisation follows the reference: encoder layers use Xavier-normal weights
and biases 0.1; decoder layers keep PyTorch's default Linear initialisation,
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases alike.

Mixed precision. Every layer that owns a large matrix product takes
`compute_dtype`: "float32" (the default, plain float32 products) or "bfloat16",
where the product's two inputs are rounded to bfloat16 and it accumulates and
returns float32 (`mixed_matmul`; with a bias `affine`, whose bias gradient sums
the bfloat16 cotangent the product gradients read, and the `Dense` layer built on
it). Parameters, BatchNorm, activations between the products and everything
downstream stay float32 (the CNN encoder's ReLU and BatchNorm keep their input
for the backward pass in bfloat16, `saved_dtype`).
Performance: on the 2-core Zen 4 CPU (AVX512_BF16) a [12800, 256] x [256, 256]
product runs about 2x faster in bfloat16; the backward pass only gains if its two
products are in bfloat16 too, which is why `mixed_matmul` has its own VJP
(autodiff of the casts alone leaves the backward products in float32, measured
no faster than plain float32).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# PyTorch's xavier_normal_ is an untruncated normal with variance 2 / (fan_in + fan_out).
xavier_normal = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")
# PyTorch's BatchNorm1d momentum 0.1 weights the new batch; flax's momentum weights the old state.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# In float32, a product whose x has at most this many features (the MLP
# decoder's first layer reads D = 2-4 coordinates) takes its weight gradient
# x^T g as a broadcast multiply-and-sum: as a product, XLA on CPU transposed the
# [rows, H] cotangent for it inside the fusion that sums the edges onto nodes,
# 6 ms for a 3 MB array (BENCHMARKS.md, "A narrow first layer and the CNN's own
# convolution VJP"). In bfloat16 the product measured faster, so `mixed_matmul`
# keeps it.
NARROW_FEATURES = 16


def narrow_weight_gradient(x: jax.Array, g: jax.Array) -> jax.Array:
    """x [..., F], g [..., H] -> [F, H] = sum over rows of x^T g, as a multiply-and-sum."""
    return jnp.sum(x[..., :, None] * g[..., None, :], axis=tuple(range(g.ndim - 1)))


def mixed_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., F] @ w [F, H] -> float32 [..., H], products in bfloat16, sums in float32.

    The backward pass rounds the output cotangent to bfloat16 as well, so its
    two products (input and weight gradients) also run in bfloat16 with float32
    accumulation; gradients come back in the dtypes of `x` and `w`.
    """
    return _mixed_matmul(jnp.dtype(x.dtype), jnp.dtype(w.dtype), x, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mixed_matmul(x_dtype, w_dtype, x, w):
    return _mixed_matmul_fwd(x_dtype, w_dtype, x, w)[0]


def _mixed_matmul_fwd(x_dtype, w_dtype, x, w):
    x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    # The bfloat16 copies are the residuals: half the memory of float32 ones.
    return jnp.dot(x16, w16, preferred_element_type=jnp.float32), (x16, w16)


def _mixed_matmul_bwd(x_dtype, w_dtype, residuals, g):
    x16, w16 = residuals
    g16 = g.astype(jnp.bfloat16)
    row_axes = tuple(range(g.ndim - 1))
    dx = lax.dot_general(g16, w16, (((g.ndim - 1,), (1,)), ((), ())),
                         preferred_element_type=jnp.float32)
    dw = lax.dot_general(x16, g16, ((row_axes, row_axes), ((), ())),
                         preferred_element_type=jnp.float32)
    return dx.astype(x_dtype), dw.astype(w_dtype)


_mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


def affine(x: jax.Array, w: jax.Array, b: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """x [..., F] @ w [F, H] + b [H] in `compute_dtype` (`matmul`, then the bias).

    In bfloat16 the bias gradient is summed from the output cotangent rounded to
    bfloat16, the copy the two product gradients read anyway: the float32
    cotangent then has that cast as its only reader, so XLA writes the bfloat16
    copy in the pass that computes it instead of storing both.
    """
    check_compute_dtype(compute_dtype)
    if compute_dtype == "float32":
        return matmul(x, w, compute_dtype) + rows(b, x)
    return _mixed_affine(jnp.dtype(x.dtype), jnp.dtype(w.dtype), x, w, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mixed_affine(x_dtype, w_dtype, x, w, b):
    return _mixed_matmul(x_dtype, w_dtype, x, w) + rows(b, x)


def _mixed_affine_fwd(x_dtype, w_dtype, x, w, b):
    product, residuals = _mixed_matmul_fwd(x_dtype, w_dtype, x, w)
    return product + rows(b, x), (residuals, b)


def _mixed_affine_bwd(x_dtype, w_dtype, residuals, g):
    residuals, b = residuals
    g16 = g.astype(jnp.bfloat16)
    db = jnp.sum(g16, axis=tuple(range(g.ndim - 1)), dtype=jnp.float32)
    dx, dw = _mixed_matmul_bwd(x_dtype, w_dtype, residuals, g16)
    return dx, dw, db.astype(b.dtype)


_mixed_affine.defvjp(_mixed_affine_fwd, _mixed_affine_bwd)


def check_compute_dtype(compute_dtype: str) -> None:
    """Raises ValueError unless `compute_dtype` is "float32" or "bfloat16"."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, "
                         f"got {compute_dtype!r}")


def matmul(x: jax.Array, w: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """x [..., F] @ w [F, H] in `compute_dtype` ("float32": the value of `x @ w`).

    In float32 a narrow x (F <= NARROW_FEATURES) takes `narrow_weight_gradient`
    for its weight gradient; otherwise this is exactly `x @ w`.
    """
    check_compute_dtype(compute_dtype)
    if compute_dtype != "float32":
        return mixed_matmul(x, w)
    return _narrow_matmul(x, w) if x.shape[-1] <= NARROW_FEATURES else x @ w


@jax.custom_vjp
def _narrow_matmul(x, w):
    return x @ w


def _narrow_matmul_fwd(x, w):
    return x @ w, (x, w)


def _narrow_matmul_bwd(residuals, g):
    x, w = residuals
    return g @ w.T, narrow_weight_gradient(x, g)


_narrow_matmul.defvjp(_narrow_matmul_fwd, _narrow_matmul_bwd)


def torch_uniform(fan_in: int):
    """PyTorch's default Linear initialiser, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), any shape."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Dense(nn.Module):
    """A linear layer x @ kernel + bias in `compute_dtype`: flax.linen.Dense's
    parameters ("kernel" [F, H], "bias" [H], float32) and values.

    In float32 it computes as flax does, plain `x @ kernel` whatever the width of
    x (`matmul`'s narrow-input weight gradient is kept for the message MLPs,
    `TypedMessages`, where it was measured). In bfloat16 through `affine`
    (`mixed_matmul` without a bias).

    Attributes:
      features: H, the output width.
      use_bias: add the bias.
      kernel_init, bias_init: flax initialisers.
      compute_dtype: dtype of the product ("float32" or "bfloat16").
    """

    features: int
    use_bias: bool = True
    kernel_init: Any = xavier_normal
    bias_init: Any = nn.initializers.zeros
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # float32 parameters, as flax's Dense (its param_dtype), also under x64.
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        bias = (self.param("bias", self.bias_init, (self.features,), jnp.float32)
                if self.use_bias else None)
        check_compute_dtype(self.compute_dtype)
        if self.compute_dtype == "float32":
            y = x @ kernel
            return y if bias is None else y + rows(bias, y)
        if bias is None:
            return mixed_matmul(x, kernel)
        return affine(x, kernel, bias, self.compute_dtype)


def reference_dense(features: int, name: str | None = None, *,
                    compute_dtype: str = "float32") -> Dense:
    """Encoder Linear layer: Xavier-normal weights, biases 0.1."""
    return Dense(features, kernel_init=xavier_normal, bias_init=nn.initializers.constant(0.1),
                 name=name, compute_dtype=compute_dtype)


def torch_dense(features: int, fan_in: int, *, use_bias: bool = True,
                name: str | None = None, compute_dtype: str = "float32") -> Dense:
    """Decoder Linear layer with PyTorch's default initialisation for `fan_in` inputs."""
    return Dense(features, use_bias=use_bias, kernel_init=torch_uniform(fan_in),
                 bias_init=torch_uniform(fan_in), name=name, compute_dtype=compute_dtype)


def batch_norm(train: bool, name: str | None = None, saved_dtype=None) -> "BatchNorm":
    """BatchNorm over all rows (every axis but the last), PyTorch's momentum and eps."""
    return BatchNorm(use_running_average=not train, momentum=BATCH_NORM_MOMENTUM,
                     epsilon=BATCH_NORM_EPSILON, saved_dtype=saved_dtype, name=name)


def normalize_batch(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                    saved_dtype=None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batch normalisation of x [..., F] over its rows -> (y, mean, var), at least float32.

    y = (x - mean) * rsqrt(var + epsilon) * scale + bias (computed as x * a + b), with
    the row mean and the biased variance E[x^2] - E[x]^2 (clipped at 0), as
    `flax.linen.BatchNorm` computes them. Gradients reach x through y, mean and var.

    Memory: the VJP keeps only x (in `saved_dtype`, default x's own) and the
    per-feature statistics, and recomputes the normalised x in the backward pass.
    Autodiff kept x - mean besides x: two arrays of x's size, alive from the
    encoder's forward pass through the whole decoder (BENCHMARKS.md, 2026-12-06).
    With a narrower `saved_dtype` the backward pass reads x rounded to it (the batch
    statistics stay those of x itself).
    """
    saved = jnp.dtype(saved_dtype or x.dtype)
    return _normalize_batch(epsilon, saved, jnp.dtype(x.dtype), x, scale, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _normalize_batch(epsilon, saved, x_dtype, x, scale, bias):
    return _normalize_batch_fwd(epsilon, saved, x_dtype, x, scale, bias)[0]


def _normalize_batch_fwd(epsilon, saved, x_dtype, x, scale, bias):
    x_wide = x.astype(_statistics_dtype(x))
    axes = tuple(range(x.ndim - 1))
    mean, mean_sq = jnp.mean(x_wide, axes), jnp.mean(lax.square(x_wide), axes)
    var = jnp.maximum(0.0, mean_sq - lax.square(mean))
    inv = lax.rsqrt(var + epsilon)
    # One multiply-add per element, x * a + b, and no x - mean: the backward pass reads
    # x alone, and an x - mean here would be what XLA keeps for it.
    a = inv * scale
    y = x_wide * rows(a, x) + rows(bias - mean * a, x)
    return (y, mean, var), (x.astype(saved), mean, inv, scale)


def _normalize_batch_bwd(epsilon, saved, x_dtype, residuals, cotangents):
    del epsilon, saved
    x, mean, inv, scale = residuals
    g, g_mean, g_var = cotangents
    n = x.size // x.shape[-1]
    x_wide = x.astype(g.dtype)
    g_bias, g_x = _row_sums(g, g * x_wide)
    g_scale = (g_x - mean * g_bias) * inv  # sum of g * normalised x
    # gx = a (g - (g_bias + (x - mean) inv g_scale) / n) through y, whose statistics
    # depend on x, plus (g_mean + 2 g_var (x - mean)) / n through the statistics
    # themselves; written as a g + cx x + c0 with per-feature cx and c0, so that no
    # array of x's size is computed from x alone (XLA would compute x - mean during
    # the forward pass and keep it alive until here).
    a = inv * scale
    cx = (2.0 * g_var - a * inv * g_scale) / n
    c0 = (g_mean - a * g_bias) / n - cx * mean
    gx = rows(a, x) * g + rows(cx, x) * x_wide + rows(c0, x)
    return gx.astype(x_dtype), g_scale.astype(scale.dtype), g_bias.astype(scale.dtype)


_normalize_batch.defvjp(_normalize_batch_fwd, _normalize_batch_bwd)


def _row_sums(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The sums over the rows of a and b [..., F] -> ([F], [F]), in one pass.

    One variadic reduction, which XLA fuses with what computes a and b (here the
    widening of a saved bfloat16 input: as two sums, XLA on CPU widened it during the
    forward pass and kept the float32 copy until the backward pass). It sums the axes
    between the first and the last, then a plain sum takes the first: over all rows at
    once, XLA's CPU reduction ran 8x slower (BENCHMARKS.md), and partial sums per
    leading index stay on the device that holds them when that axis (the batch) is
    sharded (blocks of rows that straddle it made XLA gather the whole array).
    """
    if a.ndim == 2:
        a, b = a[:, None], b[:, None]
    zero = jnp.zeros((), a.dtype)
    partial = lax.reduce((a, b), (zero, zero), lambda p, q: (p[0] + q[0], p[1] + q[1]),
                         tuple(range(1, a.ndim - 1)))
    return jnp.sum(partial[0], 0), jnp.sum(partial[1], 0)


def _statistics_dtype(x: jax.Array):
    """float32, or x's dtype where it is wider (float64 under jax_enable_x64), as flax."""
    return jnp.promote_types(x.dtype, jnp.float32)


def rows(v: jax.Array, like: jax.Array) -> jax.Array:
    """A per-feature vector [F] shaped to broadcast over the rows of `like` [..., F]
    (explicitly: the tests forbid rank promotion), e.g. `x + rows(bias, x)`."""
    return v.reshape((1,) * (like.ndim - 1) + v.shape)


class BatchNorm(nn.Module):
    """`flax.linen.BatchNorm` over the last axis (same variables, values and running
    statistics) whose training-mode backward pass keeps only its input, in
    `saved_dtype` (default: the input's): see `normalize_batch`. Running statistics
    follow flax's convention: new = momentum * old + (1 - momentum) * batch
    statistic (biased variance).
    """

    use_running_average: bool
    momentum: float = BATCH_NORM_MOMENTUM
    epsilon: float = BATCH_NORM_EPSILON
    saved_dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        if self.use_running_average:
            mean, mul = ra_mean.value, lax.rsqrt(ra_var.value + self.epsilon) * scale
            return (x - rows(mean, x)) * rows(mul, x) + rows(bias, x)
        y, mean, var = normalize_batch(x, scale, bias, self.epsilon, self.saved_dtype)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y


def relu(x: jax.Array, saved_dtype=None) -> jax.Array:
    """max(x, 0), whose VJP keeps its output (in `saved_dtype`, default x's own)
    rather than its input: before `BatchNorm` with the same `saved_dtype`, which
    keeps that output too, one saved array serves both backward passes."""
    return _relu(jnp.dtype(saved_dtype or x.dtype), x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _relu(saved, x):
    return jnp.maximum(x, 0)


def _relu_fwd(saved, x):
    y = jnp.maximum(x, 0)
    return y, y.astype(saved)


def _relu_bwd(saved, y, g):
    return (jnp.where(y > 0, g, jnp.zeros_like(g)),)


_relu.defvjp(_relu_fwd, _relu_bwd)


def hidden_relu(x: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """ReLU of a hidden layer whose output feeds a product in `compute_dtype`.

    In bfloat16 that product reads a bfloat16 copy of the output, and ReLU's
    derivative needs only the sign of its output, which the copy keeps: `relu`
    saves the copy for the backward pass, so no float32 copy of the activations
    is written (nor, under remat, written again): the MLP+MLP bfloat16 train
    step 1.10-1.17x faster on an Intel Xeon (BENCHMARKS.md, "Hidden ReLUs that
    keep their bfloat16 output"). In float32: `jax.nn.relu`.
    """
    check_compute_dtype(compute_dtype)
    return relu(x, jnp.bfloat16) if compute_dtype == "bfloat16" else jax.nn.relu(x)


class MLP(nn.Module):
    """The reference block: Linear -> ELU -> dropout -> Linear -> ELU -> BatchNorm.

    Attributes:
      hidden: width of the first layer.
      out: width of the output.
      dropout: dropout rate after the first layer (training only).
      compute_dtype: dtype of the two matrix products ("float32" or "bfloat16").
    """

    hidden: int
    out: int
    dropout: float = 0.0
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps [..., F_in] -> [..., out]; BatchNorm pools all leading axes as rows."""
        cd = self.compute_dtype
        x = nn.elu(reference_dense(self.hidden, name="fc1", compute_dtype=cd)(x))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        x = nn.elu(reference_dense(self.out, name="fc2", compute_dtype=cd)(x))
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
      compute_dtype: dtype of the two matrix products ("float32" or "bfloat16");
        the gates and the state update stay float32.
    """

    hidden: int
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, inputs: jax.Array, messages: jax.Array, hidden: jax.Array) -> jax.Array:
        """inputs [..., D], messages [..., H], hidden [..., H] -> new hidden [..., H]."""
        h, cd = self.hidden, self.compute_dtype
        x_r, x_z, x_n = jnp.split(
            torch_dense(3 * h, inputs.shape[-1], name="input", compute_dtype=cd)(inputs), 3,
            axis=-1)
        m_r, m_z, m_n = jnp.split(
            torch_dense(3 * h, h, use_bias=False, name="message", compute_dtype=cd)(messages),
            3, axis=-1)
        reset = nn.sigmoid(x_r + m_r)
        update = nn.sigmoid(x_z + m_z)
        candidate = jnp.tanh(x_n + reset * m_n)
        return gru_blend(hidden, candidate, update)
