"""The experiment shell: data, the epoch loop, logs, checkpoints, resume, reports.

This is the one module of the library that touches files, clocks and progress
bars; everything it drives is pure. A run directory holds:

    config.json          the resolved Config
    data.json            dataset path, system, sizes and normalisation statistics
    metrics.jsonl        one JSON record per epoch (train and validation)
    checkpoints/latest/  the last two epochs (for --resume)
    checkpoints/best/    the epoch with the best validation NLL
    report.json, report.md   the test report of the best checkpoint

An exported run (`export_run`, e.g. the shipped `pretrained/` models) holds the
same files but, instead of `checkpoints/`, the best parameters alone in
`params.msgpack` with their digest in `export.json`; its data.json names no
path, and `load_run` regenerates the dataset from the config's seed.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from tqdm import tqdm

from nri_jax import checkpointing, configs, processes, reports, simulation, training
from nri_jax import data as data_lib
from nri_jax.configs import Config, DataConfig
from nri_jax.model import NRI, decoder_protocol
from nri_jax.reports import METRICS_FILE, REPORT_JSON, REPORT_MD  # noqa: F401 (run files)
from simulators import datasets, formats, symmetries, systems

CONFIG_FILE, DATA_FILE = "config.json", "data.json"
PARAMS_FILE, EXPORT_FILE = "params.msgpack", "export.json"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class RunDirError(ValueError):
    """A run directory is missing, incomplete, or would be overwritten."""


def default_data_dir(cfg: DataConfig) -> pathlib.Path:
    return pathlib.Path("data") / (f"{cfg.system}{cfg.n_objects}_{cfg.n_train}-{cfg.n_valid}"
                                   f"-{cfg.n_test}_seed{cfg.data_seed}")


def _progress_bar(desc: str) -> Callable[[int, int], None]:
    """A callback(done, total) drawing a progress bar on stderr (only on a terminal)."""
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="traj", disable=not sys.stderr.isatty())
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def load_data(cfg: DataConfig) -> tuple[Any, pathlib.Path]:
    """Opens the dataset `cfg` names, generating and caching it when missing.

    An existing `cfg.data_dir` is used as it is (native or reference layout,
    whatever its sizes); a missing one, or the default cache path
    `data/<settings>` when `data_dir` is None, is generated from `cfg` first
    (and reused by later runs with the same settings). In a multi-process run
    process 0 generates, into a directory every process must see.

    Returns:
      (dataset, path): the dataset opened lazily (`datasets.open_dataset`: rows
      are read when sliced), normalised with its training split's statistics.
    """
    path = pathlib.Path(cfg.data_dir) if cfg.data_dir else default_data_dir(cfg)
    error = None
    if processes.is_main_process() and (cfg.data_dir is None or not path.exists()):
        try:
            datasets.ensure_dataset(path, system=cfg.system, n_objects=cfg.n_objects,
                                    n_train=cfg.n_train, n_valid=cfg.n_valid,
                                    n_test=cfg.n_test, seed=cfg.data_seed,
                                    progress=_progress_bar)
        except (ValueError, OSError) as err:  # raised below, on every process
            error = err
    processes.sync("nri_jax:data")  # the others wait, then read what process 0 wrote
    if error is None and not path.exists():
        error = FileNotFoundError(f"dataset {path} not found on process "
                                  f"{jax.process_index()}: a multi-process run needs a "
                                  "--data-dir that every process sees")
    processes.raise_on_every_process(error, "preparing the dataset")
    dataset = processes.open_shared(path)
    if dataset.n_objects != cfg.n_objects:
        raise ValueError(f"dataset {path} has {dataset.n_objects} objects but the config "
                         f"asks for n_objects={cfg.n_objects}")
    return dataset, path


def _check_settings(config: Config, mesh, n_train: int | None, n_frames: int | None,
                    n_test_frames: int | None = None) -> None:
    """Batch sizes must divide over the mesh and fit the `n_train` training
    examples; decoder settings must fit their `n_frames` training frames (these
    checks are skipped when there is no training split: None); test
    trajectories of `n_test_frames` frames must fit the decoder's test protocol
    with the encoder seeing `n_frames` (skipped when either is None)."""
    cfg = config.train
    data_lib.check_batch_size(cfg.eval_batch_size, None, mesh, "eval_batch_size")
    if n_test_frames is not None and n_frames is not None:
        decoder_protocol(config.model).check_test_frames(n_test_frames, n_frames)
    if n_train is None:
        return
    data_lib.check_batch_size(cfg.batch_size, n_train, mesh, "batch_size")
    for name in ("prediction_steps", "burn_in_steps"):
        value = getattr(cfg, name)
        if value is not None and value >= n_frames:
            raise ValueError(f"{name}={value} must be smaller than the {n_frames} frames of "
                             "the training trajectories")


def _place_splits(dataset, names, mesh) -> dict[str, data_lib.Split]:
    """Puts the named splits on the mesh, reading and checking every row this
    process holds; a bad row stops every process."""
    try:
        placed = {name: data_lib.put_split(getattr(dataset, name).features,
                                           getattr(dataset, name).labels, mesh)
                  for name in names}
        error = None
    except ValueError as err:
        placed, error = None, err
    processes.raise_on_every_process(error, "reading the data")
    return placed


class Run:
    """The objects one run shares between its phases: mesh, data, model, state.

    Every process of a multi-process run builds the same `Run`; each places
    only the rows of the splits that its own devices hold.
    """

    def __init__(self, config: Config, dataset, workdir: pathlib.Path, n_encoder_frames: int,
                 splits=("train", "valid", "test"), *, for_restore: bool = False):
        """Places the data and builds the state; with `for_restore` the state is
        only its shapes and shardings (filled by `restore`) and no checkpoint
        directory is created."""
        self.config, self.workdir, self.dataset = config, workdir, dataset
        self.n_encoder_frames = n_encoder_frames
        self.mesh = data_lib.make_mesh(config.train.n_devices)
        self.sizes = {name: len(getattr(dataset, name).features) for name in splits}
        tc = config.train
        n_test_frames = dataset.test.features.shape[2] if "test" in splits else None
        if "train" in splits:
            _check_settings(config, self.mesh, self.sizes["train"],
                            dataset.train.features.shape[2], n_test_frames)
            self.steps_per_epoch = self.sizes["train"] // tc.batch_size
        else:
            _check_settings(config, self.mesh, None, n_encoder_frames, n_test_frames)
            self.steps_per_epoch = 1
        self.splits = _place_splits(dataset, splits, self.mesh)
        self.model = NRI(config.model, physics=simulation.Physics.of_dataset(dataset))
        self.tx = training.make_optimizer(tc, self.steps_per_epoch)
        self.key = jax.random.key(tc.seed)
        example = np.asarray(getattr(dataset, splits[0]).features[:1])[:, :, :n_encoder_frames]
        self.state = self._initial_state(example, abstract=for_restore)
        ckpt_dir = workdir / "checkpoints"
        self.latest = checkpointing.manager(ckpt_dir / "latest", max_to_keep=2,
                                            create=not for_restore)
        self.best = checkpointing.manager(ckpt_dir / "best", max_to_keep=1,
                                          create=not for_restore)
        self.epoch = 0

    def _initial_state(self, example: np.ndarray, *, abstract: bool):
        """The initial train state, replicated over the mesh (only shapes if `abstract`)."""
        init = functools.partial(training.init_state, jax.random.fold_in(self.key, 0),
                                 self.model, self.tx, example)
        replicated = data_lib.replicated(self.mesh)
        if abstract:
            return jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                jax.eval_shape(init))
        # Every process computes the same initial state; this makes it one global array.
        return jax.jit(lambda s: s, out_shardings=replicated)(init())

    def restore(self, which: str) -> dict:
        """Loads the "best" or "latest" checkpoint into `state`; returns its metadata."""
        restored = checkpointing.restore(getattr(self, which), self.state)
        if restored is None:
            raise checkpointing.CheckpointError(
                f"no {which} checkpoint in {self.workdir / 'checkpoints' / which}")
        self.state, meta, _ = restored  # restored with the shardings of the current state
        self.epoch = meta["epoch"]
        return meta

    def evaluate(self, step_fn, split_name: str, key) -> dict:
        indices, weights = data_lib.ordered_batches(self.sizes[split_name],
                                                    self.config.train.eval_batch_size)
        total = None
        for i in range(len(indices)):
            total = training.accumulate(total, step_fn(self.state, self.splits[split_name],
                                                       indices[i], weights[i],
                                                       jax.random.fold_in(key, i)))
        return training.summarise(total)


def _append_metrics(workdir: pathlib.Path, record: dict) -> None:
    if processes.is_main_process():
        with open(workdir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")


def _check_workdir(config: Config, workdir: pathlib.Path, resume: bool) -> None:
    """Fails before any long work when the run directory cannot be used as asked."""
    config_path = workdir / CONFIG_FILE
    if resume:
        if not config_path.exists():
            raise RunDirError(f"--resume: {config_path} not found; nothing to resume")
        try:
            saved = json.loads(config_path.read_text())
        except (OSError, ValueError) as err:
            raise RunDirError(f"--resume: cannot read {config_path} ({err})") from err
        if saved != json.loads(json.dumps(config.to_dict())):
            raise RunDirError(f"--resume: the config differs from the one in {config_path}; "
                              "resume with the same settings or start a new --workdir")
    # A *.tmp file is what a run killed while writing its first file leaves behind.
    elif workdir.exists() and any(not p.name.endswith(".tmp") for p in workdir.iterdir()):
        raise RunDirError(f"run directory {workdir} is not empty; pass --resume to continue "
                          "it or choose another --workdir")


def _preflight(config: Config) -> None:
    """Checks before data generation: devices, batch sizes, decoder steps vs frames,
    the run to initialise from."""
    if config.train.init_from:
        read_run(config.train.init_from)  # names a missing or broken run directory
    path = config.data.data_dir and pathlib.Path(config.data.data_dir)
    if path and path.exists():  # used as it is: the file headers give its sizes
        stored = formats.read_dataset(path, mmap=True).splits
        n_train, _, n_frames = formats.check_split(stored["train"], split="train")
        n_test_frames = formats.check_split(stored["test"], split="test")[2]
    else:
        n_train = config.data.n_train
        n_frames = systems.default_n_frames(config.data.system, "train")
        n_test_frames = systems.default_n_frames(config.data.system, "test")
    _check_settings(config, data_lib.make_mesh(config.train.n_devices), n_train, n_frames,
                    n_test_frames)


def _resume(run: Run) -> tuple[int, float]:
    """Restores the latest checkpoint; returns (first epoch to run, best validation NLL;
    for the supervised encoder its cross-entropy, `training.selection_metric`)."""
    if run.latest.all_steps():
        meta = run.restore("latest")
    else:  # killed before the first checkpoint: start again
        meta = {"epoch": 0, "best_valid_nll": float("inf")}
    records = reports.read_metrics(run.workdir, meta["epoch"])  # drops later epochs
    processes.write_text(run.workdir / METRICS_FILE,
                         "".join(json.dumps(r) + "\n" for r in records))
    return meta["epoch"], meta["best_valid_nll"]


def _epoch_split(run: Run, epoch: int) -> data_lib.Split:
    """The training split of one epoch, fresh and/or transformed, placed on the mesh."""
    split = run.dataset.train
    if run.config.train.online_data:
        key = datasets.online_key(jax.random.key(run.config.data.data_seed), epoch)
        split = datasets.fresh_training_split(run.dataset, key)
    if run.config.train.augment:
        key = jax.random.fold_in(jax.random.fold_in(run.key, 4), epoch)
        split = symmetries.augment_split(split, key, system=run.dataset.system,
                                         stats=run.dataset.stats)
    return data_lib.put_split(split.features, split.labels, run.mesh)


def _train_epoch(run: Run, train_step, epoch: int, compile_first: bool = False) -> dict:
    """One pass over the shuffled training split; one host synchronisation at the end.

    With `online_data` the split is first replaced by the epoch's fresh trajectories;
    with `augment` by a randomly transformed copy of them (or of the stored split).
    With `compile_first` the step is compiled before the first one runs
    (`training.compile_ahead`: a lower peak memory).
    """
    tc = run.config.train
    if tc.online_data or tc.augment:
        run.splits["train"] = _epoch_split(run, epoch)
    epoch_key = jax.random.fold_in(jax.random.fold_in(run.key, 1), epoch)
    shuffle_key, step_key = jax.random.split(epoch_key)
    batches = data_lib.shuffled_batches(shuffle_key, run.sizes["train"],
                                        run.config.train.batch_size)
    total = None
    bar = tqdm(range(run.steps_per_epoch), desc=f"epoch {epoch + 1}", leave=False,
               disable=not (sys.stderr.isatty() and processes.is_main_process()))
    if compile_first:
        training.compile_ahead(train_step, run.state, run.splits["train"], batches[0],
                               jax.random.fold_in(step_key, 0))
    for i in bar:
        run.state, sums = train_step(run.state, run.splits["train"], batches[i],
                                     jax.random.fold_in(step_key, i))
        total = training.accumulate(total, sums)
    if int(total["nonfinite_steps"]):
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch + 1}, step {int(total['first_nonfinite_step'])}; "
            f"training stopped. The last good checkpoint is in {run.workdir / 'checkpoints'}")
    return training.summarise(total)


def train_and_evaluate(config: Config, workdir: str | os.PathLike, *, resume: bool = False,
                       log: Callable[[str], None] = print) -> dict:
    """Trains NRI as `config` says, keeps the best checkpoint and reports on the test split.

    In a multi-process run (`jax.distributed.initialize` called first) every
    process calls this with the same arguments; process 0 generates missing
    data, writes the run files and logs, orbax writes each checkpoint once.

    Args:
      config: the full experiment config.
      workdir: the run directory (created; must be empty unless `resume`).
      resume: continue from the latest checkpoint in `workdir`.
      log: where the per-epoch lines go (process 0 only).

    Returns:
      The test report (also written to report.json / report.md in `workdir`).
    """
    workdir = pathlib.Path(workdir)
    log = log if processes.is_main_process() else (lambda _: None)
    _check_workdir(config, workdir, resume)
    _preflight(config)
    processes.sync("nri_jax:checked")  # no process writes before every process has checked
    dataset, data_path = load_data(config.data)
    n_encoder_frames = dataset.train.features.shape[2]
    # A model that does not match init_from fails here, before any file is written.
    initial = config.train.init_from and _initial_variables(
        NRI(config.model, physics=simulation.Physics.of_dataset(dataset)),
        config.train.init_from, np.asarray(dataset.train.features[:1])[:, :, :n_encoder_frames],
        config.train.init_parts)
    run = Run(config, dataset, workdir, n_encoder_frames)  # bad data fails here, before files
    if initial:  # a resumed run's checkpoint replaces it again below
        initial = jax.device_put(initial, data_lib.replicated(run.mesh))
        run.state = run.state.replace(**{collection: {**getattr(run.state, collection), **parts}
                                         for collection, parts in initial.items()})
    if processes.is_main_process():
        workdir.mkdir(parents=True, exist_ok=True)
    # A resumed run keeps its files (the config is checked equal); a run killed
    # before writing them all gets the missing ones.
    if not (workdir / CONFIG_FILE).exists():
        processes.write_json(workdir / CONFIG_FILE, config.to_dict())
    if not (workdir / DATA_FILE).exists():
        processes.write_json(workdir / DATA_FILE, {"path": str(data_path.absolute()),
                                          "n_encoder_frames": n_encoder_frames,
                                          **datasets.describe(dataset)})
    start, best_nll = _resume(run) if resume else (0, float("inf"))
    if start:
        log(f"resumed {workdir} after epoch {start}")
    _train(run, start, best_nll, log)
    try:
        run.restore("best")
    except checkpointing.CheckpointError as err:  # damaged since it was written
        log(f"warning: {err}\nreporting the last epoch's parameters instead")
        run.restore("latest")
    return _test(run, log)


def _train(run: Run, start: int, best_nll: float, log) -> None:
    """Epochs `start`.. of training, each logged, validated and checkpointed."""
    config = run.config
    train_step = training.make_train_step(run.model, run.tx, config, run.mesh)
    eval_step = training.make_eval_step(run.model, config, run.mesh)
    eval_key = jax.random.fold_in(run.key, 2)
    for epoch in range(start, config.train.epochs):
        t0 = time.perf_counter()
        train_metrics = _train_epoch(run, train_step, epoch, compile_first=epoch == start)
        seconds = time.perf_counter() - t0
        valid_metrics = run.evaluate(eval_step, "valid", jax.random.fold_in(eval_key, epoch))
        record = {"epoch": epoch, "train": train_metrics, "valid": valid_metrics,
                  "seconds": seconds,
                  "samples_per_s": run.steps_per_epoch * config.train.batch_size / seconds}
        _append_metrics(run.workdir, record)
        log(reports.log_line(epoch, config.train.epochs, record))
        selected = valid_metrics[training.selection_metric(config)]
        meta = {"epoch": epoch + 1, "best_valid_nll": min(best_nll, selected)}
        if selected < best_nll:
            best_nll = selected
            checkpointing.save(run.best, epoch + 1, run.state, meta)
        checkpointing.save(run.latest, epoch + 1, run.state, meta)


def _test(run: Run, log, out=None) -> dict:
    """The test report of the run's current state, written into its directory."""
    test_step = training.make_test_step(run.model, run.config, run.n_encoder_frames, run.mesh)
    report = run.evaluate(test_step, "test", jax.random.fold_in(run.key, 3))
    report.update(epoch=run.epoch, n_test=run.sizes["test"])
    reports.write_report(run.workdir, report, log, out)
    return report


