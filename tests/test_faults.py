"""Fault injection: SIGKILLed training, damaged checkpoints, damaged dataset files.

The training runs here are `python train.py` subprocesses (SIGKILL needs a
process of its own). They share a persistent JAX compilation cache, so only the
first one compiles and each restart pays start-up (about 3 s) but not
compilation. The dataset is a random walk in the springs layout, written
directly: training on it runs the same code as on simulated data, and no
simulator has to be compiled.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

import evaluate
import train
from nri_jax import checkpointing, experiment
from nri_jax.checkpointing import CheckpointError
from simulators import formats

pytestmark = pytest.mark.e2e

REPO = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 8
FRAMES = {"train": 49, "valid": 49, "test": 99}  # the springs defaults
# Orbax 0.12 writes checkpoint <step> into <step>.orbax-checkpoint-tmp-<timestamp> and renames it.
ORBAX_TMP = ".orbax-checkpoint-tmp"
TIMEOUT = 300.0


def write_random_dataset(path, *, n_objects=5, sizes=(64, 32, 32), seed=0,
                         frames=None) -> pathlib.Path:
    """A native springs-layout dataset of random walks with random symmetric edges;
    `frames` overrides the frames per split ({"test": 60})."""
    rng = np.random.default_rng(seed)
    frames = {**FRAMES, **(frames or {})}
    splits = {}
    for split, n_sims in zip(formats.SPLITS, sizes):
        shape = (n_sims, frames[split], n_objects, 2)
        vel = np.cumsum(rng.normal(0.0, 0.1, shape), axis=1)
        upper = np.triu(rng.integers(0, 2, (n_sims, n_objects, n_objects)), 1)
        splits[split] = {"loc": np.cumsum(0.1 * vel, axis=1).astype(np.float32),
                         "vel": vel.astype(np.float32),
                         "edges": (upper + upper.transpose(0, 2, 1)).astype(np.int32)}
    return formats.write_dataset(path, splits, {"system": "springs", "n_objects": n_objects})


def snapshot(root: pathlib.Path) -> dict:
    """Every entry under `root`: (size, mtime, SHA-256) of files, mtime of directories."""
    out = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        key = str(path.relative_to(root))
        if path.is_dir():
            out[key] = ("dir", stat.st_mtime_ns)
        else:
            out[key] = (stat.st_size, stat.st_mtime_ns,
                        hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def assert_unchanged(before: dict, after: dict, what: str) -> None:
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{what}: created, deleted or modified: {changed}"


class Trainer:
    """One `train.py --preset tiny` subprocess; a thread collects its output lines.

    Resumes when the run directory already has a config.json, else starts fresh.
    """

    def __init__(self, run_dir: pathlib.Path, data_dir: pathlib.Path, cache_dir: pathlib.Path):
        self.resume = (run_dir / "config.json").exists()
        command = [sys.executable, "train.py", "--preset", "tiny", "--epochs", str(EPOCHS),
                   "--data-dir", str(data_dir), "--workdir", str(run_dir)]
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
        self.proc = subprocess.Popen(command + ["--resume"] * self.resume, cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def epochs_logged(self) -> int:
        return sum(line.startswith("epoch ") for line in list(self.lines))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until(self, condition) -> object:
        """Polls `condition()` until it is truthy (returned) or the process exits (None)."""
        deadline = time.monotonic() + TIMEOUT
        while self.proc.poll() is None and time.monotonic() < deadline:
            found = condition()
            if found:
                return found
            time.sleep(0.002)
        return None

    def kill(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.finish()

    def finish(self) -> int:
        try:
            returncode = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.reader.join(timeout=10)
        return returncode


def new_orbax_tmp_dirs(checkpoints: pathlib.Path, seen: set) -> set:
    found = set()
    for kind in ("latest", "best"):
        try:
            found |= {checkpoints / kind / n for n in os.listdir(checkpoints / kind)
                      if ORBAX_TMP in n}
        except FileNotFoundError:
            continue
    return found - seen


@dataclasses.dataclass
class Reference:
    root: pathlib.Path
    data: pathlib.Path
    cache: pathlib.Path
    run: pathlib.Path
    seconds: float = 0.0
    checkpoints: dict | None = None

    def trainer(self, run_dir: pathlib.Path) -> Trainer:
        return Trainer(run_dir, self.data, self.cache)

    def restored(self) -> dict:
        if self.checkpoints is None:
            self.checkpoints = restore_checkpoints(self.run)
        return self.checkpoints


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The dataset, the shared compilation cache and one uninterrupted run (compiles)."""
    root = tmp_path_factory.mktemp("faults")
    ref = Reference(root, write_random_dataset(root / "data"), root / "jax-cache",
                    root / "reference")
    start = time.perf_counter()
    trainer = ref.trainer(ref.run)
    assert trainer.finish() == 0, trainer.output
    ref.seconds = time.perf_counter() - start
    return ref


