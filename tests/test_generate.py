"""Tests for dataset generation (simulators.datasets) and its command line (simulators.generate).

Every run uses the same tiny settings so that each system compiles only a couple of shapes.
"""

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from simulators import datasets, formats, generate

TINY = dict(n_objects=3, n_train=150, n_valid=100, n_test=100, n_frames_train=3,
            n_frames_valid=3, n_frames_test=4, physics={"sample_every": 5})
CHUNK = 64
REPO = Path(__file__).resolve().parents[1]


def build(path, seed=0, system="springs", **options):
    options = {"chunk_size": CHUNK, **options}
    return datasets.build_dataset(path, system=system, seed=seed, **TINY, **options)


@pytest.fixture(scope="module")
def springs_dir(tmp_path_factory):
    return build(tmp_path_factory.mktemp("springs") / "data")


def file_bytes(path):
    return {entry.name: entry.read_bytes() for entry in sorted(Path(path).iterdir())}


def test_no_trajectory_repeats_within_or_across_splits(springs_dir):
    raw = formats.read_dataset(springs_dir)
    hashes = [hashlib.sha256(loc[0].tobytes()).hexdigest()
              for split in formats.SPLITS for loc in raw.splits[split]["loc"]]
    assert len(hashes) == TINY["n_train"] + TINY["n_valid"] + TINY["n_test"]
    assert len(set(hashes)) == len(hashes)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, springs_dir):
    again = build(tmp_path / "again")
    assert file_bytes(again) == file_bytes(springs_dir)
    other = formats.read_dataset(build(tmp_path / "other", seed=1))
    first = formats.read_dataset(springs_dir)
    for split in formats.SPLITS:
        assert not np.array_equal(other.splits[split]["loc"], first.splits[split]["loc"])


@pytest.mark.parametrize("system", ["springs", "charged", "kuramoto"])
def test_result_does_not_depend_on_chunk_size(system):
    key = datasets.split_key(jax.random.key(3), "valid")
    kwargs = dict(n_sims=TINY["n_valid"], n_objects=TINY["n_objects"], n_frames=3,
                  sample_every=5)
    small = datasets.generate_split(key, system, chunk_size=7, **kwargs)
    large = datasets.generate_split(key, system, chunk_size=CHUNK, **kwargs)
    assert small.keys() == large.keys()
    for name in small:
        assert small[name].shape[0] == TINY["n_valid"]
        np.testing.assert_array_equal(small[name], large[name])


# Runs in a fresh process: the number of host devices is fixed when JAX starts.
SHARDED_SCRIPT = textwrap.dedent("""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from simulators import datasets

    assert len(jax.local_devices()) == 4
    key = datasets.split_key(jax.random.key(7), "valid")
    settings = dict(n_objects=3, n_frames=3, sample_every=5)
    # 37 trajectories in chunks of 8 (1 device) or 8 = 4 x 2 (4 devices): the last chunk is padded.
    one, four = (datasets.generate_split(key, "springs", n_sims=37, chunk_size=8, n_devices=n,
                                         **settings) for n in (1, 4))
    for name in one:
        assert one[name].shape[0] == 37
        np.testing.assert_array_equal(one[name], four[name])
    # Trajectory i is fold_in(key, i) alone (the padded last chunk included), and the compiled
    # simulator (already compiled for chunks of 8) really splits its work over the 4 devices.
    last = jnp.stack([jax.random.fold_in(key, i) for i in range(29, 37)])
    sharded = datasets.simulate_sharded(last, "springs", n_devices=4, **settings)
    for name, array in sharded.items():
        assert len(array.sharding.device_set) == 4, array.sharding
        assert [shard.data.shape[0] for shard in array.addressable_shards] == [2] * 4
        np.testing.assert_array_equal(array, one[name][29:])
    for bad in (0, 5, 2.0):
        try:
            datasets.generate_split(key, "springs", n_sims=4, n_devices=bad, **settings)
        except ValueError as error:
            assert "n_devices" in str(error) and f"{bad!r}" in str(error) and "4" in str(error)
        else:
            raise AssertionError(f"n_devices={bad!r} was accepted")
    print("sharded generation ok")
""")