def read_run(run_dir: str | os.PathLike) -> tuple[Config, dict]:
    """Reads a run directory's config and data description, with clear errors."""
    run_dir = pathlib.Path(run_dir)
    for name in (CONFIG_FILE, DATA_FILE):
        if not (run_dir / name).is_file():
            raise RunDirError(f"{run_dir} is not a run directory: {name} is missing")
    try:
        config = Config.from_dict(json.loads((run_dir / CONFIG_FILE).read_text()))
        data_info = json.loads((run_dir / DATA_FILE).read_text())
    except (ValueError, KeyError, TypeError) as err:
        raise RunDirError(f"{run_dir}: unreadable or incompatible run files ({err})") from err
    return config, data_info


def load_run(run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
             checkpoint: str = "best", splits=("test",)) -> Run:
    """Restores a run directory (or an exported one) for evaluation or inspection.

    Args:
      run_dir: a directory written by `train_and_evaluate` or `export_run`.
      data_dir: use this dataset (native or reference layout) instead of the
        run's own; it is normalised with the run's training statistics. An
        exported run without one regenerates its dataset from the config (and
        checks that its training statistics come out as recorded).
      checkpoint: "best" (best validation NLL) or "latest"; an exported run has
        only its exported parameters.
      splits: which splits to place on the device(s).

    Returns:
      A `Run` whose state holds the restored parameters.
    """
    run_dir = pathlib.Path(run_dir)
    config, data_info = read_run(run_dir)
    stats = datasets.stats_from_dict(data_info["stats"])
    exported = (run_dir / EXPORT_FILE).is_file()
    if data_dir is None and data_info["path"] is None:
        path = _regenerate(config, stats, run_dir)
    else:
        path = pathlib.Path(data_dir or data_info["path"])
    dataset = datasets.open_dataset(path, stats=stats)
    if dataset.n_objects != config.data.n_objects:
        raise ValueError(f"dataset {path} has {dataset.n_objects} objects; the run in "
                         f"{run_dir} was trained on n_objects={config.data.n_objects}")
    n_features = dataset.test.features.shape[-1]
    if n_features != data_info["n_features"]:
        raise ValueError(f"dataset {path} has {n_features} features per frame; the run in "
                         f"{run_dir} was trained on {data_info['n_features']}")
    if checkpoint not in ("best", "latest"):
        raise ValueError(f"checkpoint must be 'best' or 'latest', got {checkpoint!r}")
    directory = run_dir / "checkpoints" / checkpoint
    if not exported and (not directory.is_dir()
                         or not any(p.name.isdigit() for p in directory.iterdir())):
        raise checkpointing.CheckpointError(f"no {checkpoint} checkpoint in {directory}")
    # Results do not depend on the device count: use as many here as divide the batch.
    devices = math.gcd(config.train.eval_batch_size, jax.device_count())
    run = Run(configs.override(config, n_devices=devices), dataset, run_dir,
              data_info["n_encoder_frames"], splits=splits, for_restore=True)
    if exported:
        _load_exported(run)
    else:
        run.restore(checkpoint)
    return run


