"""The MLP block and the message GRU cell against NumPy float64 references."""

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
    # (flax stores the biased batch variance; the momentum is a float32 constant)
    np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var, rtol=1e-6)
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
