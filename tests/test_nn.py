"""The MLP block and the message GRU cell against NumPy float64 references."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax import nn as nri_nn


def _elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_mlp_block_train_and_eval_against_numpy(x64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 5))  # two leading axes: BatchNorm pools all 12 rows
    block = nri_nn.MLP(hidden=6, out=7)
    variables = jax.jit(lambda x: block.init(jax.random.key(0), x, train=False))(x)
    # flax keeps parameters and BatchNorm statistics float32 even under x64; cast
    # them all to float64 so that the whole computation is float64 and rtol 1e-8
    # (far above float64 round-off over these few products) holds on any CPU.
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
    p = jax.tree_util.tree_map(np.asarray, variables["params"])
    h = _elu(_elu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"]) @ p["fc2"]["kernel"]
             + p["fc2"]["bias"])
    mean, var = h.reshape(-1, 7).mean(0), h.reshape(-1, 7).var(0)
    scale, bias = p["batch_norm"]["scale"], p["batch_norm"]["bias"]
    train_ref = (h - mean) / np.sqrt(var + 1e-5) * scale + bias
    apply = jax.jit(block.apply, static_argnames=("train", "mutable"))
    out, updates = apply(variables, x, train=True, mutable=("batch_stats",))
    np.testing.assert_allclose(out, train_ref, rtol=1e-8, atol=1e-10)
    # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch statistic.
    stats = updates["batch_stats"]["batch_norm"]
    # (flax stores the biased batch variance; float64 statistics, float64 round-off)
    np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var, rtol=1e-12)
    assert stats["var"].dtype == np.float64
    # Eval uses the stored running statistics (initially mean 0, var 1).
    eval_ref = h / np.sqrt(1 + 1e-5) * scale + bias
    np.testing.assert_allclose(apply(variables, x, train=False), eval_ref, rtol=1e-8)


def test_reference_initialisation_statistics():
    block = nri_nn.MLP(hidden=400, out=300)
    params = jax.jit(lambda: block.init(jax.random.key(1), jnp.zeros((2, 200)), train=False))()[
        "params"]
    kernel = np.asarray(params["fc1"]["kernel"])
    # Xavier normal: std sqrt(2 / (fan_in + fan_out)), untruncated.
    assert kernel.std() == pytest.approx(np.sqrt(2 / 600), rel=0.02)
    assert np.abs(kernel).max() > 3 * np.sqrt(2 / 600)
    np.testing.assert_allclose(params["fc1"]["bias"], 0.1, rtol=1e-7)
    w = np.asarray(nri_nn.torch_uniform(64)(jax.random.key(2), (64, 500)))
    assert np.abs(w).max() <= 1 / 8 and np.abs(w).max() > 0.99 / 8


def test_dropout_only_in_training():
    block = nri_nn.MLP(hidden=64, out=8, dropout=0.5)
    x = jnp.ones((16, 4))
    variables = jax.jit(lambda x: block.init(jax.random.key(0), x, train=False))(x)
    apply = jax.jit(block.apply, static_argnames=("train", "mutable"))
    eval_a = apply(variables, x, train=False)
    eval_b = apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a, _ = apply(variables, x, train=True, mutable=("batch_stats",),
                       rngs={"dropout": jax.random.key(1)})
    train_b, _ = apply(variables, x, train=True, mutable=("batch_stats",),
                       rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(train_a, train_b)


def test_message_gru_cell_against_numpy(x64):
    rng = np.random.default_rng(3)
    x, m, h0 = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    cell = nri_nn.MessageGRUCell(hidden=5)
    params = jax.jit(lambda *a: cell.init(jax.random.key(0), *a))(x, m, h0)["params"]
    wi, bi = np.asarray(params["input"]["kernel"]), np.asarray(params["input"]["bias"])
    wm = np.asarray(params["message"]["kernel"])
    assert "bias" not in params["message"]
    xi, mm = x @ wi + bi, m @ wm
    r = _sigmoid(xi[..., :5] + mm[..., :5])
    z = _sigmoid(xi[..., 5:10] + mm[..., 5:10])
    n = np.tanh(xi[..., 10:] + r * mm[..., 10:])
    expected = (1 - z) * n + z * h0
    out = jax.jit(cell.apply)({"params": params}, x, m, h0)
    np.testing.assert_allclose(out, expected, rtol=1e-10)


# bfloat16 keeps 8 significant bits: rounding a float32 to it moves it by at most
# 2^-9 relative, so one product of two rounded inputs is off by at most ~2^-8.
BF16_UNIT = 2.0 ** -8


def _round_bf16(a):
    """Round-to-nearest-even to bfloat16 in NumPy (ml_dtypes), back as float64."""
    return np.asarray(a, np.float32).astype(jnp.bfloat16).astype(np.float64)


def test_mixed_matmul_and_its_gradients_against_numpy():
    rng = np.random.default_rng(1)
    x, w, g = (rng.normal(size=s).astype(np.float32) for s in [(3, 4, 40), (40, 6), (3, 4, 6)])
    y, vjp = jax.jit(lambda x, w: jax.vjp(nri_nn.mixed_matmul, x, w))(x, w)
    dx, dw = jax.jit(vjp)(g)
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32
    # Exactly the float64 product of the rounded inputs, up to float32 summation: each
    # bfloat16 x bfloat16 term is exact in float32, and a float32 sum of n terms in any
    # order (any kernel, blocking or AMX tile) is within (n - 1) 2^-24 sum|terms| of it.
    xr, wr, gr = _round_bf16(x), _round_bf16(w), _round_bf16(g)
    rows_x, rows_g = xr.reshape(-1, 40), gr.reshape(-1, 6)

    def check_sum(got, a, b):
        n = a.shape[-1]
        bound = 1.01 * (n - 1) * 2.0 ** -24 * (np.abs(a) @ np.abs(b)) + 1e-30
        assert np.all(np.abs(np.asarray(got, np.float64) - a @ b) <= bound)

    check_sum(y, xr, wr)
    check_sum(dx, gr, wr.T)
    check_sum(dw, rows_x.T, rows_g)
    # And within the analytic bound of the exact float64 product.
    bound = 1.01 * BF16_UNIT * (np.abs(x) @ np.abs(w).astype(np.float64))
    assert np.all(np.abs(np.asarray(y, np.float64) - x.astype(np.float64) @ w) <= bound)


def test_matmul_float32_is_plain_and_dtype_is_validated():
    x, w = jnp.ones((2, 3)), jnp.full((3, 4), 0.1)
    np.testing.assert_array_equal(jax.jit(nri_nn.matmul)(x, w), x @ w)
    with pytest.raises(ValueError, match="compute_dtype.*float16"):
        nri_nn.matmul(x, w, "float16")


@pytest.mark.parametrize("features", [4, nri_nn.NARROW_FEATURES + 1])
def test_float32_matmul_gradients_against_numpy(features):
    # Narrow inputs take the multiply-and-sum weight gradient, wider ones autodiff's product.
    rng = np.random.default_rng(2)
    x, w, g = (rng.normal(size=s).astype(np.float32)
               for s in [(3, 5, features), (features, 7), (3, 5, 7)])
    y, vjp = jax.jit(lambda x, w: jax.vjp(nri_nn.matmul, x, w))(x, w)
    dx, dw = jax.jit(vjp)(g)
    x64, w64, g64 = (a.astype(np.float64) for a in (x, w, g))
    np.testing.assert_allclose(y, x64 @ w64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, g64 @ w64.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, x64.reshape(-1, features).T @ g64.reshape(-1, 7),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("train", [True, False])
def test_bfloat16_blocks_agree_with_float32(train):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 5, 12)).astype(np.float32)
    blocks = [nri_nn.MLP(32, 16, compute_dtype=c) for c in ("float32", "bfloat16")]
    variables = blocks[0].init(jax.random.key(0), x, train=False)
    run = [jax.jit(lambda v, x, b=b: b.apply(v, x, train=train, mutable=["batch_stats"])[0])
           for b in blocks]
    full, mixed = (np.asarray(r(variables, x)) for r in run)
    assert mixed.dtype == np.float32
    # Outputs are O(1) (BatchNorm); two layers of ~2^-8 relative error each.
    assert np.max(np.abs(mixed - full)) < 8 * BF16_UNIT
    assert np.mean(np.abs(mixed - full)) < 2 * BF16_UNIT
    assert not np.array_equal(mixed, full)  # the option does change the arithmetic
    h = rng.normal(size=(6, 5, 16)).astype(np.float32)
    cells = [nri_nn.MessageGRUCell(16, compute_dtype=c) for c in ("float32", "bfloat16")]
    cell_vars = cells[0].init(jax.random.key(1), x, h, h)
    full, mixed = (np.asarray(jax.jit(c.apply)(cell_vars, x, h, h)) for c in cells)
    assert np.max(np.abs(mixed - full)) < 8 * BF16_UNIT


def _batch_norm_loss_numpy(x, scale, bias, weights, eps=1e-5):
    """float64 reference: a fixed linear function of BatchNorm's output and statistics."""
    rows = x.reshape(-1, x.shape[-1])
    mean = rows.mean(0)
    var = (rows ** 2).mean(0) - mean ** 2
    y = (x - mean) / np.sqrt(var + eps) * scale + bias
    w_y, w_mean, w_var = weights
    return np.sum(w_y * y) + np.sum(w_mean * mean) + np.sum(w_var * var)


