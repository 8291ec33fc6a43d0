"""Tests for simulators.datasets: edge order, labels, normalisation and loading."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simulators import datasets, formats


def labels_by_loop(matrix):
    """Off-diagonal entries, receiver (row) i outer, sender (column) j inner, j != i."""
    n = matrix.shape[-1]
    return np.stack([matrix[..., i, j] for i in range(n) for j in range(n) if j != i], axis=-1)


@pytest.mark.parametrize("n", [3, 5])
def test_edge_order_and_labels_match_a_loop(n):
    receivers, senders = datasets.fully_connected_edges(n)
    pairs = [(i, j) for i in range(n) for j in range(n) if j != i]
    assert list(zip(receivers.tolist(), senders.tolist())) == pairs
    matrix = np.random.default_rng(n).integers(0, 100, (2, 3, n, n))
    expected = labels_by_loop(matrix)
    np.testing.assert_array_equal(datasets.edge_labels(matrix), expected)
    np.testing.assert_array_equal(jax.jit(datasets.edge_labels)(jnp.asarray(matrix)), expected)


@pytest.mark.parametrize("n", [3, 5])
def test_edges_to_matrix_inverts_edge_labels(n):
    labels = np.random.default_rng(n).integers(1, 9, (4, n * (n - 1))).astype(np.int32)
    matrix = datasets.edges_to_matrix(labels, n)
    for i in range(n):
        assert np.all(matrix[:, i, i] == 0)
    np.testing.assert_array_equal(labels_by_loop(matrix), labels)
    jitted = jax.jit(datasets.edges_to_matrix, static_argnums=1)(jnp.asarray(labels), n)
    np.testing.assert_array_equal(jitted, matrix)
    with pytest.raises(ValueError, match="labels"):
        datasets.edges_to_matrix(labels[:, :-1], n)
    with pytest.raises(ValueError, match="n_objects"):
        datasets.fully_connected_edges(1)


def test_labels_follow_each_systems_rule():
    rng = np.random.default_rng(0)
    charges = rng.choice([-1.0, 1.0], size=(6, 5))
    charged = charges[:, :, None] * charges[:, None, :]
    expected = np.array([[int((a + 1) / 2) for a in row] for row in labels_by_loop(charged)])
    np.testing.assert_array_equal(datasets.labels_from_edges("charged", charged), expected)
    assert datasets.labels_from_edges("charged", charged).dtype == np.int32
    coupling = rng.integers(0, 2, (6, 5, 5)) * (1 - np.eye(5, dtype=int))
    np.testing.assert_array_equal(datasets.labels_from_edges("kuramoto", coupling),
                                  labels_by_loop(coupling))
    np.testing.assert_array_equal(datasets.labels_from_edges("springs", coupling),
                                  labels_by_loop(coupling))
    with pytest.raises(ValueError, match="labels outside"):
        datasets.labels_from_edges("springs", coupling * 2)


SIZES = {"train": (5, 7), "valid": (4, 7), "test": (3, 9)}  # (S, T)


def random_springs(seed=0, n=4):
    """Raw springs splits; valid and test range wider than train, so they leave [-1, 1]."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, (s, t) in SIZES.items():
        wide = 1.0 if split == "train" else 1.5
        upper = np.triu(rng.integers(0, 2, (s, n, n)), 1)
        loc = rng.normal(size=(s, t, n, 2)) * 3 * wide
        vel = rng.normal(size=(s, t, n, 2)) * 0.2 * wide + 0.1
        splits[split] = {"loc": loc.astype(np.float32), "vel": vel.astype(np.float32),
                         "edges": (upper + np.swapaxes(upper, 1, 2)).astype(np.int32)}
    return splits


def write(tmp_path, splits, system="springs", format="native", name="data"):
    n = splits["train"]["edges"].shape[-1]
    return formats.write_dataset(tmp_path / name, splits, {"system": system, "n_objects": n},
                                 format=format)