def test_generation_shards_over_devices_and_gives_the_same_data():
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=REPO,
                            env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharded generation ok" in result.stdout


def test_device_count_is_checked(tmp_path):
    assert datasets.device_count() == len(jax.local_devices())
    with pytest.raises(ValueError, match=f"n_devices .* 1 to {len(jax.local_devices())}"):
        build(tmp_path / "x", n_devices=len(jax.local_devices()) + 1)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="n_devices"):
        datasets.ensure_dataset(tmp_path / "x", system="springs", n_devices=0, **TINY)


@pytest.mark.parametrize("system", ["charged", "kuramoto"])
def test_other_systems_build_and_load(tmp_path, system):
    dataset = datasets.load_dataset(build(tmp_path / system, system=system))
    n, e = TINY["n_objects"], TINY["n_objects"] * (TINY["n_objects"] - 1)
    assert dataset.system == system and dataset.n_objects == n
    assert dataset.test.features.shape == (TINY["n_test"], n, 4, 4)
    assert dataset.train.labels.shape == (TINY["n_train"], e)
    assert set(np.unique(dataset.train.labels)) == {0, 1}
    assert (dataset.stats is None) == (system == "kuramoto")


def test_reference_export_loads_like_native(tmp_path, springs_dir):
    reference = build(tmp_path / "ref", format="reference")
    assert (reference / "loc_train_springs3.npy").exists()
    native, exported = datasets.load_dataset(springs_dir), datasets.load_dataset(reference)
    assert native.stats == exported.stats
    for split in formats.SPLITS:
        np.testing.assert_array_equal(getattr(native, split).features,
                                      getattr(exported, split).features)
        np.testing.assert_array_equal(getattr(native, split).labels,
                                      getattr(exported, split).labels)


def test_metadata_records_every_setting(springs_dir):
    metadata = formats.read_metadata(springs_dir)
    assert metadata["system"] == "springs" and metadata["seed"] == 0
    assert metadata["n_sims"] == {"train": 150, "valid": 100, "test": 100}
    assert metadata["n_frames"] == {"train": 3, "valid": 3, "test": 4}
    assert metadata["physics"]["sample_every"] == 5
    assert {"box_size", "dt", "spring_constants"} <= set(metadata["physics"])
    assert metadata["package"]["name"] == "nri-jax" and metadata["format_version"] == 1


class Interrupt(Exception):
    pass


def interrupt_after_first_chunk(split):
    def report(done, total):
        if split == "valid":
            raise Interrupt(f"{split} stopped at {done}/{total}")
    return report


def test_interrupted_generation_leaves_nothing_and_keeps_existing(tmp_path, springs_dir):
    with pytest.raises(Interrupt):
        build(tmp_path / "new", progress=interrupt_after_first_chunk)
    assert list(tmp_path.iterdir()) == []
    before = file_bytes(springs_dir)
    with pytest.raises(Interrupt):
        build(springs_dir, seed=5, overwrite=True, progress=interrupt_after_first_chunk)
    assert file_bytes(springs_dir) == before
    assert [p.name for p in springs_dir.parent.iterdir()] == [springs_dir.name]