def _abstract_variables(model: NRI, example: np.ndarray) -> dict:
    """The shapes and dtypes of `model`'s {"params", "batch_stats"} on `example`."""
    key = jax.random.key(0)  # only shapes are taken from this init
    like = jax.eval_shape(lambda: model.init({"params": key, "gumbel": key, "dropout": key},
                                             example, train=False))
    return {"params": like["params"], "batch_stats": like.get("batch_stats", {})}


def load_model(run_dir: str | os.PathLike) -> tuple[Config, NRI, dict]:
    """A run's model and best variables, without its dataset.

    For applying a trained model (a shipped `pretrained/` one, an exported or
    a finished run directory) to trajectories of one's own:
    ``model.apply(variables, x, train=False, method=NRI.encode)`` gives the
    edge-type logits of ``x`` ``[B, N, T, D]``, normalised as data.json's
    `stats` say (`simulators.datasets.model_features`).

    Returns:
      (config, model, variables) with ``variables = {"params", "batch_stats"}``:
      an exported run's parameters, or a run directory's best checkpoint.
    """
    run_dir = pathlib.Path(run_dir)
    config, data_info = read_run(run_dir)
    # data.json records the physics since 2026-12-02; older runs used the defaults.
    physics = simulation.Physics.of(data_info["system"], data_info.get("physics"),
                                    datasets.stats_from_dict(data_info["stats"]))
    model = NRI(config.model, physics=physics)
    example = np.zeros((1, config.data.n_objects, data_info["n_encoder_frames"],
                        data_info["n_features"]), np.float32)
    if (run_dir / EXPORT_FILE).is_file():
        return config, model, _exported_variables(run_dir, _abstract_variables(model, example))[0]
    like = jax.eval_shape(functools.partial(
        training.init_state, jax.random.key(0), model,
        training.make_optimizer(config.train, 1), example))
    directory = run_dir / "checkpoints" / "best"
    restored = checkpointing.restore(
        checkpointing.manager(directory, max_to_keep=1, create=False), like)
    if restored is None:
        raise checkpointing.CheckpointError(f"no best checkpoint in {directory}")
    state = restored[0]
    return config, model, {"params": state.params, "batch_stats": state.batch_stats}