def expected_features(arrays, stats):
    """Independent float64 reference: transpose by loops, then the min-max formula."""
    loc, vel = arrays["loc"].astype(np.float64), arrays["vel"].astype(np.float64)
    s, t, n, _ = loc.shape
    out = np.empty((s, n, t, 4))
    for k in range(s):
        for i in range(n):
            for f in range(t):
                out[k, i, f, :2] = 2 * (loc[k, f, i] - stats[0]) / (stats[1] - stats[0]) - 1
                out[k, i, f, 2:] = 2 * (vel[k, f, i] - stats[2]) / (stats[3] - stats[2]) - 1
    return out


def test_load_normalises_every_split_with_training_extremes(tmp_path):
    splits = random_springs()
    dataset = datasets.load_dataset(write(tmp_path, splits))
    train = splits["train"]
    stats = (train["loc"].astype(np.float64).min(), train["loc"].astype(np.float64).max(),
             train["vel"].astype(np.float64).min(), train["vel"].astype(np.float64).max())
    np.testing.assert_allclose(dataset.stats, stats, rtol=0, atol=0)
    for split in formats.SPLITS:
        got = getattr(dataset, split)
        assert got.features.dtype == np.float32 and got.labels.dtype == np.int32
        np.testing.assert_allclose(got.features, expected_features(splits[split], stats),
                                   rtol=0, atol=2e-6)
        np.testing.assert_array_equal(got.labels, labels_by_loop(splits[split]["edges"]))
    for dims in (slice(0, 2), slice(2, 4)):
        assert dataset.train.features[..., dims].min() == -1
        assert dataset.train.features[..., dims].max() == 1
    assert np.abs(dataset.test.features).max() > 1  # wider test data keeps train stats


def test_given_stats_replace_the_training_split(tmp_path):
    splits = random_springs()
    stats = datasets.NormStats(-10.0, 20.0, -1.0, 3.0)
    dataset = datasets.load_dataset(write(tmp_path, splits), stats=stats)
    assert dataset.stats == stats
    np.testing.assert_allclose(dataset.valid.features, expected_features(splits["valid"], stats),
                               rtol=0, atol=2e-6)
    assert datasets.stats_from_dict(datasets.stats_to_dict(stats)) == stats
    with pytest.raises(ValueError, match="stats"):
        datasets.load_dataset(write(tmp_path, splits, name="b"), stats=(0.0, 0.0, 0.0, 1.0))


