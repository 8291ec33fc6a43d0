"""Gumbel-softmax: one-hot hard samples, gradients, and the Gumbel-max distribution."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax import sampling


def test_gumbel_noise_is_finite_and_standard():
    g = jax.jit(sampling.sample_gumbel, static_argnums=1)(jax.random.key(0), (200_000,))
    assert np.all(np.isfinite(g))
    # Gumbel(0, 1): mean = Euler-Mascheroni constant, variance = pi^2 / 6.
    assert float(g.mean()) == pytest.approx(np.euler_gamma, abs=5 * np.pi / np.sqrt(6 * 2e5))
    assert float(g.var()) == pytest.approx(np.pi ** 2 / 6, rel=0.03)


@pytest.mark.parametrize("hard", [False, True])
def test_samples_are_distributions_and_hard_is_exactly_one_hot(hard):
    logits = np.random.default_rng(1).normal(size=(4, 6, 3)).astype(np.float32) * 3
    sample = jax.jit(functools.partial(sampling.gumbel_softmax, tau=0.5, hard=hard))(
        jax.random.key(2), logits)
    assert sample.shape == logits.shape
    np.testing.assert_allclose(sample.sum(-1), 1.0, rtol=1e-6)
    if hard:
        assert set(np.unique(np.asarray(sample)).tolist()) <= {0.0, 1.0}
        np.testing.assert_array_equal(sample.sum(-1), 1.0)


@pytest.mark.parametrize("hard", [False, True])
def test_gradients_flow(hard):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    weights = rng.normal(size=(5, 4)).astype(np.float32)

    def f(l):
        return jnp.sum(weights * sampling.gumbel_softmax(jax.random.key(5), l, tau=0.5, hard=hard))

    grad = jax.jit(jax.grad(f))(logits)
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 1e-3


def test_argmax_frequencies_match_softmax():
    logits = jnp.array([1.0, 0.0, -1.0, 0.5])
    n = 40_000
    keys = jax.random.split(jax.random.key(6), n)
    sample = jax.jit(jax.vmap(lambda k: sampling.gumbel_softmax(k, logits, tau=0.5, hard=True)))
    counts = np.asarray(sample(keys).sum(0), np.float64)
    expected = n * np.exp(logits) / np.exp(logits).sum()
    # Pearson chi-square with 3 degrees of freedom: 30 is far beyond the 1e-5 tail (25.9).
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 30, (counts, expected)


def test_temperature_sharpens_soft_samples_and_validation():
    logits = np.random.default_rng(7).normal(size=(1000, 3)).astype(np.float32)
    key = jax.random.key(8)
    sample = jax.jit(sampling.gumbel_softmax, static_argnames=("tau", "hard"))
    cold = sample(key, logits, tau=0.1, hard=False)
    warm = sample(key, logits, tau=5.0, hard=False)
    assert float(cold.max(-1).mean()) > float(warm.max(-1).mean()) + 0.3
    with pytest.raises(ValueError, match="tau"):
        sampling.gumbel_softmax(key, logits, tau=0.0, hard=False)
    with pytest.raises(ValueError, match="logits"):
        sampling.gumbel_softmax(key, logits[:, :1], tau=0.5, hard=False)


def test_straight_through_gradient_is_the_soft_samples_gradient():
    """Hard samples: one-hot values, but exactly the soft sample's gradient (same key).

    Both gradients come from the same softmax, so they agree to round-off; a
    sign or scale error in the straight-through term would not.
    """
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    weights = rng.normal(size=(6, 3)).astype(np.float32)
    key = jax.random.key(9)

    def grad(hard):
        f = lambda l: jnp.sum(weights * sampling.gumbel_softmax(key, l, tau=0.5, hard=hard))
        return np.asarray(jax.jit(jax.grad(f))(logits))

    soft, hard = grad(False), grad(True)
    assert np.abs(soft).max() > 1e-3
    # Two jitted programs, which XLA may fuse (and round) differently: each gradient
    # (s_k / tau)(w_k - sum_j s_j w_j) has terms up to ~5.5 here, a few 2^-24 ulps of which
    # is ~2e-6 absolute, while a sign or scale error moves every entry by its own size.
    np.testing.assert_allclose(hard, soft, rtol=1e-6, atol=2e-6)
