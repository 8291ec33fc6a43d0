"""Encoders: shapes, permutation equivariance, the reference parameter counts."""

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
    run = jax.jit(lambda v, x: module.apply(v, x, train=False))
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