def _initial_variables(model: NRI, source: str, example: np.ndarray, parts: str) -> dict:
    """The best variables of the run in `source` ({"params": {part: ...}, ...}, only the
    model's "encoder" or "decoder" unless `parts` is "all"), checked against the
    shapes of `model`'s on `example` and cast to its dtypes."""
    def select(variables: dict) -> dict:
        if parts == "all":
            return variables
        return {collection: {parts: tree[parts]} for collection, tree in variables.items()
                if parts in tree}

    ours = select(_abstract_variables(model, example))
    variables = select(load_model(source)[2])
    theirs = dict(jax.tree_util.tree_flatten_with_path(variables)[0])
    for path, leaf in jax.tree_util.tree_flatten_with_path(ours)[0]:
        if path not in theirs or theirs[path].shape != leaf.shape:
            found = "missing" if path not in theirs else f"of shape {theirs[path].shape}"
            raise ValueError(f"init_from={source!r}: its {jax.tree_util.keystr(path)} is "
                             f"{found}, this model's has shape {leaf.shape}; the two models "
                             f"must have the same {'encoder, decoder' if parts == 'all' else parts}"
                             ", widths and edge types")
    if len(theirs) != len(jax.tree.leaves(ours)):
        raise ValueError(f"init_from={source!r} holds parameters this model does not have "
                         f"({len(theirs)} arrays against {len(jax.tree.leaves(ours))})")
    return jax.tree.map(lambda new, like: np.asarray(new, like.dtype), variables, ours)


