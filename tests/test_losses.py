"""Loss terms against closed forms in NumPy float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax import losses


def _probs(rng, shape):
    logits = rng.normal(size=shape) * 2
    return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


@pytest.mark.parametrize("add_const", [False, True])
def test_gaussian_nll_matches_log_density(x64, add_const):
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(3, 4, 5, 2)), rng.normal(size=(3, 4, 5, 2))
    var = 5e-2
    fn = jax.jit(functools.partial(losses.gaussian_nll, variance=var, add_const=add_const))
    out = fn(jnp.asarray(pred), jnp.asarray(target))
    # -log N(t; p, var) = (t - p)^2 / (2 var) + 0.5 log(2 pi var), summed per example.
    log_density = -(target - pred) ** 2 / (2 * var) - 0.5 * np.log(2 * np.pi * var)
    expected = -log_density.sum(axis=(1, 2, 3))
    if not add_const:
        expected -= 0.5 * np.log(2 * np.pi * var) * 40
    assert out.shape == (3,)
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_kl_uniform_is_nonnegative_and_zero_at_prior(x64):
    rng = np.random.default_rng(1)
    probs = _probs(rng, (4, 6, 3))
    out = jax.jit(losses.kl_categorical_uniform)(jnp.asarray(probs))
    expected = np.sum(probs * np.log(probs * 3), axis=(1, 2))
    np.testing.assert_allclose(out, expected, rtol=1e-10)
    assert np.all(np.asarray(out) > 0)
    uniform = jnp.full((2, 6, 3), 1 / 3)
    np.testing.assert_allclose(losses.kl_categorical_uniform(uniform), 0.0, atol=1e-12)


def test_kl_custom_prior(x64):
    rng = np.random.default_rng(2)
    probs = _probs(rng, (4, 5, 4))
    prior = np.array([0.91, 0.03, 0.03, 0.03])
    log_prior = losses.sparsity_log_prior(4)
    np.testing.assert_allclose(log_prior, np.log(prior), rtol=1e-12)
    out = jax.jit(losses.kl_categorical)(jnp.asarray(probs), log_prior)
    np.testing.assert_allclose(out, np.sum(probs * np.log(probs / prior), axis=(1, 2)),
                               rtol=1e-10)
    at_prior = jnp.broadcast_to(jnp.asarray(prior), (2, 5, 4))
    np.testing.assert_allclose(losses.kl_categorical(at_prior, log_prior), 0.0, atol=1e-12)
    # A per-edge prior [E, K] is accepted too.
    per_edge = np.log(_probs(rng, (5, 4)))
    np.testing.assert_allclose(losses.kl_categorical(jnp.asarray(probs), jnp.asarray(per_edge)),
                               np.sum(probs * (np.log(probs) - per_edge), axis=(1, 2)),
                               rtol=1e-10)


def test_kl_handles_zero_probabilities():
    probs = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])
    out = losses.kl_categorical_uniform(probs)
    np.testing.assert_allclose(out, [2 * np.log(2)], rtol=1e-5)
    grad = jax.grad(lambda p: losses.kl_categorical_uniform(p).sum())(probs)
    assert np.all(np.isfinite(grad))


def test_sparsity_prior_two_types_and_validation():
    np.testing.assert_allclose(np.exp(losses.sparsity_log_prior(2)), [0.91, 0.09], rtol=1e-6)
    with pytest.raises(ValueError, match="no_edge_prob"):
        losses.sparsity_log_prior(2, no_edge_prob=1.0)
    with pytest.raises(ValueError, match="n_types"):
        losses.sparsity_log_prior(1)
    with pytest.raises(ValueError, match="log_prior"):
        losses.kl_categorical(jnp.ones((1, 2, 3)) / 3, jnp.zeros(4))
    with pytest.raises(ValueError, match="predictions"):
        losses.gaussian_nll(jnp.zeros((2, 3)), jnp.zeros((2, 4)), variance=1.0)
    with pytest.raises(ValueError, match="variance"):
        losses.gaussian_nll(jnp.zeros((2, 3)), jnp.zeros((2, 3)), variance=0.0)
