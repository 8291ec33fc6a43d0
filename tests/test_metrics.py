"""Edge metrics and prediction errors against NumPy loops."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax import metrics


def test_confusion_and_accuracy_against_counting_loop():
    rng = np.random.default_rng(0)
    b, e, k = 4, 12, 3
    logits = rng.normal(size=(b, e, k)).astype(np.float32)
    labels = rng.integers(0, k, size=(b, e))
    confusion = jax.jit(functools.partial(metrics.edge_confusion, n_types=k))(logits, labels)
    expected = np.zeros((b, k, k))
    for i, j in itertools.product(range(b), range(e)):
        expected[i, labels[i, j], logits[i, j].argmax()] += 1
    np.testing.assert_array_equal(confusion, expected)
    accuracy = jax.jit(metrics.edge_accuracy)(logits, labels)
    np.testing.assert_allclose(accuracy, (logits.argmax(-1) == labels).mean(-1), rtol=1e-6)
    # Integer types pass through unchanged.
    np.testing.assert_array_equal(
        metrics.edge_confusion(jnp.asarray(logits.argmax(-1)), labels, n_types=k), expected)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_best_permutation_recovers_swapped_labels(k):
    rng = np.random.default_rng(k)
    labels = rng.integers(0, k, size=(50, 20))
    relabel = np.roll(np.arange(k), 1)  # predicted type p means label relabel^-1(p)
    predicted = relabel[labels]
    confusion = np.asarray(metrics.edge_confusion(jnp.asarray(predicted), labels, n_types=k))
    plain = float(metrics.edge_accuracy(jnp.asarray(predicted), labels).mean())
    accuracy, perm = metrics.best_permutation_accuracy(confusion.sum(0))
    assert plain < 0.9 and accuracy == 1.0
    np.testing.assert_array_equal(np.asarray(perm)[predicted], labels)


def test_best_permutation_is_chosen_over_the_dataset():
    # Identity is right for 70 edges, the swap for 30: the dataset-level answer is 0.7.
    confusion = np.array([[40, 15], [15, 30]])
    accuracy, perm = metrics.best_permutation_accuracy(confusion)
    assert perm == (0, 1) and accuracy == pytest.approx(0.7)
    with pytest.raises(ValueError, match="confusion"):
        metrics.best_permutation_accuracy(np.zeros((2, 3)))


def test_best_permutation_large_k_uses_assignment():
    k = 9
    rng = np.random.default_rng(9)
    confusion = rng.integers(0, 5, size=(k, k)) + np.diag(rng.integers(50, 60, size=k))
    perm = rng.permutation(k)
    shuffled = confusion[:, perm]  # predicted type p is label perm[p]
    accuracy, found = metrics.best_permutation_accuracy(shuffled)
    assert accuracy == pytest.approx(np.trace(confusion) / confusion.sum())
    np.testing.assert_array_equal(found, perm)


@pytest.mark.parametrize("t, p", [(12, 4), (10, 4), (7, 7), (9, 1)])
def test_mse_by_horizon_against_loop(t, p):
    rng = np.random.default_rng(t * 10 + p)
    pred, target = rng.normal(size=(3, 2, t, 2)), rng.normal(size=(3, 2, t, 2))
    fn = jax.jit(functools.partial(metrics.mse_by_horizon, prediction_steps=p))
    out = fn(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32))
    expected = np.zeros((3, p))
    for h in range(p):
        steps = [s for s in range(t) if s % p == h]
        expected[:, h] = ((pred - target)[:, :, steps] ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    mse = jax.jit(metrics.mse)(jnp.asarray(pred), jnp.asarray(target))
    np.testing.assert_allclose(mse, ((pred - target) ** 2).mean(axis=(1, 2, 3)), rtol=1e-5)


def test_metric_shape_validation():
    with pytest.raises(ValueError, match="prediction_steps"):
        metrics.mse_by_horizon(jnp.zeros((1, 2, 3, 2)), jnp.zeros((1, 2, 3, 2)),
                               prediction_steps=4)
    with pytest.raises(ValueError, match="labels"):
        metrics.edge_accuracy(jnp.zeros((2, 6, 2)), jnp.zeros((2, 5), jnp.int32))
