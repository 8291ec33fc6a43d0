"""Encoders: shapes, permutation equivariance, the reference parameter counts."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax import encoders, graphs
from helpers import numpy_variables as _numpy_variables


def _n_params(module, inputs):
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), inputs, train=False))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))


@pytest.mark.parametrize("module, expected", [
    (encoders.MLPEncoder(256, 2, factor=True), 710_146),
    (encoders.MLPEncoder(256, 2, factor=False), 644_610),
    (encoders.CNNEncoder(256, 2, factor=True), 933_379),
])
def test_reference_parameter_counts(module, expected):
    assert _n_params(module, jnp.zeros((1, 5, 49, 4))) == expected


def _edge_permutation(perm):
    """Index map: logits of the permuted input at e' = logits of the original at map[e']."""
    n = len(perm)
    senders, receivers = graphs.fully_connected_index(n)
    position = {(r, s): e for e, (r, s) in enumerate(zip(receivers, senders))}
    return np.array([position[(perm[r], perm[s])] for r, s in zip(receivers, senders)])


@pytest.mark.parametrize("module, shape", [
    (encoders.MLPEncoder(16, 3, dropout=0.5, factor=True), (2, 4, 6, 3)),
    (encoders.MLPEncoder(16, 2, factor=False), (3, 3, 5, 2)),
    (encoders.CNNEncoder(8, 2, dropout=0.5, factor=True), (2, 4, 16, 2)),
    (encoders.CNNEncoder(8, 4, factor=False), (1, 3, 14, 1)),
])
def test_shapes_and_permutation_equivariance(module, shape):
    """Eval mode (dropout > 0 would need a 'dropout' RNG if it were active)."""
    b, n = shape[:2]
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    variables = _numpy_variables(module, x, train=False)
    apply = jax.jit(lambda v, x: module.apply(v, x, train=False))

    def run(v, x):
        # Permuting the objects reorders the sums over incoming edges; with full float32
        # products (not a GPU's TF32, which would round the reordered values differently)
        # the two runs stay within float32 round-off of each other.
        with jax.default_matmul_precision("highest"):
            return apply(v, x)

    logits = run(variables, x)
    assert logits.shape == (b, n * (n - 1), module.n_edge_types)
    perm = np.random.default_rng(n).permutation(n)
    while np.all(perm == np.arange(n)):
        perm = np.roll(perm, 1)
    permuted = run(variables, x[:, perm])
    np.testing.assert_allclose(permuted, logits[:, _edge_permutation(perm)], rtol=1e-4, atol=1e-5)
    # The check can fail: the logits are not symmetric under swapping edges at random.
    assert not np.allclose(permuted, logits, atol=1e-3)


def test_dropout_and_batch_statistics_in_training():
    module = encoders.MLPEncoder(16, 2, dropout=0.5)
    x = np.random.default_rng(3).normal(size=(4, 3, 5, 2)).astype(np.float32)
    variables = _numpy_variables(module, x, train=False)
    run = jax.jit(lambda k: module.apply(variables, x, train=True, rngs={"dropout": k},
                                         mutable=["batch_stats"]))
    (a, updates), (b, _) = run(jax.random.key(5)), run(jax.random.key(6))
    assert not np.allclose(a, b)
    moved = jax.tree_util.tree_map(lambda u, v: not np.allclose(u, v),
                                   updates["batch_stats"], variables["batch_stats"])
    assert all(jax.tree_util.tree_leaves(moved))


@pytest.mark.parametrize("frames", [8, 9])
def test_max_pool_pairs_is_max_pool_in_value_and_gradient(frames):
    """Same values and same gradients as nn.max_pool, ties included (after ReLU and
    BatchNorm, zeros make ties common): the first of a tied pair takes the gradient."""
    rng = np.random.default_rng(5)
    x = np.maximum(rng.normal(size=(3, frames, 4)), 0).astype(np.float32)  # many ties at 0
    g = rng.normal(size=(3, frames // 2, 4)).astype(np.float32)

    def value_and_grad(pool, x, g):
        out, vjp = jax.vjp(pool, x)
        return out, vjp(g)[0]

    pools = [encoders.max_pool_pairs, lambda x: nn.max_pool(x, (2,), strides=(2,))]
    (ours, our_grad), (flax_, flax_grad) = (
        jax.jit(functools.partial(value_and_grad, pool))(x, g) for pool in pools)
    assert np.sum(x[:, 0:2 * (frames // 2):2] == x[:, 1:2 * (frames // 2):2]) > 5
    np.testing.assert_array_equal(ours, flax_)
    np.testing.assert_array_equal(our_grad, flax_grad)


def test_input_validation():
    with pytest.raises(ValueError, match="inputs"):
        encoders.MLPEncoder(8, 2).init(jax.random.key(0), jnp.zeros((2, 5, 4)), train=False)
    with pytest.raises(ValueError, match="at least 14 frames"):
        encoders.CNNEncoder(8, 2).init(jax.random.key(0), jnp.zeros((1, 3, 13, 2)), train=False)


def _round_bf16(a):
    return np.asarray(a, np.float32).astype(jnp.bfloat16).astype(np.float64)


def test_bfloat16_convolution_is_the_rounded_valid_convolution():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 9, 4)).astype(np.float32)  # [R, T, C]
    conv = encoders._conv(5, 3, "conv", "bfloat16")
    variables = conv.init(jax.random.key(0), x)
    kernel, bias = (np.asarray(variables["params"][k]) for k in ("kernel", "bias"))
    # float64 VALID cross-correlation of the rounded inputs: out[r, s] = sum_k x[r, s+k] W[k].
    xr, wr = _round_bf16(x), _round_bf16(kernel)
    expected = sum(xr[:, k:k + 7] @ wr[k] for k in range(3)) + bias
    np.testing.assert_allclose(jax.jit(conv.apply)(variables, x), expected, rtol=1e-5, atol=1e-5)


def test_channel_score_is_a_one_channel_1x1_convolution():
    """Same parameters as nn.Conv(1, (1,)) (checkpoints load), same values and gradients."""
    x = np.random.default_rng(4).normal(size=(3, 7, 6)).astype(np.float32)
    ours = encoders.ChannelScore()
    conv = nn.Conv(1, (1,), padding="VALID", kernel_init=encoders._conv_kernel_init,
                   bias_init=encoders._conv_bias_init)
    variables, conv_variables = ours.init(jax.random.key(5), x), conv.init(jax.random.key(5), x)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(conv_variables)
    leaves = zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(conv_variables))
    for a, b in leaves:
        np.testing.assert_array_equal(a, b)
    kernel, bias = (np.asarray(variables["params"][k], np.float64) for k in ("kernel", "bias"))
    np.testing.assert_allclose(jax.jit(ours.apply)(variables, x), x @ kernel[0] + bias,
                               rtol=1e-5, atol=1e-5)
    # Gradients of a weighted sum of the scores: d/dkernel = sum over rows of x * weight.
    weights = np.random.default_rng(6).normal(size=(3, 7, 1))
    grads = jax.jit(jax.grad(lambda v: jnp.sum(ours.apply(v, x) * weights)))(variables)["params"]
    np.testing.assert_allclose(grads["kernel"][0, :, 0], (x * weights).sum((0, 1)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads["bias"], [weights.sum()], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c, f", [(4, 6), (6, 4)], ids=["narrow input", "wide input"])
def test_bfloat16_convolution_gradients_against_numpy(c, f):
    """Both ways to the weight gradient: the input's windows (C < F) and the cotangent's
    (C >= F, the windows the input gradient builds)."""
    rng = np.random.default_rng(5)
    k, frames = 3, 9
    x, w = rng.normal(size=(2, frames, c)), rng.normal(size=(k, c, f))
    g = rng.normal(size=(2, frames - k + 1, f))
    x, w, g = (a.astype(np.float32) for a in (x, w, g))
    y, vjp = jax.jit(lambda x, w: jax.vjp(encoders.bf16_valid_conv1d, x, w))(x, w)
    dx, dw = jax.jit(vjp)(g)
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32
    # float64 loops over the rounded inputs: out[t] = sum_s x[t+s] w[s], so
    # dx[t+s] += g[t] w[s]^T and dw[s] += x[t+s]^T g[t].
    xr, wr, gr = _round_bf16(x), _round_bf16(w), _round_bf16(g)
    want_y, want_dx, want_dw = np.zeros(y.shape), np.zeros(x.shape), np.zeros(w.shape)
    for t in range(frames - k + 1):
        for s in range(k):
            want_y[:, t] += xr[:, t + s] @ wr[s]
            want_dx[:, t + s] += gr[:, t] @ wr[s].T
            want_dw[s] += xr[:, t + s].T @ gr[:, t]
    for got, want in [(y, want_y), (dx, want_dx), (dw, want_dw)]:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=rf"T >= k.*\(2, 2, {c}\)"):
        encoders.bf16_valid_conv1d(x[:, :2], w)


@pytest.mark.parametrize("encoder_cls, shape", [
    (encoders.MLPEncoder, (4, 4, 6, 3)), (encoders.CNNEncoder, (4, 4, 16, 2))])
def test_bfloat16_logits_agree_with_float32(encoder_cls, shape):
    x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    full, mixed = (encoder_cls(16, 2, compute_dtype=c) for c in ("float32", "bfloat16"))
    variables = _numpy_variables(full, x, train=False)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
        jax.eval_shape(lambda: mixed.init(jax.random.key(0), x, train=False)))
    run = lambda m: np.asarray(jax.jit(lambda v, x: m.apply(
        v, x, train=True, mutable=["batch_stats"])[0])(variables, x))
    want, got = run(full), run(mixed)
    # Logits are O(1); about six products deep, each ~2^-8 relative (BatchNorm
    # renormalises in between), so the error stays a few 2^-8 units.
    assert np.max(np.abs(got - want)) < 0.05 * max(1.0, np.max(np.abs(want)))
    assert not np.array_equal(got, want)


@pytest.mark.parametrize("module", [encoders.MLPEncoder(256, 2, compute_dtype="bfloat16"),
                                    encoders.CNNEncoder(256, 2, compute_dtype="bfloat16")])
def test_bfloat16_keeps_the_parameters(module):
    counts = {encoders.MLPEncoder: 710_146, encoders.CNNEncoder: 933_379}
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 5, 49, 4)),
                                                train=False))
    leaves = jax.tree_util.tree_leaves(shapes["params"])
    assert sum(int(np.prod(a.shape)) for a in leaves) == counts[type(module)]
    assert all(a.dtype == jnp.float32 for a in leaves)
    with pytest.raises(ValueError, match="compute_dtype"):
        encoders.MLPEncoder(8, 2, compute_dtype="half").init(
            jax.random.key(0), jnp.zeros((1, 3, 4, 2)), train=False)


# Float64 NumPy references, written step by step from the reference NRI (not from the
# modules). The modules run under x64 with float64 inputs AND float64 variables (batch_stats
# included), so both sides compute every operation in float64 and differ only in summation
# order: rtol 1e-10 has orders of magnitude of room over that rounding and still catches
# any wrong index, concatenation order or reduction.

def _elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _edge_list(n):
    """(receiver, sender) per edge: the row-major off-diagonal of [N, N], receiver = row."""
    return [(i, j) for i in range(n) for j in range(n) if j != i]


def _node_to_edge(nodes):
    """[B, N, ..., F] -> [B, E, ..., 2F]: concat[sender, receiver] features per edge."""
    return np.stack([np.concatenate([nodes[:, s], nodes[:, r]], -1)
                     for r, s in _edge_list(nodes.shape[1])], axis=1)


def _edge_to_node(edges, n):
    """[B, E, F] -> [B, N, F]: the sum of INCOMING edges divided by the number of objects."""
    nodes = np.zeros((edges.shape[0], n, edges.shape[-1]))
    for e, (r, _) in enumerate(_edge_list(n)):  # explicit loop over edges, not a segment op
        nodes[:, r] += edges[:, e]
    return nodes / n


def _batch_norm(p, stats, x, train):
    """Train: statistics over all rows (every axis but the last), biased variance."""
    if train:
        rows = x.reshape(-1, x.shape[-1])
        mean = rows.mean(0)
        var = ((rows - mean) ** 2).mean(0)
    else:
        mean, var = stats["mean"], stats["var"]
    return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _dense(p, x):
    return x @ p["kernel"] + p["bias"]


def _mlp(p, stats, x, train):
    x = _elu(_dense(p["fc2"], _elu(_dense(p["fc1"], x))))
    return _batch_norm(p["batch_norm"], stats["batch_norm"], x, train)


def _edge_head_reference(p, stats, skip, n, factor, train):
    if factor:
        x = _node_to_edge(_mlp(p["node_mlp"], stats["node_mlp"], _edge_to_node(skip, n), train))
    else:
        x = _mlp(p["edge_mlp"], stats["edge_mlp"], skip, train)
    x = _mlp(p["edge_skip_mlp"], stats["edge_skip_mlp"], np.concatenate([x, skip], -1), train)
    return _dense(p["logits"], x)


def _mlp_encoder_reference(variables, x, factor, train):
    p, s = variables["params"], variables["batch_stats"]
    b, n, t, d = x.shape
    nodes = _mlp(p["node_mlp"], s["node_mlp"], x.reshape(b, n, t * d), train)
    skip = _mlp(p["edge_mlp"], s["edge_mlp"], _node_to_edge(nodes), train)
    return _edge_head_reference(p["head"], s["head"], skip, n, factor, train)


def _conv(p, x):
    """VALID cross-correlation over time [..., T, C] -> [..., T-k+1, F], one tap at a time."""
    k = p["kernel"].shape[0]
    steps = x.shape[-2] - k + 1
    return p["bias"] + sum(x[..., j:j + steps, :] @ p["kernel"][j] for j in range(k))


def _temporal_cnn_reference(p, s, x, train):
    x = _batch_norm(p["bn1"], s["bn1"], np.maximum(_conv(p["conv1"], x), 0), train)
    pooled = x.shape[-2] // 2  # an odd last frame is dropped
    x = np.maximum(x[..., 0:2 * pooled:2, :], x[..., 1:2 * pooled:2, :])
    x = _batch_norm(p["bn2"], s["bn2"], np.maximum(_conv(p["conv2"], x), 0), train)
    scores = _conv(p["attention"], x)  # [..., T', 1]
    attention = np.exp(scores - scores.max(-2, keepdims=True))
    attention = attention / attention.sum(-2, keepdims=True)  # softmax over time
    return (_conv(p["predict"], x) * attention).mean(-2)


def _cnn_encoder_reference(variables, x, factor, train):
    p, s = variables["params"], variables["batch_stats"]
    pairs = _node_to_edge(x)  # [B, E, T, 2D]: the sender's D channels, then the receiver's
    features = _temporal_cnn_reference(p["cnn"], s["cnn"], pairs, train)
    skip = _mlp(p["edge_mlp"], s["edge_mlp"], features, train)
    return _edge_head_reference(p["head"], s["head"], skip, x.shape[1], factor, train)


def _float64_variables(module, x):
    """Random variables, all float64; running statistics away from (0, 1) so eval uses them."""
    rng = np.random.default_rng(7)

    def cast(path, leaf):
        name = path[-1].key
        if name == "mean":
            return rng.normal(scale=0.3, size=leaf.shape)
        if name == "var":
            return rng.uniform(0.5, 2.0, size=leaf.shape)
        return np.asarray(leaf, np.float64)

    return jax.tree_util.tree_map_with_path(cast, _numpy_variables(module, x, train=False))


def _check_against_reference(module, shape, reference, train):
    x = np.random.default_rng(2).normal(size=shape)
    variables = _float64_variables(module, x)
    run = jax.jit(lambda v, x: module.apply(v, x, train=train, mutable=["batch_stats"])[0])
    logits = run(variables, x)
    assert logits.dtype == np.float64
    expected = reference(variables, x, module.factor, train)
    np.testing.assert_allclose(logits, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("factor, shape, k", [(True, (3, 4, 5, 2), 3), (False, (2, 3, 4, 3), 2)],
                         ids=["factor", "no_factor"])
def test_mlp_encoder_matches_float64_reference(x64, factor, shape, k, train):
    _check_against_reference(encoders.MLPEncoder(6, k, factor=factor), shape,
                             _mlp_encoder_reference, train)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_cnn_encoder_matches_float64_reference(x64, train):
    # T = 19: conv -> 15 frames, pool -> 7 (an odd length, floored), conv -> 3 for the softmax.
    _check_against_reference(encoders.CNNEncoder(6, 2, factor=True), (2, 3, 19, 2),
                             _cnn_encoder_reference, train)
