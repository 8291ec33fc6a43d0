"""Tests for simulators.formats: native and reference layouts, atomic writes, broken inputs."""

import json

import numpy as np
import pytest

from simulators import formats

SPLIT_SIZES = {"train": (4, 6), "valid": (3, 6), "test": (2, 11)}  # (S, T)
N = 3


def indexed_loc(n_sims, n_frames, n_objects, offset=0.0):
    """loc[s, t, n, d] = 1000 s + 100 t + 10 n + d + offset: every entry names its index."""
    s, t, n, d = np.meshgrid(np.arange(n_sims), np.arange(n_frames), np.arange(n_objects),
                             np.arange(2), indexing="ij")
    return (1000 * s + 100 * t + 10 * n + d + offset).astype(np.float32)


def springs_split(rng, n_sims, n_frames, n_objects=N):
    upper = np.triu(rng.integers(0, 2, (n_sims, n_objects, n_objects)), 1)
    return {"loc": indexed_loc(n_sims, n_frames, n_objects),
            "vel": indexed_loc(n_sims, n_frames, n_objects, offset=0.5),
            "edges": (upper + np.swapaxes(upper, 1, 2)).astype(np.int32)}


def kuramoto_split(rng, n_sims, n_frames, n_objects=N):
    edges = rng.integers(0, 2, (n_sims, n_objects, n_objects)) * (1 - np.eye(n_objects, dtype=int))
    return {"feat": rng.uniform(-1, 1, (n_sims, n_objects, n_frames, 4)).astype(np.float32),
            "edges": edges.astype(np.int32)}


@pytest.fixture(params=["springs", "kuramoto"])
def raw(request):
    rng = np.random.default_rng(0)
    make = springs_split if request.param == "springs" else kuramoto_split
    return request.param, {split: make(rng, *size) for split, size in SPLIT_SIZES.items()}


def metadata(system):
    return {"system": system, "n_objects": N, "seed": 0}


@pytest.mark.parametrize("format", formats.FORMATS)
def test_round_trip_keeps_arrays(tmp_path, raw, format):
    system, splits = raw
    path = formats.write_dataset(tmp_path / "data", splits, metadata(system), format=format)
    loaded = formats.read_dataset(path)
    assert (loaded.system, loaded.n_objects, loaded.format) == (system, N, format)
    for split, arrays in splits.items():
        assert loaded.splits[split].keys() == arrays.keys()
        for name, array in arrays.items():
            np.testing.assert_array_equal(loaded.splits[split][name], array)
            if format == "native":
                assert loaded.splits[split][name].dtype == array.dtype
    recorded = json.loads((path / formats.METADATA_FILE).read_text())
    assert recorded["format"] == format and recorded["seed"] == 0
    assert recorded["splits"]["test"]["n_sims"] == SPLIT_SIZES["test"][0]
    assert recorded["splits"]["test"]["n_frames"] == SPLIT_SIZES["test"][1]


def test_reference_files_are_float64_coordinate_before_objects(tmp_path):
    splits = {s: springs_split(np.random.default_rng(1), *size) for s, size in SPLIT_SIZES.items()}
    path = formats.write_dataset(tmp_path / "ref", splits, metadata("springs"), format="reference")
    stored = np.load(path / "loc_test_springs3.npy")
    assert stored.dtype == np.float64
    n_sims, n_frames = SPLIT_SIZES["test"]
    assert stored.shape == (n_sims, n_frames, 2, N)
    for s in range(n_sims):
        for t in range(n_frames):
            for d in range(2):
                for n in range(N):
                    assert stored[s, t, d, n] == 1000 * s + 100 * t + 10 * n + d
    assert np.load(path / "vel_train_springs3.npy")[1, 2, 1, 0] == 1000 + 200 + 1 + 0.5
    edges = np.load(path / "edges_valid_springs3.npy")
    np.testing.assert_array_equal(edges, splits["valid"]["edges"])


def write_reference_by_hand(path, splits, suffix):
    """The original code's files, written independently of formats.write_split."""
    path.mkdir()
    for split, arrays in splits.items():
        for name in ("loc", "vel"):
            np.save(path / f"{name}_{split}{suffix}.npy",
                    np.transpose(arrays[name], (0, 1, 3, 2)).astype(np.float64))
        np.save(path / f"edges_{split}{suffix}.npy", arrays["edges"].astype(np.float64))


def test_reads_original_code_files_and_infers_system(tmp_path):
    splits = {s: springs_split(np.random.default_rng(2), *size) for s, size in SPLIT_SIZES.items()}
    write_reference_by_hand(tmp_path / "ref", splits, "_charged3")
    loaded = formats.read_dataset(tmp_path / "ref")
    assert (loaded.format, loaded.system, loaded.n_objects, loaded.metadata) == \
        ("reference", "charged", N, {})
    np.testing.assert_array_equal(loaded.splits["train"]["loc"], splits["train"]["loc"])