def restore_checkpoints(run_dir) -> dict:
    """checkpoint -> (host state, epoch) for "latest" and "best", through `load_run`."""
    # One Run for both: building it compiles the model's initialisation.
    run = experiment.load_run(run_dir, checkpoint="latest")
    out = {"latest": (jax.device_get(run.state), run.epoch)}
    run.restore("best")
    out["best"] = (jax.device_get(run.state), run.epoch)
    return out


def assert_same_run(run_dir: pathlib.Path, ref: Reference) -> None:
    """Same report, same latest and best train states (parameters, BatchNorm statistics,
    optimiser state: bitwise), same per-epoch metrics."""
    report = json.loads((run_dir / "report.json").read_text())
    assert report == json.loads((ref.run / "report.json").read_text())
    got, want = restore_checkpoints(run_dir), ref.restored()
    for checkpoint in ("latest", "best"):
        (got_state, got_epoch), (want_state, want_epoch) = got[checkpoint], want[checkpoint]
        assert got_epoch == want_epoch, checkpoint
        jax.tree.map(np.testing.assert_array_equal, got_state, want_state)
    timing = ("seconds", "samples_per_s")

    def records(path):
        lines = (path / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]

    got, want = records(run_dir), records(ref.run)
    assert [r["epoch"] for r in got] == list(range(EPOCHS)), "metrics.jsonl epochs"
    assert got == want


# ---------------------------------------------------------------------------------------------
# SIGKILL


def test_sigkilled_training_resumes_bit_identical(reference):
    """Kills at random moments and mid-checkpoint; the resumed run ends bit-identical."""
    rng = np.random.default_rng(20261121)
    run_dir = reference.root / "killed"
    checkpoints = run_dir / "checkpoints"
    timings, kills = {"reference": reference.seconds}, []
    start = time.perf_counter()

    # During start-up: imports, data loading, compilation (loaded from the cache).
    trainer = reference.trainer(run_dir)
    time.sleep(rng.uniform(0.5, 3.0))
    kills.append(("start-up", trainer.kill()))

    # While orbax writes a checkpoint: kill as soon as a new temporary directory appears.
    trainer = reference.trainer(run_dir)
    seen = new_orbax_tmp_dirs(checkpoints, set())
    tmp = trainer.wait_until(lambda: new_orbax_tmp_dirs(checkpoints, seen))
    kills.append((f"writing {sorted(p.name for p in tmp or ())}", trainer.kill()))
    assert tmp, f"no checkpoint was written:\n{trainer.output}"
    assert any(path.exists() for path in tmp), "the kill came after orbax finished the write"

    # At random moments after an epoch ends: saving best, saving latest, or the next epoch.
    for i in range(2):
        trainer = reference.trainer(run_dir)
        assert trainer.wait_until(lambda: trainer.epochs_logged), trainer.output
        time.sleep(rng.uniform(0.0, 1.0))
        kills.append((f"after an epoch #{i}", trainer.kill()))

    assert [rc for _, rc in kills] == [-signal.SIGKILL] * len(kills), kills
    assert not (run_dir / "report.json").exists()
    trainer = reference.trainer(run_dir)
    assert trainer.finish() == 0, trainer.output
    timings["kills and resumes"] = time.perf_counter() - start
    print(f"timings (s): { {k: round(v, 1) for k, v in timings.items()} }")
    assert_same_run(run_dir, reference)


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints


def truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: pathlib.Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(max(path.stat().st_size, 64)))


def flip_bytes_throughout(path: pathlib.Path) -> None:
    """Flips 16 evenly spaced bytes: a single flipped byte can land in a region orbax
    never reads back (seen with 2 devices), which leaves the checkpoint intact."""
    data = bytearray(path.read_bytes())
    for i in range(16):
        data[(2 * i + 1) * len(data) // 32] ^= 0xFF
    path.write_bytes(bytes(data))


def other_digest(path: pathlib.Path) -> None:
    """Records the digest of some other state: the digest check alone must catch it."""
    meta = json.loads(path.read_text())
    meta[checkpointing.DIGEST_KEY] = hashlib.sha256(b"another state").hexdigest()
    path.write_text(json.dumps(meta))


# Orbax can read flipped bytes in the array data (ocdbt.process_0/d) back without any error:
# the digest recorded in the checkpoint catches them.
CHECKPOINT_DAMAGE = {
    "truncated manifest": ("state/manifest.ocdbt", truncate),
    "garbage array metadata": ("state/_METADATA", garbage),
    "garbage run metadata": ("meta/metadata", garbage),
    "flipped bytes throughout every data file": ("state/ocdbt.process_0/d/*",
                                                 flip_bytes_throughout),
    "digest of another state": ("meta/metadata", other_digest),
}


def damage_step(step_dir: pathlib.Path, damage: str) -> None:
    pattern, apply = CHECKPOINT_DAMAGE[damage]
    files = sorted(p for p in step_dir.glob(pattern) if p.is_file())
    assert files, f"no {pattern} in {step_dir}"
    for file in files:
        apply(file)


@pytest.fixture
def run_copy(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference.run, run_dir)
    return run_dir


def latest_manager(run_dir):
    return checkpointing.manager(run_dir / "checkpoints" / "latest", max_to_keep=2)


@pytest.mark.parametrize("damage", sorted(CHECKPOINT_DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_previous(reference, run_copy, damage, caplog):
    like, _ = reference.restored()["latest"]
    newest = run_copy / "checkpoints" / "latest" / str(EPOCHS)
    damage_step(newest, damage)
    before = snapshot(run_copy)
    _, meta, step = checkpointing.restore(latest_manager(run_copy), like)
    assert step == meta["epoch"] == EPOCHS - 1
    assert str(newest) in caplog.text
    assert_unchanged(before, snapshot(run_copy), "restore")


def test_resume_past_a_damaged_checkpoint_matches_uninterrupted(reference, run_copy):
    newest = run_copy / "checkpoints" / "latest" / str(EPOCHS)
    damage_step(newest, "truncated manifest")
    trainer = reference.trainer(run_copy)
    assert trainer.resume
    assert trainer.finish() == 0, trainer.output
    assert str(newest) in trainer.output
    assert f"after epoch {EPOCHS - 1}" in trainer.output
    report = json.loads((run_copy / "report.json").read_text())
    assert report == json.loads((reference.run / "report.json").read_text())
    # Each checkpoint's metadata holds the epoch and the SHA-256 of the whole train state.
    meta = newest_meta(run_copy)
    assert all(checkpointing.DIGEST_KEY in m for m in meta.values())
    assert meta == newest_meta(reference.run)


def newest_meta(run_dir) -> dict:
    out = {}
    for kind in ("latest", "best"):
        steps = [p for p in (run_dir / "checkpoints" / kind).iterdir() if p.name.isdigit()]
        newest = max(steps, key=lambda p: int(p.name))
        out[kind] = json.loads((newest / "meta" / "metadata").read_text())
    return out


def test_refuses_to_resume_when_every_checkpoint_is_damaged(reference, run_copy, capsys):
    like, _ = reference.restored()["latest"]
    steps = sorted((run_copy / "checkpoints" / "latest").iterdir())
    for step in steps:
        damage_step(step, "truncated manifest")
    before = snapshot(run_copy)
    with pytest.raises(CheckpointError) as error:
        checkpointing.restore(latest_manager(run_copy), like)
    assert all(str(step) in str(error.value) for step in steps)
    assert_unchanged(before, snapshot(run_copy), "restore")

    argv = ["--preset", "tiny", "--epochs", str(EPOCHS), "--data-dir", str(reference.data),
            "--workdir", str(run_copy), "--resume"]
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert "no readable checkpoint" in err and all(str(step) in err for step in steps)
    assert_unchanged(before, snapshot(run_copy), "train.py --resume")


# ---------------------------------------------------------------------------------------------
# Damaged dataset files


DATASET_DAMAGE = {
    "truncated train_loc.npy": ("train_loc.npy", truncate),
    "garbage valid_vel.npy": ("valid_vel.npy", garbage),
    "empty test_edges.npy": ("test_edges.npy", lambda p: p.write_bytes(b"")),
    "garbage metadata.json": ("metadata.json", garbage),
    "truncated metadata.json": ("metadata.json", truncate),
}


@pytest.mark.parametrize("damage", sorted(DATASET_DAMAGE))
def test_damaged_dataset_file_is_named_before_any_work(reference, tmp_path, damage, capsys):
    name, apply = DATASET_DAMAGE[damage]
    data = tmp_path / "data"
    shutil.copytree(reference.data, data)
    apply(data / name)
    before, run_before = snapshot(data), snapshot(reference.run)

    argv = ["--preset", "tiny", "--data-dir", str(data), "--workdir", str(tmp_path / "run")]
    assert train.main(argv) == 1
    assert str(data / name) in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

    out = tmp_path / "report.json"
    assert evaluate.main([str(reference.run), "--data", str(data), "--out", str(out)]) == 1
    assert str(data / name) in capsys.readouterr().err
    assert not out.exists()
    assert_unchanged(before, snapshot(data), "dataset")
    assert_unchanged(run_before, snapshot(reference.run), "run directory")


def _set_entry(path: pathlib.Path, value) -> None:
    """Rewrites a .npy file with one entry of trajectory 1 changed (a valid file).

    The entry is [1, 0, ..., 0, 1]: off the diagonal of an edge matrix, which
    no label reads."""
    array = np.load(path)
    array[(1,) + (0,) * (array.ndim - 2) + (1,)] = value
    np.save(path, array)


CONTENT_DAMAGE = {  # valid files holding values no simulator writes
    "NaN velocity in the validation split": ("valid_vel.npy", np.nan, "valid split"),
    "edge type 7 in the test split": ("test_edges.npy", 7, "test split edges"),
}


@pytest.mark.parametrize("damage", sorted(CONTENT_DAMAGE))
def test_damaged_dataset_values_stop_training_before_any_file(reference, tmp_path, damage,
                                                              capsys):
    name, value, where = CONTENT_DAMAGE[damage]
    data = tmp_path / "data"
    shutil.copytree(reference.data, data)
    _set_entry(data / name, value)
    before = snapshot(data)
    argv = ["--preset", "tiny", "--data-dir", str(data), "--workdir", str(tmp_path / "run")]
    assert train.main(argv) == 1
    assert f"{data}: {where}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # no run files: a fixed dataset can start afresh
    assert_unchanged(before, snapshot(data), "dataset")