def test_ensure_dataset_reuses_matching_and_refuses_different(tmp_path, springs_dir):
    calls = []

    def progress(split):
        return lambda done, total: calls.append((split, done, total))

    same = dict(system="springs", seed=0, chunk_size=CHUNK, progress=progress, **TINY)
    assert datasets.ensure_dataset(springs_dir, **same) == springs_dir and calls == []
    with pytest.raises(FileExistsError, match="seed"):
        datasets.ensure_dataset(springs_dir, **{**same, "seed": 1})
    path = datasets.ensure_dataset(tmp_path / "fresh", **same)
    assert file_bytes(path) == file_bytes(springs_dir)
    assert calls[-1] == ("test", TINY["n_test"], TINY["n_test"])
    (path / "train_vel.npy").unlink()
    calls.clear()
    datasets.ensure_dataset(path, **same, overwrite=True)  # a broken cache is regenerated
    assert file_bytes(path) == file_bytes(springs_dir) and calls


@pytest.mark.parametrize("bad, message", [
    ({"system": "magnets"}, "magnets"), ({"n_objects": 1}, "n_objects"),
    ({"n_train": 0}, "n_train"), ({"n_frames_test": -2}, "n_frames_test"),
    ({"physics": {"sample_every": 0}}, "sample_every"), ({"physics": {"omega": 1.0}}, "omega")])
def test_bad_settings_are_named(tmp_path, bad, message):
    settings = {"system": "springs", "chunk_size": CHUNK, **TINY, **bad}
    with pytest.raises(ValueError, match=message):
        datasets.build_dataset(tmp_path / "x", **settings)
    assert not (tmp_path / "x").exists()


TINY_ARGS = ["--n-objects", "3", "--n-train", "150", "--n-valid", "100", "--n-test", "100",
             "--n-frames-train", "3", "--n-frames-valid", "3", "--n-frames-test", "4",
             "--sample-every", "5", "--chunk-size", str(CHUNK), "--seed", "0"]


def test_command_line_writes_the_same_dataset(tmp_path, springs_dir, capsys):
    out = tmp_path / "cli"
    assert generate.main(["--system", "springs", "--out", str(out)] + TINY_ARGS) == 0
    assert file_bytes(out) == file_bytes(springs_dir)
    printed = capsys.readouterr()
    assert str(out) in printed.out and "(100, 4, 3, 2)" in printed.out
    assert "train" in printed.err  # the progress bars
    with pytest.raises(SystemExit):
        generate.main(["--system", "springs", "--out", str(out)] + TINY_ARGS)
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--system", "magnets"], "magnets"), (["--n-train", "0"], "--n-train"),
    (["--n-objects", "1"], "--n-objects"), (["--sample-every", "0"], "--sample-every"),
    (["--system", "kuramoto", "--box-size", "3"], "--box-size"),
    (["--format", "csv"], "--format"), (["--dt", "-1"], "dt"),
    (["--n-devices", "0"], "--n-devices"), (["--n-devices", "99"], "n_devices")])
def test_command_line_rejects_bad_arguments(tmp_path, capsys, args, message):
    argv = ["--system", "springs", "--out", str(tmp_path / "x")] + TINY_ARGS + args
    with pytest.raises(SystemExit) as exit_info:
        generate.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_module_runs_as_a_program(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "simulators.generate", "--help"], cwd=REPO,
        capture_output=True, text=True, check=True)
    for option in ("--n-frames-train", "--overwrite", "--format", "--spring-constants",
                   "--box-size", "--dt", "--chunk-size", "--n-devices"):
        assert option in result.stdout


def test_command_line_list_options_give_more_spring_types(tmp_path):
    out = tmp_path / "three"
    argv = ["--system", "springs", "--out", str(out), "--spring-constants", "0", "0.1", "0.3",
            "--edge-probs", "0.4", "0.3", "0.3"] + TINY_ARGS
    assert generate.main(argv) == 0
    dataset = datasets.load_dataset(out)
    assert dataset.metadata["physics"]["spring_constants"] == [0.0, 0.1, 0.3]
    assert dataset.n_edge_types == 3
    assert set(np.unique(dataset.train.labels)) == {0, 1, 2}
    raw = formats.read_dataset(out)
    np.testing.assert_array_equal(dataset.valid.labels,
                                  datasets.edge_labels(raw.splits["valid"]["edges"]))
