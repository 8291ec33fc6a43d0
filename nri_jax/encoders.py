"""Encoders: trajectories [B, N, T, D] -> edge-type logits [B, E, K].

Both encoders embed every directed edge of the fully connected graph (the MLP
encoder from per-object MLPs over all T*D values, the CNN encoder from a 1-D
convolution over the pair's trajectories) and then refine the edge embeddings
with `EdgeHead`. In the factor-graph variant (the reference default) the head
passes one more round of messages edge -> node -> edge, which lets each edge see
the whole graph; the non-factor variant applies one more edge MLP instead. Both
end with a skip connection from the first edge embedding and a linear layer to K
logits. Edge order: `graphs.fully_connected_index`.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nri_jax import graphs
from nri_jax.nn import MLP, batch_norm, check_compute_dtype, reference_dense, relu, rows

# 1-D convolutions of the CNN encoder: kernel 5 (valid), max-pool 2 (pairs), kernel 5 again.
# The second convolution needs (T - 4) // 2 >= 5 pooled steps, so T >= 14.
_CONV_KERNEL = 5
_POOL = 2
MIN_CNN_FRAMES = (_CONV_KERNEL - 1) + _POOL * _CONV_KERNEL


def _encoder_fields(config) -> dict:
    """The keyword arguments every encoder takes, from a `model.ModelConfig`."""
    return dict(hidden=config.encoder_hidden, n_edge_types=config.n_edge_types,
                dropout=config.encoder_dropout, factor=config.factor,
                compute_dtype=config.compute_dtype)


def check_trajectories(inputs: jax.Array, name: str = "inputs") -> None:
    """Raises ValueError unless `inputs` is [B, N, T, D] with N >= 2 objects."""
    if inputs.ndim != 4:
        raise ValueError(f"{name} must be [B, N, T, D], got shape {inputs.shape}")
    if inputs.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 objects (axis 1), got shape {inputs.shape}")


class EdgeHead(nn.Module):
    """Edge embeddings [B, E, H] of the fully connected graph -> logits [B, E, K].

    factor=True: e2n (sum of incoming edges / N, as in the reference) -> node
    MLP -> n2e -> concat with the skip input -> edge MLP -> Linear(K).
    factor=False: edge MLP -> concat with the skip input -> edge MLP -> Linear(K).
    """

    hidden: int
    n_edge_types: int
    dropout: float = 0.0
    factor: bool = True
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, skip: jax.Array, *, train: bool) -> jax.Array:
        h, cd = self.hidden, self.compute_dtype
        if self.factor:
            n = graphs.n_objects_from_edges(skip.shape[1])
            senders, receivers = graphs.fully_connected_index(n)
            x = graphs.edge_to_node(skip, receivers, n, reduce="sum",
                                    indices_are_sorted=True) / n
            x = MLP(h, h, self.dropout, cd, name="node_mlp")(x, train=train)
            x = graphs.node_to_edge(x, senders, receivers)
        else:
            x = MLP(h, h, self.dropout, cd, name="edge_mlp")(skip, train=train)
        x = jnp.concatenate([x, skip], axis=-1)
        x = MLP(h, h, self.dropout, cd, name="edge_skip_mlp")(x, train=train)
        # The logits layer is tiny (H x K) and feeds the softmax: kept float32.
        return reference_dense(self.n_edge_types, name="logits")(x)


class MLPEncoder(nn.Module):
    """The reference MLP encoder (710,146 parameters at N=5, T=49, D=4, H=256, K=2).

    Node MLP on the flattened trajectory [T*D] -> n2e -> edge MLP (= skip) -> EdgeHead.
    `compute_dtype` ("float32" or "bfloat16") is the dtype of the MLPs' products.
    """

    hidden: int = 256
    n_edge_types: int = 2
    dropout: float = 0.0
    factor: bool = True
    compute_dtype: str = "float32"
    reads_decoder: ClassVar[bool] = False  # built from the config alone

    @classmethod
    def from_config(cls, config) -> "MLPEncoder":
        """The encoder a `model.ModelConfig` describes."""
        return cls(**_encoder_fields(config))

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        """inputs [B, N, T, D] -> edge-type logits [B, E, K]."""
        check_trajectories(inputs)
        check_compute_dtype(self.compute_dtype)
        b, n, t, d = inputs.shape
        senders, receivers = graphs.fully_connected_index(n)
        h, cd = self.hidden, self.compute_dtype
        x = MLP(h, h, self.dropout, cd, name="node_mlp")(inputs.reshape(b, n, t * d),
                                                         train=train)
        x = graphs.node_to_edge(x, senders, receivers)
        x = MLP(h, h, self.dropout, cd, name="edge_mlp")(x, train=train)
        return EdgeHead(h, self.n_edge_types, self.dropout, self.factor, cd, name="head")(
            x, train=train)


def _windows(x: jax.Array, k: int, time: int, stack: int) -> jax.Array:
    """The k shifted windows of x's `time` axis side by side along axis `stack` (im2col).

    Block s of the `stack` axis holds x shifted by s along `time` (which shrinks to
    T - k + 1), built as one gather: as a concatenation of k slices, XLA on CPU wrote
    each slice and then the result, twice the memory and 1.7x the time (BENCHMARKS.md,
    2026-12-06). The gather moves bfloat16 as it is: on its 16-bit pattern (uint16),
    which the concatenation needed, jax 0.10.2's XLA on CPU computed wrong windows
    inside the whole model's jit (`test_bfloat16_train_step_agrees_with_float32`).
    """
    steps = x.shape[time] - k + 1
    shifts = np.arange(steps)[:, None] + np.arange(k)[None, :]  # [T - k + 1, k]
    windows = jnp.moveaxis(jnp.take(x, shifts, axis=time), time + 1, stack)
    return windows.reshape(windows.shape[:stack] + (k * windows.shape[stack + 1],)
                           + windows.shape[stack + 2:])


def bf16_valid_conv1d(x: jax.Array, w: jax.Array) -> jax.Array:
    """1-D VALID convolution x [R, T, C] * w [k, C, F] -> float32 [R, T-k+1, F].

    out[r, t] = sum_s x[r, t+s] @ w[s], as one product of the k shifted windows
    stacked along channels (im2col, [R, T-k+1, k*C] @ [k*C, F]) with bfloat16
    inputs and float32 sums; its two gradients are bfloat16 products too (XLA's
    own bfloat16 convolution has no such VJP). The windows are built from the
    bfloat16 input, and only that input (k times smaller than its windows) is
    kept for the backward pass; the weight gradient comes from the windows of the
    cotangent that the input gradient builds (C >= F) or from the input's, built
    again, transposed (C < F). Gradients come back in the dtypes of x and w.
    """
    if x.ndim != 3 or w.ndim != 3 or x.shape[-1] != w.shape[1] or x.shape[1] < w.shape[0]:
        raise ValueError(f"bf16_valid_conv1d needs x [R, T, C] and w [k, C, F] with T >= k, "
                         f"got {x.shape} and {w.shape}")
    return _bf16_conv1d(jnp.dtype(x.dtype), jnp.dtype(w.dtype), x, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _bf16_conv1d(x_dtype, w_dtype, x, w):
    return _bf16_conv1d_fwd(x_dtype, w_dtype, x, w)[0]


def _bf16_conv1d_fwd(x_dtype, w_dtype, x, w):
    k, c, f = w.shape
    x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    out = jnp.dot(_windows(x16, k, time=1, stack=2), w16.reshape(k * c, f),
                  preferred_element_type=jnp.float32)
    return out, (x16, w16)


def _bf16_conv1d_bwd(x_dtype, w_dtype, residuals, g):
    x16, w16 = residuals
    k, c, f = w16.shape
    n_rows, frames, _ = x16.shape
    steps = frames - k + 1
    g16 = g.astype(jnp.bfloat16)
    # Input gradient: the full convolution of the cotangent with the flipped kernel,
    # dx[t] = sum_u g[t + u - (k-1)] @ w[k-1-u]^T, as one product over the windows of
    # the zero-padded cotangent ([R*T, k*F]; block u holds g[t + u - (k-1)]).
    padded = jnp.pad(g16, ((0, 0), (k - 1, k - 1), (0, 0)))
    g_windows = _windows(padded, k, time=1, stack=2).reshape(n_rows * frames, k * f)
    flipped = jnp.transpose(w16[::-1], (0, 2, 1)).reshape(k * f, c)
    dx = jnp.dot(g_windows, flipped, preferred_element_type=jnp.float32)
    # Weight gradient dw[s] = sum_t x[t+s]^T g[t], a product contracting over the long
    # row axis. Both operands are laid out so that the product contracts over the first
    # one's minor axis (bf16's fast path on CPU).
    if c >= f:
        # The cotangent's windows above (block u holds g[t - (k-1-u)]): [C, R*T] @ [R*T, k*F]
        # gives dw[k-1-u] in block u. No new windows (at C = F the input's would be
        # (T - k + 1) / T as large, but built from the saved input alone, XLA built them
        # during the forward pass and kept them alive through the decoder).
        x_t = jnp.transpose(x16, (2, 0, 1)).reshape(c, n_rows * frames)
        dw = jnp.dot(x_t, g_windows, preferred_element_type=jnp.float32)
        dw = jnp.transpose(dw.reshape(c, k, f)[:, ::-1], (1, 0, 2))
    else:
        # The input's windows, built as [k*C, R*steps] from the transposed input
        # (k*C rows: small when C is, as for the first convolution's 2D input channels).
        windows_t = _windows(jnp.transpose(x16, (2, 0, 1)), k, time=2, stack=0).reshape(
            k * c, n_rows * steps)
        dw = jnp.dot(windows_t, g16.reshape(n_rows * steps, f),
                     preferred_element_type=jnp.float32).reshape(k, c, f)
    return dx.reshape(n_rows, frames, c).astype(x_dtype), dw.astype(w_dtype)


_bf16_conv1d.defvjp(_bf16_conv1d_fwd, _bf16_conv1d_bwd)


def _bf16_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                               rhs_dilation=None, dimension_numbers=None,
                               feature_group_count=1, precision=None):
    """nn.Conv's `conv_general_dilated` for 1-D VALID convolutions, as `bf16_valid_conv1d`."""
    del dimension_numbers, precision  # flax's NWC / WIO layout, float32 out by construction
    if (lhs.ndim != 3 or tuple(window_strides) != (1,) or padding != "VALID"
            or tuple(lhs_dilation or (1,)) != (1,) or tuple(rhs_dilation or (1,)) != (1,)
            or feature_group_count != 1):
        raise ValueError("bfloat16 convolution supports 1-D, VALID, stride 1, undilated only")
    return bf16_valid_conv1d(lhs, rhs)


