"""Tests of device-side batching and the data-parallel mesh helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax import data as data_lib


def test_shuffled_batches_cover_distinct_examples():
    batches = np.asarray(data_lib.shuffled_batches(jax.random.key(0), 103, 10))
    assert batches.shape == (10, 10)
    assert len(np.unique(batches)) == 100  # no repeats; 3 dropped
    assert batches.min() >= 0 and batches.max() < 103


def test_shuffled_batches_depend_on_key_only():
    a = data_lib.shuffled_batches(jax.random.key(1), 50, 5)
    b = data_lib.shuffled_batches(jax.random.key(1), 50, 5)
    c = data_lib.shuffled_batches(jax.random.key(2), 50, 5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_ordered_batches_pad_with_zero_weight():
    indices, weights = data_lib.ordered_batches(7, 3)
    assert indices.shape == weights.shape == (3, 3)
    np.testing.assert_array_equal(indices.ravel()[:7], np.arange(7))
    np.testing.assert_array_equal(weights.ravel(), [1, 1, 1, 1, 1, 1, 1, 0, 0])


def test_gather_selects_rows_under_jit():
    split = data_lib.Split(jnp.arange(24.0).reshape(6, 1, 2, 2), jnp.arange(12).reshape(6, 2))
    mesh = data_lib.make_mesh()
    batch = jax.jit(lambda s, i: data_lib.gather(s, i, mesh))(split, jnp.array([4, 1]))
    np.testing.assert_array_equal(batch.features, np.asarray(split.features)[[4, 1]])
    np.testing.assert_array_equal(batch.labels, np.asarray(split.labels)[[4, 1]])


def test_batch_size_errors_name_the_value():
    mesh = data_lib.make_mesh()
    with pytest.raises(ValueError, match="batch_size=10 is larger"):
        data_lib.check_batch_size(10, 5, mesh, "batch_size")
    with pytest.raises(ValueError, match="n_devices"):
        data_lib.make_mesh(len(jax.devices()) + 1)