def _central_differences(fn, a, h=1e-6):
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        up, down = a.copy(), a.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (fn(up) - fn(down)) / (2 * h)
    return grad


@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 128, 3)], ids=["21 rows", "256 rows"])
def test_batch_norm_gradients_against_float64_differences(x64, shape):
    """Gradients through the output, the batch mean and the batch variance, against
    central differences of a float64 NumPy BatchNorm."""
    rng = np.random.default_rng(1)
    x = rng.normal(loc=0.5, size=shape)
    scale, bias = rng.uniform(0.5, 2.0, shape[-1]), rng.normal(size=shape[-1])
    weights = (rng.normal(size=shape), rng.normal(size=shape[-1]), rng.normal(size=shape[-1]))

    def loss(x, scale, bias):
        y, mean, var = nri_nn.normalize_batch(x, scale, bias, 1e-5)
        return jnp.sum(weights[0] * y) + jnp.sum(weights[1] * mean) + jnp.sum(weights[2] * var)

    got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, scale, bias)
    want = (_central_differences(lambda a: _batch_norm_loss_numpy(a, scale, bias, weights), x),
            _central_differences(lambda a: _batch_norm_loss_numpy(x, a, bias, weights), scale),
            _central_differences(lambda a: _batch_norm_loss_numpy(x, scale, a, weights), bias))
    for g, w in zip(got, want):
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_is_flax_batch_norm(train):
    """Same variables, values, running statistics and gradients as flax's BatchNorm."""
    x = jax.random.normal(jax.random.key(0), (6, 7, 5)) * 3 + 1
    ours = nri_nn.batch_norm(train)
    theirs = nn.BatchNorm(use_running_average=not train, momentum=nri_nn.BATCH_NORM_MOMENTUM,
                          epsilon=nri_nn.BATCH_NORM_EPSILON)
    init = ours.init(jax.random.key(1), x)
    assert jax.tree.structure(init) == jax.tree.structure(theirs.init(jax.random.key(1), x))
    variables = {"params": {"scale": jnp.linspace(0.5, 2.0, 5), "bias": jnp.linspace(-1, 1, 5)},
                 "batch_stats": {"mean": jnp.linspace(-0.3, 0.3, 5), "var": jnp.linspace(0.5, 2, 5)}}

    def run(module, params, x):
        y, updates = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y)), updates

    results = [jax.jit(jax.value_and_grad(functools.partial(run, m), argnums=(0, 1),
                                          has_aux=True))(variables["params"], x)
               for m in (ours, theirs)]
    for a, b in zip(*(jax.tree.leaves(r) for r in results)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_batch_norm_saved_in_bfloat16_gives_the_gradient_of_the_rounded_input():
    """With saved_dtype bfloat16 the backward pass reads x rounded to bfloat16: the
    gradient is close to the exact one, and exact where x is representable."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    scale, bias = np.ones(6, np.float32), np.zeros(6, np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)

    def grad(x, saved):
        return jax.vjp(lambda x: nri_nn.normalize_batch(x, scale, bias, 1e-5, saved)[0], x)[1](g)[0]

    exact = jax.jit(functools.partial(grad, saved=None))(x)
    rounded = jax.jit(functools.partial(grad, saved=jnp.bfloat16))(x)
    assert rounded.dtype == jnp.float32
    np.testing.assert_allclose(rounded, exact, rtol=0, atol=2e-2 * np.abs(exact).max())
    assert not np.array_equal(rounded, exact)
    x16 = np.asarray(x.astype(jnp.bfloat16).astype(np.float32))  # representable
    np.testing.assert_allclose(jax.jit(functools.partial(grad, saved=jnp.bfloat16))(x16),
                               jax.jit(functools.partial(grad, saved=None))(x16),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("relu", [
    lambda x: nri_nn.relu(x), lambda x: nri_nn.relu(x, jnp.bfloat16),
    lambda x: nri_nn.hidden_relu(x, "float32"), lambda x: nri_nn.hidden_relu(x, "bfloat16")],
    ids=["relu", "relu-saving-bfloat16", "hidden_relu-float32", "hidden_relu-bfloat16"])
def test_relu_value_and_gradient(relu):
    x = np.array([[-2.0, -1e-30, 0.0, 1e-30, 3.0]], np.float32)
    g = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]], np.float32)
    for vjp_of in (jax.vjp, jax.jit(jax.vjp, static_argnums=0)):
        y, vjp = vjp_of(relu, x)
        assert y.dtype == jnp.float32
        np.testing.assert_array_equal(y, np.maximum(x, 0))
        np.testing.assert_array_equal(vjp(g)[0], np.where(x > 0, g, 0))


def test_hidden_relu_refuses_an_unknown_compute_dtype():
    with pytest.raises(ValueError, match="'float16'"):
        nri_nn.hidden_relu(np.zeros(3, np.float32), "float16")


def test_affine_bfloat16_against_numpy():
    """Products of the rounded inputs as `mixed_matmul`, plus the bias; the bias gradient
    is the row sum of the bfloat16-rounded cotangent, which the products read too."""
    rng = np.random.default_rng(6)
    x, w, b, g = (rng.normal(size=s).astype(np.float32)
                  for s in [(3, 4, 40), (40, 6), (6,), (3, 4, 6)])
    y, vjp = jax.jit(lambda *a: jax.vjp(lambda *a: nri_nn.affine(*a, "bfloat16"), *a))(x, w, b)
    dx, dw, db = jax.jit(vjp)(g)
    assert [a.dtype for a in (y, dx, dw, db)] == [jnp.float32] * 4
    xr, wr, gr = _round_bf16(x), _round_bf16(w), _round_bf16(g)
    rows_x, rows_g = xr.reshape(-1, 40), gr.reshape(-1, 6)

    def check(got, want, magnitude, n):
        # float32 sums of n exact terms (any order), plus one float32 rounding of the result.
        bound = 1.01 * (n * 2.0 ** -24 * magnitude + 2.0 ** -24 * np.abs(want)) + 1e-30
        assert np.all(np.abs(np.asarray(got, np.float64) - want) <= bound)

    check(y, xr @ wr + b, np.abs(xr) @ np.abs(wr) + np.abs(b), 41)
    check(dx, gr @ wr.T, np.abs(gr) @ np.abs(wr.T), 6)
    check(dw, rows_x.T @ rows_g, np.abs(rows_x.T) @ np.abs(rows_g), 12)
    check(db, rows_g.sum(0), np.abs(rows_g).sum(0), 12)
    assert not np.allclose(db, g.reshape(-1, 6).sum(0), rtol=1e-7, atol=0)  # it is the rounded g


@pytest.mark.parametrize("f", [5, 20], ids=["narrow", "wide"])  # nn.NARROW_FEATURES = 16
def test_affine_float32_against_numpy(x64, f):
    rng = np.random.default_rng(7)
    x, w, b, g = (rng.normal(size=s) for s in [(3, 4, f), (f, 6), (6,), (3, 4, 6)])
    y, vjp = jax.jit(lambda x, w, b: jax.vjp(nri_nn.affine, x, w, b))(x, w, b)
    dx, dw, db = vjp(g)
    rows_x, rows_g = x.reshape(-1, f), g.reshape(-1, 6)
    for got, want in [(y, x @ w + b), (dx, g @ w.T), (dw, rows_x.T @ rows_g),
                      (db, rows_g.sum(0))]:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="'float16'"):
        nri_nn.affine(x, w, b, "float16")


@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_has_flax_dense_parameters_and_values(use_bias):
    """Checkpoints written with flax's Dense load into it: same names, shapes, values."""
    x = np.random.default_rng(8).normal(size=(2, 3, 7)).astype(np.float32)
    ours = nri_nn.torch_dense(5, 7, use_bias=use_bias)
    flax_dense = nn.Dense(5, use_bias=use_bias, kernel_init=nri_nn.torch_uniform(7),
                          bias_init=nri_nn.torch_uniform(7))
    key = jax.random.key(0)
    variables, flax_variables = ours.init(key, x), flax_dense.init(key, x)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(flax_variables)
    leaves = zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(flax_variables))
    for a, b in leaves:
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ours.apply(variables, x), flax_dense.apply(variables, x),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_bfloat16_against_numpy(use_bias):
    """In bfloat16, Dense rounds x and the kernel to bfloat16 and sums in float32."""
    x = np.random.default_rng(9).normal(size=(4, 6, 40)).astype(np.float32)
    dense = nri_nn.torch_dense(5, 40, use_bias=use_bias, compute_dtype="bfloat16")
    variables = dense.init(jax.random.key(1), x)
    params = variables["params"]

    def bf16(a):
        return np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), np.float64)

    want = bf16(x) @ bf16(params["kernel"])
    if use_bias:
        want = want + np.asarray(params["bias"], np.float64)
    got = jax.jit(dense.apply)(variables, x)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: nri_nn.reference_dense(5),
                                  lambda: nri_nn.torch_dense(5, 7)],
                         ids=["reference_dense", "torch_dense"])
def test_dense_parameters_stay_float32_under_x64(x64, make):
    """As flax's Dense (param_dtype float32): float32 data keeps a float32 model under x64."""
    x = np.ones((2, 7), np.float32)
    dense = make()
    variables = dense.init(jax.random.key(0), x)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert jax.jit(dense.apply)(variables, x).dtype == jnp.float32