def _exported_variables(run_dir: pathlib.Path, like: dict) -> tuple[dict, dict]:
    """(variables, export.json's contents) of an exported run, checked against `like`."""
    info = json.loads((run_dir / EXPORT_FILE).read_text())
    return checkpointing.load_variables(run_dir / PARAMS_FILE, like,
                                        sha256=info.get("sha256")), info


def _regenerate(config: Config, stats, run_dir: pathlib.Path) -> pathlib.Path:
    """The dataset of an exported run, generated (or found cached) from its config."""
    dataset, path = load_data(configs.override(config, data_dir=None).data)
    if (stats is None) != (dataset.stats is None) or (
            stats is not None and not np.allclose(stats, dataset.stats, rtol=1e-6, atol=0)):
        raise RunDirError(f"{run_dir}: the dataset regenerated from its config ({path}) has "
                          f"training statistics {dataset.stats}, not the recorded {stats}: "
                          "the simulators have changed since the model was trained")
    return path


def _load_exported(run: Run) -> None:
    """Fills `run.state` with an exported run's parameters (no optimizer state)."""
    like = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    variables, info = _exported_variables(run.workdir, like)
    variables = jax.device_put(variables, data_lib.replicated(run.mesh))
    run.state = run.state.replace(step=np.int32(0), opt_state=None, **variables)
    run.epoch = info["epoch"]


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
               dtype: str = "float16", log=print) -> dict:
    """Writes the best checkpoint of a run as a small exported run directory.

    `out_dir` gets the run's config.json, metrics.jsonl, data.json (without
    the dataset path: it is regenerated from the config when loaded), the
    parameters as `dtype` in params.msgpack, export.json (source, epoch, dtype,
    digest) and the test report of the exported parameters themselves, on the
    source run's dataset, so that any change from the storage precision shows
    beside the source run's own report.

    Raises:
      RunDirError: when `out_dir` exists and is not empty (nothing is overwritten).
    """
    run_dir, out_dir = pathlib.Path(run_dir), pathlib.Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunDirError(f"export directory {out_dir} exists and is not empty")
    if dtype not in checkpointing.EXPORT_DTYPES:  # checked before the run is loaded
        raise ValueError(f"dtype must be one of {checkpointing.EXPORT_DTYPES}, got {dtype!r}")
    run = load_run(run_dir)  # a missing or broken run directory fails here, before any file
    data_info = read_run(run_dir)[1]
    out_dir.mkdir(parents=True, exist_ok=True)
    info = checkpointing.save_variables(
        out_dir / PARAMS_FILE,
        {"params": run.state.params, "batch_stats": run.state.batch_stats}, dtype=dtype)
    processes.write_json(out_dir / EXPORT_FILE,
                         {"source": str(run_dir), "epoch": run.epoch, **info})
    processes.write_json(out_dir / DATA_FILE, {**data_info, "path": None})
    for name in (CONFIG_FILE, METRICS_FILE):
        if (run_dir / name).is_file():
            processes.write_text(out_dir / name, (run_dir / name).read_text())
    return evaluate_run(out_dir, data_dir=data_info["path"], log=log)[0]


def evaluate_run(run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                 out: str | os.PathLike | None = None, log=print) -> tuple[dict, Run]:
    """Reports on the test split with the best checkpoint of a finished run.

    Args: as `load_run`; `out` is where to write the JSON report (default:
    run_dir/report.json).

    Returns:
      (report, run): the report dict and the restored run (for plotting).
    """
    run = load_run(run_dir, data_dir=data_dir)
    return _test(run, log, out=out and pathlib.Path(out)), run