# Reference init of the convolutions: weights N(0, 2 / (kernel * out_channels)), biases 0.1.
_conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_conv_bias_init = nn.initializers.constant(0.1)


def _conv(features: int, kernel: int, name: str, compute_dtype: str = "float32") -> nn.Conv:
    return nn.Conv(features, (kernel,), padding="VALID", name=name,
                   kernel_init=_conv_kernel_init, bias_init=_conv_bias_init,
                   conv_general_dilated=(None if compute_dtype == "float32"
                                         else _bf16_conv_general_dilated))


class ChannelScore(nn.Module):
    """A 1x1 convolution to one channel, [..., T, C] -> [..., T, 1], in float32.

    The parameters (float32) and values of `nn.Conv(1, (1,))` (kernel [1, C, 1], bias [1]),
    computed as a multiply-and-sum over channels: its weight gradient is then a
    sum over the rows of x, one pass, where XLA's convolution on CPU first
    copied x transposed (47 ms of the CNN+MLP step; BENCHMARKS.md, 2026-12-07).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        kernel = self.param("kernel", _conv_kernel_init, (1, c, 1), jnp.float32)
        bias = self.param("bias", _conv_bias_init, (1,), jnp.float32)
        return jnp.sum(x * rows(kernel.reshape(c), x), axis=-1, keepdims=True) + rows(bias, x)


def max_pool_pairs(x: jax.Array) -> jax.Array:
    """Max over non-overlapping pairs of time steps: [R, T, C] -> [R, T // 2, C].

    The values and gradients of `nn.max_pool(x, (2,), strides=(2,))` (on a tie the
    first of the pair takes the gradient, as XLA's select-and-scatter does), as
    one elementwise select. XLA's CPU pooling builds an index array and scatters
    the gradient: replacing it made the CNN+MLP train step 1.14x (float32) and
    1.22x (bfloat16) faster on 2 CPU cores (BENCHMARKS.md). Its VJP keeps the
    [R, T // 2, C] choice and writes the input gradient in one pass (autodiff of
    the select wrote two zero-padded arrays of the input's size and added them).
    """
    return _max_pool_pairs(x.shape[-2] % 2, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _max_pool_pairs(odd, x):
    return _max_pool_pairs_fwd(odd, x)[0]


def _max_pool_pairs_fwd(odd, x):
    steps = x.shape[-2] // 2
    pairs = x[..., :2 * steps, :].reshape(x.shape[:-2] + (steps, 2, x.shape[-1]))
    first, second = pairs[..., 0, :], pairs[..., 1, :]
    take_first = first >= second
    return jnp.where(take_first, first, second), take_first


def _max_pool_pairs_bwd(odd, take_first, g):
    zero = jnp.zeros_like(g)
    dx = jnp.stack([jnp.where(take_first, g, zero), jnp.where(take_first, zero, g)], axis=-2)
    dx = dx.reshape(g.shape[:-2] + (2 * g.shape[-2], g.shape[-1]))
    # An odd last frame belongs to no pair: zero gradient.
    return (jnp.pad(dx, [(0, 0)] * (dx.ndim - 2) + [(0, odd), (0, 0)]),)


_max_pool_pairs.defvjp(_max_pool_pairs_fwd, _max_pool_pairs_bwd)


class TemporalCNN(nn.Module):
    """Per-edge 1-D CNN with attention pooling over time: [R, T, C] -> [R, H].

    Conv(k5) -> ReLU -> BatchNorm -> dropout -> MaxPool(2) -> Conv(k5) -> ReLU ->
    BatchNorm; then a 1x1 "prediction" conv (H channels) and a 1x1 "attention"
    conv (1 channel, `ChannelScore`, softmax over time); output = mean over time
    of their product, computed as predict(sum_t attention_t x_t) / T'.
    """

    hidden: int
    dropout: float = 0.0
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        h, cd = self.hidden, self.compute_dtype
        # Each ReLU -> BatchNorm pair keeps one array for its backward pass (see
        # `nri_jax.nn.relu`), in bfloat16 when the products are.
        saved = None if cd == "float32" else jnp.bfloat16
        x = relu(_conv(h, _CONV_KERNEL, "conv1", cd)(x), saved)
        x = batch_norm(train, name="bn1", saved_dtype=saved)(x)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        x = max_pool_pairs(x)
        x = relu(_conv(h, _CONV_KERNEL, "conv2", cd)(x), saved)
        x = batch_norm(train, name="bn2", saved_dtype=saved)(x)
        # One output channel feeding a softmax: kept float32.
        attention = jax.nn.softmax(ChannelScore(name="attention")(x), axis=-2)
        # The mean over time of predict(x) * attention, with the attention-weighted
        # sum over time taken first: the weights sum to 1, so it is
        # predict(sum_t attention_t x_t) / T' (T' frames after the second
        # convolution), one [R, H] product instead of T'.
        pooled = jnp.sum(attention * x, axis=-2, keepdims=True)  # [R, 1, H]
        return _conv(h, 1, "predict", cd)(pooled)[..., 0, :] / x.shape[-2]


class CNNEncoder(nn.Module):
    """The reference CNN encoder (933,379 parameters at N=5, D=4, H=256, K=2).

    Per edge, the sender's and receiver's trajectories as 2D channels over T
    frames (T >= 14) -> TemporalCNN -> edge MLP (= skip) -> EdgeHead.
    `compute_dtype` ("float32" or "bfloat16") is the dtype of the convolutions'
    and MLPs' products.
    """

    hidden: int = 256
    n_edge_types: int = 2
    dropout: float = 0.0
    factor: bool = True
    compute_dtype: str = "float32"
    reads_decoder: ClassVar[bool] = False  # built from the config alone

    @classmethod
    def from_config(cls, config) -> "CNNEncoder":
        """The encoder a `model.ModelConfig` describes."""
        return cls(**_encoder_fields(config))

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        """inputs [B, N, T, D] -> edge-type logits [B, E, K]."""
        check_trajectories(inputs)
        check_compute_dtype(self.compute_dtype)
        b, n, t, d = inputs.shape
        if t < MIN_CNN_FRAMES:
            raise ValueError(f"inputs must have at least {MIN_CNN_FRAMES} frames for the CNN "
                             f"encoder, got shape {inputs.shape}")
        senders, receivers = graphs.fully_connected_index(n)
        pairs = graphs.node_to_edge(inputs, senders, receivers, axis=1)  # [B, E, T, 2D]
        n_edges = senders.shape[0]
        h, cd = self.hidden, self.compute_dtype
        x = TemporalCNN(h, self.dropout, cd, name="cnn")(
            pairs.reshape(b * n_edges, t, 2 * d), train=train).reshape(b, n_edges, h)
        x = MLP(h, h, self.dropout, cd, name="edge_mlp")(x, train=train)
        return EdgeHead(h, self.n_edge_types, self.dropout, self.factor, cd, name="head")(
            x, train=train)