def test_denormalise_inverts_normalise():
    stats = datasets.NormStats(-4.0, 6.0, -0.5, 0.75)
    physical = np.random.default_rng(0).normal(size=(3, 4, 5, 4)) * 3
    normalised = datasets.normalise(physical, stats)
    expected = np.concatenate([2 * (physical[..., :2] + 4) / 10 - 1,
                               2 * (physical[..., 2:] + 0.5) / 1.25 - 1], axis=-1)
    np.testing.assert_allclose(normalised, expected, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(datasets.denormalise(normalised, stats), physical, rtol=1e-13)
    jitted = jax.jit(datasets.denormalise, static_argnums=1)(
        jax.jit(datasets.normalise, static_argnums=1)(jnp.asarray(physical, jnp.float32), stats),
        stats)
    np.testing.assert_allclose(jitted, physical, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="features"):
        datasets.normalise(physical[..., :3], stats)


def test_reference_and_native_load_identically(tmp_path):
    splits = random_springs(seed=3)
    native = datasets.load_dataset(write(tmp_path, splits, name="native"))
    reference = datasets.load_dataset(write(tmp_path, splits, format="reference", name="ref"))
    assert reference.system == native.system == "springs"
    assert reference.stats == native.stats
    for split in formats.SPLITS:
        for field in ("features", "labels"):
            np.testing.assert_array_equal(getattr(getattr(reference, split), field),
                                          getattr(getattr(native, split), field))


def test_kuramoto_features_are_used_as_they_are(tmp_path):
    rng = np.random.default_rng(5)
    splits = {split: {"feat": rng.uniform(-1, 1, (s, 3, t, 4)).astype(np.float32),
                      "edges": (rng.integers(0, 2, (s, 3, 3)) * (1 - np.eye(3, dtype=int)))}
              for split, (s, t) in SIZES.items()}
    path = write(tmp_path, splits, system="kuramoto")
    dataset = datasets.load_dataset(path)
    assert dataset.stats is None and datasets.describe(dataset)["stats"] is None
    np.testing.assert_array_equal(dataset.test.features, splits["test"]["feat"])
    np.testing.assert_array_equal(dataset.train.labels, labels_by_loop(splits["train"]["edges"]))
    with pytest.raises(ValueError, match="Kuramoto"):
        datasets.load_dataset(path, stats=datasets.NormStats(0.0, 1.0, 0.0, 1.0))


def test_non_finite_data_is_rejected(tmp_path):
    splits = random_springs()
    splits["valid"]["vel"][1, 2, 0, 1] = np.nan
    with pytest.raises(formats.DatasetError, match="valid"):
        datasets.load_dataset(write(tmp_path, splits))
    splits["train"]["loc"][0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="loc"):
        datasets.load_dataset(write(tmp_path, splits, name="b"))


def test_describe_is_json_friendly(tmp_path):
    dataset = datasets.load_dataset(write(tmp_path, random_springs()))
    summary = datasets.describe(dataset)
    assert summary["n_features"] == 4 and summary["n_objects"] == 4
    assert summary["n_sims"] == {split: size[0] for split, size in SIZES.items()}
    assert summary["n_frames"] == {split: size[1] for split, size in SIZES.items()}
    assert datasets.stats_from_dict(summary["stats"]) == dataset.stats


def random_kuramoto(seed=5, n=3):
    rng = np.random.default_rng(seed)
    return {split: {"feat": rng.uniform(-1, 1, (s, n, t, 4)).astype(np.float32),
                    "edges": (rng.integers(0, 2, (s, n, n)) * (1 - np.eye(n, dtype=int)))}
            for split, (s, t) in SIZES.items()}


ROWS = [slice(0, 2), slice(1, 4), slice(-2, None), slice(3, 3), slice(None, None, 2),
        slice(None), [2, 0, 2], np.array([-1, 1]), [], -1, 0]


@pytest.mark.parametrize("format", formats.FORMATS)
@pytest.mark.parametrize("system", ["springs", "kuramoto"])
def test_lazy_rows_equal_loaded_rows(tmp_path, monkeypatch, system, format):
    monkeypatch.setattr(datasets, "_BLOCK", 2)  # streams the statistics in several blocks
    splits = random_springs() if system == "springs" else random_kuramoto()
    path = write(tmp_path, splits, system=system, format=format)
    lazy, loaded = datasets.open_dataset(path), datasets.load_dataset(path)
    assert lazy.stats == loaded.stats and lazy[3:] == loaded[3:]
    if system == "springs":
        loc, vel = splits["train"]["loc"], splits["train"]["vel"]
        assert lazy.stats == (loc.min(), loc.max(), vel.min(), vel.max())
    for split in formats.SPLITS:
        for field in ("features", "labels"):
            rows = getattr(getattr(lazy, split), field)
            array = getattr(getattr(loaded, split), field)
            assert (rows.shape, rows.dtype, rows.ndim, len(rows)) == \
                (array.shape, array.dtype, array.ndim, len(array))
            for index in ROWS:
                got = rows[index]
                assert type(got) is np.ndarray and got.dtype == array.dtype
                np.testing.assert_array_equal(got, array[index], strict=True)
            np.testing.assert_array_equal(np.asarray(rows), array, strict=True)
    with pytest.raises(IndexError, match="rows"):
        lazy.train.features[np.array([0.5])]


def test_lazy_rows_check_only_what_they_read(tmp_path):
    splits = random_springs()
    splits["valid"]["loc"][1, 2, 0, 1] = np.nan
    dataset = datasets.open_dataset(write(tmp_path, splits))
    assert np.all(np.isfinite(dataset.valid.features[2:]))
    for rows in (slice(0, 3), np.array([3, 1])):
        with pytest.raises(formats.DatasetError, match="valid split .* trajectory 1"):
            dataset.valid.features[rows]


def test_reading_rows_reads_only_those_rows(tmp_path, monkeypatch):
    """Traced allocations: reading 4 rows, or streaming the statistics, allocates a small part
    of what reading the file does."""
    import tracemalloc
    rng = np.random.default_rng(0)
    splits = random_springs()
    big = {"loc": rng.normal(size=(3000, 10, 4, 2)), "vel": rng.normal(size=(3000, 10, 4, 2)),
           "edges": np.zeros((3000, 4, 4), np.int32)}
    splits["train"] = {name: array.astype(splits["train"][name].dtype)
                       for name, array in big.items()}
    path = write(tmp_path, splits, format="reference")
    file_bytes = (path / "loc_train_springs4.npy").stat().st_size

    def peak(read):
        tracemalloc.start()
        try:
            read()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    monkeypatch.setattr(datasets, "_BLOCK", 100)
    assert peak(lambda: datasets.open_dataset(path)) < file_bytes / 4
    dataset = datasets.open_dataset(path, stats=datasets.NormStats(-5.0, 5.0, -1.0, 1.0))
    assert peak(lambda: np.load(path / "loc_train_springs4.npy")) > file_bytes  # sees a read
    assert peak(lambda: dataset.train.features[1500:1504]) < file_bytes / 50
    assert peak(lambda: dataset.train.labels[[7, 2999]]) < file_bytes / 50


@pytest.mark.parametrize("system", ["springs", "kuramoto"])
def test_fresh_training_split_is_new_simulated_data_like_the_stored_one(tmp_path, system):
    """Same shapes and dtypes as the stored training split, the trajectories `generate_split`
    draws with the key, normalised with the stored split's statistics; a key per epoch."""
    path = tmp_path / system
    datasets.build_dataset(path, system=system, n_objects=3, n_train=6, n_valid=2, n_test=2,
                           n_frames_train=7, n_frames_valid=7, n_frames_test=9)
    dataset = datasets.load_dataset(path)
    root = jax.random.key(42)  # the stored dataset's seed: online keys must not repeat its own
    fresh = datasets.fresh_training_split(dataset, datasets.online_key(root, 0))
    assert fresh.features.shape == dataset.train.features.shape
    assert fresh.features.dtype == np.float32 and fresh.labels.dtype == np.int32
    raw = datasets.generate_split(datasets.online_key(root, 0), system, n_sims=6, n_objects=3,
                                  n_frames=7)
    np.testing.assert_array_equal(fresh.labels, labels_by_loop(raw["edges"]))
    if system == "springs":
        np.testing.assert_allclose(fresh.features, expected_features(raw, dataset.stats),
                                   rtol=0, atol=2e-6)
    else:  # Kuramoto features are not rescaled
        np.testing.assert_array_equal(fresh.features, raw["feat"])
    again = datasets.fresh_training_split(dataset, datasets.online_key(root, 0))
    np.testing.assert_array_equal(again.features, fresh.features)
    other = datasets.fresh_training_split(dataset, datasets.online_key(root, 1))
    assert not np.array_equal(other.features, fresh.features)
    for stored in (dataset.train, dataset.valid):  # new trajectories, not the stored ones
        assert not np.any(np.all(fresh.features[:, None, :, :7] == stored.features[None, :, :, :7],
                                 axis=(2, 3, 4)))