def test_reference_suffix_rules(tmp_path):
    splits = {s: springs_split(np.random.default_rng(3), *size) for s, size in SPLIT_SIZES.items()}
    write_reference_by_hand(tmp_path / "plain", splits, "_mine")
    with pytest.raises(formats.DatasetError, match="system="):
        formats.read_dataset(tmp_path / "plain")
    assert formats.read_dataset(tmp_path / "plain", system="springs").system == "springs"
    write_reference_by_hand(tmp_path / "wrong_n", splits, "_springs5")
    with pytest.raises(formats.DatasetError, match="5 objects"):
        formats.read_dataset(tmp_path / "wrong_n")
    write_reference_by_hand(tmp_path / "two", splits, "_springs3")
    for split, arrays in splits.items():
        np.save(tmp_path / "two" / f"loc_{split}_charged3.npy", arrays["loc"])
    with pytest.raises(formats.DatasetError, match="suffix="):
        formats.read_dataset(tmp_path / "two")
    assert formats.read_dataset(tmp_path / "two", suffix="_springs3").system == "springs"


def native(tmp_path, raw, name="data"):
    system, splits = raw
    return formats.write_dataset(tmp_path / name, splits, metadata(system))


def test_missing_truncated_or_reshaped_file_is_named(tmp_path, raw):
    path = native(tmp_path, raw)
    victim = path / "valid_edges.npy"
    content = victim.read_bytes()
    victim.write_bytes(content[:-7])
    with pytest.raises(formats.DatasetError, match="valid_edges.npy"):
        formats.read_dataset(path)
    with pytest.raises(formats.DatasetError, match="valid_edges.npy"):
        formats.check_native_files(path, formats.read_metadata(path))
    np.save(victim, np.zeros((1, N, N), np.int32))
    with pytest.raises(formats.DatasetError, match="valid_edges.npy.*shape"):
        formats.read_dataset(path)
    victim.unlink()
    with pytest.raises(formats.DatasetError, match="missing file .*valid_edges.npy"):
        formats.read_dataset(path)


def test_directory_without_metadata_or_of_neither_format(tmp_path, raw):
    path = native(tmp_path, raw)
    (path / formats.METADATA_FILE).unlink()
    with pytest.raises(formats.DatasetError, match="incomplete"):
        formats.read_dataset(path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(formats.DatasetError, match="neither"):
        formats.read_dataset(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="absent"):
        formats.read_dataset(tmp_path / "absent")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / formats.METADATA_FILE).write_text('{"format": "native"')
    with pytest.raises(formats.DatasetError, match="metadata.json"):
        formats.read_dataset(tmp_path / "half")


def test_inconsistent_arrays_are_rejected(tmp_path):
    rng = np.random.default_rng(4)
    good = {s: springs_split(rng, *size) for s, size in SPLIT_SIZES.items()}
    bad_cases = {
        "vel": {**good, "train": {**good["train"], "vel": good["train"]["vel"][:, :-1]}},
        "edges": {**good, "valid": {**good["valid"], "edges": good["valid"]["edges"][:-1]}},
        "objects": {**good, "test": springs_split(rng, 2, 11, n_objects=N + 1)},
        "rank": {**good, "train": {**good["train"], "loc": good["train"]["loc"][0]}},
        "dtype": {**good, "train": {**good["train"], "loc": good["train"]["loc"].astype(int)}},
    }
    for case, splits in bad_cases.items():
        with pytest.raises(formats.DatasetError):
            formats.write_dataset(tmp_path / case, splits, metadata("springs"))
        assert not (tmp_path / case).exists(), case


def leftovers(parent):
    return sorted(entry.name for entry in parent.iterdir() if entry.name.startswith("."))


def test_failed_write_leaves_nothing_and_keeps_existing(tmp_path, raw):
    path = native(tmp_path, raw)
    before = {entry.name: entry.read_bytes() for entry in path.iterdir()}
    with pytest.raises(RuntimeError, match="interrupted"):
        with formats.atomic_directory(tmp_path / "new") as directory:
            (directory / "train_loc.npy").write_bytes(b"partial")
            raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError, match="interrupted"):
        with formats.atomic_directory(path, overwrite=True) as directory:
            raise RuntimeError("interrupted")
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []
    assert {entry.name: entry.read_bytes() for entry in path.iterdir()} == before


def test_existing_directory_needs_overwrite(tmp_path, raw):
    path = native(tmp_path, raw)
    system, splits = raw
    with pytest.raises(FileExistsError, match="overwrite"):
        formats.write_dataset(path, splits, {**metadata(system), "seed": 1})
    assert formats.read_metadata(path)["seed"] == 0
    formats.write_dataset(path, splits, {**metadata(system), "seed": 1}, overwrite=True)
    assert formats.read_metadata(path)["seed"] == 1 and leftovers(tmp_path) == []
    (path / "precious.txt").write_text("not a dataset file")
    with pytest.raises(FileExistsError, match="precious.txt"):
        formats.write_dataset(path, splits, metadata(system), overwrite=True)
    assert (path / "precious.txt").exists()
