"""Datasets for NRI: generation in chunks, edge labels, the reference normalisation, loading.

Generation derives one key per trajectory, ``fold_in(split_key, index)`` with
``split_key = fold_in(key(seed), split_id)``, so every trajectory is independent of every other
(within and across splits) and of the chunk size and the number of devices used to generate it.
Each chunk's keys are split evenly over the process's local devices (`simulate_sharded`).

Loading: `open_dataset` memory-maps the files and reads, normalises and checks only the rows
asked for (so each process of a multi-host run reads only its shard); `load_dataset` reads all.

Edge order (shared with the model library): the E = N(N-1) directed edges of the fully connected
graph are the off-diagonal entries of an ``[N, N]`` matrix in row-major order; edge e joins
sender ``senders[e]`` (column j) to receiver ``receivers[e]`` (row i), for i = 0..N-1 and then
j = 0..N-1, j != i. ``fully_connected_edges`` returns these indices; ``edge_labels`` and
``edges_to_matrix`` convert between matrices and per-edge labels in that order.

Normalisation (NRI reference): positions and velocities are each scaled to [-1, 1] with one
global min and max over the whole training split; valid and test use the training statistics.
Kuramoto features are already normalised per trajectory by the simulator and are used as they are.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from simulators import formats, systems

SPLITS = formats.SPLITS
_SPLIT_IDS = {split: index for index, split in enumerate(SPLITS)}
DEFAULT_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}
DEFAULT_CHUNK_SIZE = 4096
# Normalising in float64 blocks of this many trajectories bounds the temporary memory.
_BLOCK = 4096

Progress = Callable[[int], None]


# ---------------------------------------------------------------------------------------------
# Edge order and labels


def fully_connected_edges(n_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """Receiver and sender indices of the fully connected directed graph, without self loops.

    Args:
      n_objects: N >= 2.

    Returns:
      ``(receivers, senders)``, each ``[E]`` int32 with E = N(N-1): edge e goes from object
      ``senders[e]`` (column j) to object ``receivers[e]`` (row i), row-major over i then j != i.
    """
    _check_int("n_objects", n_objects, minimum=2)
    receivers, senders = np.nonzero(~np.eye(n_objects, dtype=bool))
    return receivers.astype(np.int32), senders.astype(np.int32)


def edge_labels(matrix):
    """Off-diagonal entries of interaction matrices in the fully connected edge order.

    Args:
      matrix: ``[..., N, N]`` array (NumPy or JAX); entry (i, j) describes the edge j -> i.

    Returns:
      ``[..., E]`` array of the same kind and dtype.
    """
    if matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(f"matrix must be [..., N, N], got shape {matrix.shape}")
    receivers, senders = fully_connected_edges(matrix.shape[-1])
    return matrix[..., receivers, senders]


def edges_to_matrix(labels, n_objects: int):
    """Inverse of `edge_labels`: per-edge values back to ``[..., N, N]`` with a zero diagonal.

    Args:
      labels: ``[..., E]`` array (NumPy or JAX), E = N(N-1), in the fully connected edge order.
      n_objects: N.

    Returns:
      ``[..., N, N]`` array of the same kind and dtype.
    """
    receivers, senders = fully_connected_edges(n_objects)
    if labels.ndim < 1 or labels.shape[-1] != len(receivers):
        raise ValueError(f"labels must be [..., {len(receivers)}] for n_objects={n_objects}, "
                         f"got shape {labels.shape}")
    # Gather instead of scatter so that NumPy and JAX inputs take the same path; the diagonal
    # gathers edge 0 and is then zeroed by the mask.
    index = np.zeros((n_objects, n_objects), dtype=np.int32)
    index[receivers, senders] = np.arange(len(receivers))
    mask = (~np.eye(n_objects, dtype=bool)).astype(labels.dtype)
    return labels[..., index] * mask.reshape((1,) * (labels.ndim - 1) + mask.shape)


def labels_from_edges(system: str, edges: np.ndarray, *, n_edge_types: int | None = None
                      ) -> np.ndarray:
    """Integer edge-type labels of raw interaction matrices, by the system's label rule.

    Args:
      system: a registered system name.
      edges: ``[S, N, N]`` raw interaction matrices (springs: type index; charged: q q^T).
      n_edge_types: K; None takes the system's default.

    Returns:
      ``[S, E]`` int32 labels in ``[0, K)``.
    """
    edges = np.asarray(edges)
    n_types = systems.n_edge_types(system) if n_edge_types is None else n_edge_types
    # Checked before the label rule, whose integer cast would hide fractional entries.
    if edges.size and np.any(edges != np.round(edges)):
        raise ValueError(f"{system} edges must hold whole numbers, got {np.unique(edges)[:10]}")
    labels = edge_labels(np.asarray(systems.edge_type_labels(system, edges)))
    if labels.size and (labels.min() < 0 or labels.max() >= n_types):
        raise ValueError(f"{system} edges give labels outside 0..{n_types - 1}: "
                         f"{np.unique(labels)[:10]}")
    return labels.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Normalisation


class NormStats(NamedTuple):
    """Training-split extremes used by the reference normalisation (physical units)."""

    loc_min: float
    loc_max: float
    vel_min: float
    vel_max: float


def compute_stats(loc: np.ndarray, vel: np.ndarray) -> NormStats:
    """Global min and max of positions and of velocities (all sims, frames, objects, dims).

    Reads blocks of trajectories, so memory-mapped arrays are streamed in bounded memory.

    Args:
      loc, vel: training-split arrays ``[S, ...]`` (in memory or memory-mapped).
    """
    stats = NormStats(*_extremes("loc", loc), *_extremes("vel", vel))
    _check_stats(stats)
    return stats


def _extremes(name: str, array: np.ndarray) -> tuple[float, float]:
    if np.size(array) == 0:
        raise ValueError(f"training {name} must be non-empty and finite")
    low, high = np.inf, -np.inf
    for start in range(0, len(array), _BLOCK):
        block = np.asarray(array[start:start + _BLOCK])
        if not np.all(np.isfinite(block)):
            raise ValueError(f"training {name} must be non-empty and finite")
        # Minima and maxima select stored values, so the blocks change no bit of the result.
        low, high = min(low, float(block.min())), max(high, float(block.max()))
    return low, high


def _check_stats(stats: NormStats) -> None:
    stats = NormStats(*stats)
    if not all(np.isfinite(stats)) or stats.loc_max <= stats.loc_min or \
            stats.vel_max <= stats.vel_min:
        raise ValueError(f"stats need finite min < max for loc and vel, got {stats}")


def stats_to_dict(stats: NormStats | None) -> dict[str, float] | None:
    """JSON-friendly form of `stats` (None stays None)."""
    return None if stats is None else dict(NormStats(*stats)._asdict())


def stats_from_dict(values: Mapping[str, float] | None) -> NormStats | None:
    """Inverse of `stats_to_dict`."""
    return None if values is None else NormStats(**{k: float(v) for k, v in values.items()})


def _scale_and_offset(stats: NormStats, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    stats = NormStats(*stats)
    low = np.array([stats.loc_min] * 2 + [stats.vel_min] * 2)
    span = np.array([stats.loc_max - stats.loc_min] * 2 + [stats.vel_max - stats.vel_min] * 2)
    shape = (1,) * (ndim - 1) + (4,)
    return low.reshape(shape), span.reshape(shape)


def normalise(features, stats: NormStats):
    """Scales physical ``(x, y, vx, vy)`` features with the training extremes.

    ``(value - min) * 2 / (max - min) - 1`` per quantity, the reference's formula in its order.

    Args:
      features: ``[..., 4]`` NumPy or JAX array.
      stats: training statistics.

    Returns:
      ``[..., 4]`` array of the same kind; the training split lies in [-1, 1].
    """
    _check_features(features)
    low, span = _scale_and_offset(stats, features.ndim)
    return ((features - low.astype(features.dtype)) * 2 / span.astype(features.dtype)) - 1


def denormalise(features, stats: NormStats):
    """Inverse of `normalise`: ``[..., 4]`` normalised features back to physical units."""
    _check_features(features)
    low, span = _scale_and_offset(stats, features.ndim)
    return (features + 1) * span.astype(features.dtype) / 2 + low.astype(features.dtype)


def _check_features(features) -> None:
    if features.ndim < 1 or features.shape[-1] != 4:
        raise ValueError(f"features must be [..., 4] = (x, y, vx, vy), got {features.shape}")


def model_features(arrays: Mapping[str, np.ndarray], stats: NormStats | None) -> np.ndarray:
    """Raw split arrays -> model input ``[S, N, T, D]`` float32.

    Args:
      arrays: ``loc``/``vel`` ``[S, T, N, 2]`` (normalised with `stats`) or Kuramoto ``feat``
        ``[S, N, T, 4]`` (used as it is; `stats` must be None).
      stats: training statistics for loc/vel data.
    """
    if "feat" in arrays:
        if stats is not None:
            raise ValueError("Kuramoto features are not rescaled: stats must be None")
        return np.asarray(arrays["feat"], dtype=np.float32)
    if stats is None:
        raise ValueError("loc/vel data need normalisation stats")
    loc, vel = arrays["loc"], arrays["vel"]
    out = np.empty(loc.shape[:1] + (loc.shape[2], loc.shape[1], 4), dtype=np.float32)
    # float64 arithmetic in the reference's order, so that the same data stored as float32
    # (native) or float64 (reference) gives bit-identical features.
    for start in range(0, len(loc), _BLOCK):
        block = slice(start, start + _BLOCK)
        physical = np.concatenate([loc[block], vel[block]], axis=-1, dtype=np.float64)
        out[block] = normalise(np.swapaxes(physical, 1, 2), stats)
    return out


# ---------------------------------------------------------------------------------------------
# Loading


class Rows:
    """Lazy rows of one split's model array, read from memory-mapped files when indexed.

    ``rows[a:b]``, ``rows[indices]`` (1-D integers) or ``rows[i]`` read, convert and check only
    those trajectories and return a NumPy array equal, bit for bit, to the same rows of
    `load_dataset`'s array; ``np.asarray(rows)`` reads them all.

    Attributes:
      shape: the full array's shape, e.g. ``[S, N, T, D]`` or ``[S, E]``.
      dtype: its dtype.
    """

    def __init__(self, read: Callable[[slice | np.ndarray], np.ndarray], *,
                 shape: tuple[int, ...], dtype: Any):
        self._read = read
        self.shape = tuple(int(size) for size in shape)
        self.dtype = np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            return self._read(rows)
        if isinstance(rows, (int, np.integer)) and not isinstance(rows, bool):
            return self._read(np.array([rows]))[0]
        index = np.asarray(rows)
        index = index.astype(np.intp) if index.size == 0 else index  # [] is float64
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise IndexError(f"rows must be a slice, an integer or a 1-D integer array, "
                             f"got {rows!r}")
        return self._read(index)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy is False:
            raise ValueError("Rows are read from files: materialising them always copies")
        array = self[:]
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"Rows(shape={self.shape}, dtype={self.dtype})"


class Split(NamedTuple):
    """One split in model layout.

    Attributes:
      features: ``[S, N, T, D]`` float32 (springs / charged: normalised (x, y, vx, vy));
        a NumPy array from `load_dataset`, lazy `Rows` from `open_dataset`.
      labels: ``[S, E]`` int32 edge types in the fully connected edge order (array or `Rows`).
    """

    features: np.ndarray | Rows
    labels: np.ndarray | Rows


class Dataset(NamedTuple):
    """A loaded dataset.

    Attributes:
      train, valid, test: the splits.
      stats: the normalisation statistics used (None for Kuramoto).
      system: "springs", "charged" or "kuramoto".
      n_objects: N.
      n_edge_types: K.
      metadata: the directory's metadata ({} for reference files without one).
    """

    train: Split
    valid: Split
    test: Split
    stats: NormStats | None
    system: str
    n_objects: int
    n_edge_types: int
    metadata: dict[str, Any]


def open_dataset(path: str | os.PathLike, *, stats: NormStats | None = None,
                 format: str | None = None, system: str | None = None,
                 suffix: str | None = None) -> Dataset:
    """Opens a native or reference dataset directory lazily, in model layout.

    The files are memory-mapped; each split's features and labels are `Rows`, which read,
    normalise and check only the trajectories asked for, so that each process of a multi-host
    run reads only its own shard. Without `stats`, the training extremes are computed by
    streaming over the training split in blocks.

    Args:
      path: the directory.
      stats: normalisation statistics to use instead of this dataset's training split's (e.g.
        a training run's, to evaluate on another dataset); must be None for Kuramoto.
      format: "native" or "reference"; None detects it.
      system: the system of reference files whose suffix does not name it.
      suffix: which reference files to read when a directory holds several.

    Returns:
      The dataset; features ``[S, N, T, D]`` float32 and labels ``[S, E]`` int32 `Rows` per
      split. Reading rows that hold non-finite values raises `formats.DatasetError`.
    """
    raw = formats.read_dataset(path, format=format, system=system, suffix=suffix, mmap=True)
    systems.get(raw.system)  # an unknown system in metadata fails here, naming it
    train = raw.splits["train"]
    if stats is None and "feat" not in train:
        stats = compute_stats(train["loc"], train["vel"])
    elif stats is not None:
        _check_stats(stats)
        stats = NormStats(*stats)
    if "feat" in train and stats is not None:
        raise ValueError("Kuramoto features are not rescaled: stats must be None")
    n_types = systems.n_edge_types(raw.system, **raw.metadata.get("physics", {}))
    splits = {name: Split(_feature_rows(arrays, stats, where=f"{path}: {name} split"),
                          _label_rows(arrays["edges"], raw.system, n_types,
                                      where=f"{path}: {name} split edges"))
              for name, arrays in raw.splits.items()}
    return Dataset(**splits, stats=stats, system=raw.system, n_objects=raw.n_objects,
                   n_edge_types=n_types, metadata=raw.metadata)


def _feature_rows(arrays: Mapping[str, np.ndarray], stats: NormStats | None, *,
                  where: str) -> Rows:
    physical = {name: array for name, array in arrays.items() if name != "edges"}
    if "feat" in physical:
        shape = physical["feat"].shape
    else:
        n_sims, n_frames, n_objects, _ = physical["loc"].shape
        shape = (n_sims, n_objects, n_frames, 4)

    def read(rows):
        # Slices of a memory map are views: model_features then reads them block by block.
        features = model_features({name: array[rows] for name, array in physical.items()},
                                  stats)
        bad = ~np.isfinite(features).all(axis=tuple(range(1, features.ndim)))
        if np.any(bad):
            first = np.arange(shape[0])[rows][np.argmax(bad)]
            raise formats.DatasetError(f"{where} holds non-finite values "
                                       f"(first in trajectory {first})")
        return features
    return Rows(read, shape=shape, dtype=np.float32)


def _label_rows(edges: np.ndarray, system: str, n_edge_types: int, *, where: str) -> Rows:
    n_objects = edges.shape[-1]

    def read(rows):
        try:
            return labels_from_edges(system, edges[rows], n_edge_types=n_edge_types)
        except ValueError as error:
            raise formats.DatasetError(f"{where}: {error}") from error
    return Rows(read, shape=(len(edges), n_objects * (n_objects - 1)), dtype=np.int32)


def load_dataset(path: str | os.PathLike, *, stats: NormStats | None = None,
                 format: str | None = None, system: str | None = None,
                 suffix: str | None = None) -> Dataset:
    """Loads a native or reference dataset directory in model layout, all in memory.

    `open_dataset` with every split read: the same arguments, checks and values.

    Returns:
      The dataset; features ``[S, N, T, D]`` float32 and labels ``[S, E]`` int32 per split.
    """
    dataset = open_dataset(path, stats=stats, format=format, system=system, suffix=suffix)
    splits = {name: getattr(dataset, name) for name in SPLITS}
    return dataset._replace(**{name: Split(np.asarray(split.features), np.asarray(split.labels))
                               for name, split in splits.items()})


def describe(dataset: Dataset) -> dict[str, Any]:
    """A JSON-friendly summary: system, physics, sizes, shapes and the normalisation statistics."""
    return {"system": dataset.system, "n_objects": dataset.n_objects,
            "physics": _jsonable(physics_parameters(dataset.system,
                                                    dataset.metadata.get("physics"))),
            "n_edge_types": dataset.n_edge_types,
            "n_features": int(dataset.train.features.shape[-1]),
            "n_sims": {split: len(getattr(dataset, split).features) for split in SPLITS},
            "n_frames": {split: int(getattr(dataset, split).features.shape[2])
                         for split in SPLITS},
            "stats": stats_to_dict(dataset.stats)}


# ---------------------------------------------------------------------------------------------
# Generation


def split_key(key: jax.Array, split: str) -> jax.Array:
    """The key of one split: independent of the other splits' keys."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return jax.random.fold_in(key, _SPLIT_IDS[split])


@functools.partial(jax.jit, static_argnames="size")
def trajectory_keys(key: jax.Array, start, *, size: int) -> jax.Array:
    """Keys of trajectories ``start .. start + size - 1`` of a split: ``fold_in(key, index)``."""
    indices = start + jnp.arange(size, dtype=jnp.uint32)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


def device_count(n_devices: int | None = None) -> int:
    """The number of local devices to generate on: `n_devices` checked, or all of them.

    Generation is a per-process job (in a multi-host run only process 0 generates), so only
    ``jax.local_devices()`` count.
    """
    available = len(jax.local_devices())
    if n_devices is None:
        return available
    if isinstance(n_devices, bool) or not isinstance(n_devices, (int, np.integer)) \
            or not 1 <= n_devices <= available:
        raise ValueError(f"n_devices must be an integer from 1 to {available} (the number of "
                         f"visible local devices), got {n_devices!r}")
    return int(n_devices)


def simulate_sharded(keys: jax.Array, system: str, *, n_objects: int, n_frames: int,
                     n_devices: int | None = None, **physics: Any) -> dict[str, jax.Array]:
    """Simulates one trajectory per key, the keys split evenly over local devices.

    Args:
      keys: ``[S]`` PRNG keys, S a multiple of the number of devices.
      system: a registered system name.
      n_objects: N.
      n_frames: T.
      n_devices: how many of ``jax.local_devices()`` to use; None uses all.
      **physics: the system's physics settings (`physics_parameters`).

    Returns:
      The system's raw arrays with leading axis S, sharded along it like the keys.
    """
    n_devices = device_count(n_devices)
    if keys.ndim < 1 or len(keys) % n_devices:
        raise ValueError(f"keys: {keys.shape[:1]} trajectories do not split evenly over "
                         f"n_devices={n_devices}")
    settings = dict(n_objects=n_objects, n_frames=n_frames,
                    **physics_parameters(system, physics))
    simulate, sharding = _sharded_simulator(system, n_devices, tuple(sorted(settings.items())))
    return simulate(jax.device_put(keys, sharding))


@functools.lru_cache(maxsize=None)
def _sharded_simulator(system: str, n_devices: int, settings: tuple[tuple[str, Any], ...]
                       ) -> tuple[Callable[[jax.Array], dict[str, jax.Array]], NamedSharding]:
    # One jitted function per system, device count and settings; it compiles once per chunk.
    mesh = jax.make_mesh((n_devices,), ("sims",), devices=jax.local_devices()[:n_devices])
    function = functools.partial(systems.get(system).trajectories, **dict(settings))
    # shard_map rather than jit's automatic partitioning: the simulators step the batch in
    # lax.map chunks, and the partitioner gathered every chunk onto every device (on 2 host
    # devices it ran at 0.6x the speed of one device; shard_map up to 1.8x).
    sharded = jax.shard_map(function, mesh=mesh, in_specs=PartitionSpec("sims"),
                            out_specs=PartitionSpec("sims"))
    return jax.jit(sharded), NamedSharding(mesh, PartitionSpec("sims"))


def _keyword_parameters(function: Callable) -> dict[str, inspect.Parameter]:
    return {name: parameter for name, parameter in inspect.signature(function).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY}


def physics_parameters(system: str, physics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """All physics settings of `system`: its defaults updated with `physics`.

    Raises:
      ValueError: `physics` names a setting the system does not have.
    """
    parameters = _keyword_parameters(systems.get(system).trajectories)
    defaults = {name: p.default for name, p in parameters.items()
                if name not in ("n_objects", "n_frames")
                and p.default is not inspect.Parameter.empty}
    unknown = sorted(set(physics or {}) - set(defaults))
    if unknown:
        raise ValueError(f"{system} has no physics setting(s) {unknown}; "
                         f"it has {sorted(defaults)}")
    return {**defaults, **{name: _hashable(value) for name, value in (physics or {}).items()}}


def _hashable(value: Any) -> Any:
    # Static jit arguments must be hashable; JSON gives lists back.
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def generate_split(key: jax.Array, system: str, *, n_sims: int, n_objects: int, n_frames: int,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, progress: Progress | None = None,
                   n_devices: int | None = None, **physics: Any) -> dict[str, np.ndarray]:
    """Simulates one split in chunks sharded over local devices, gathered into NumPy arrays.

    Trajectory i uses ``fold_in(key, i)``, so the result depends neither on `chunk_size` nor on
    `n_devices`. Every chunk has the same shape (the last one is padded and cut), so it compiles
    once; its size is rounded up to a multiple of the device count, an equal share each.

    Args:
      key: the split's key (see `split_key`).
      system: a registered system name.
      n_sims: S, number of trajectories.
      n_objects: N.
      n_frames: T, frames per trajectory.
      chunk_size: trajectories simulated per call.
      progress: called with the number of trajectories done after each chunk.
      n_devices: how many of ``jax.local_devices()`` share each chunk; None uses all.
      **physics: the system's physics settings (`physics_parameters`).

    Returns:
      The system's raw arrays with a leading axis of S (e.g. loc ``[S, T, N, 2]``).
    """
    for name, value in (("n_sims", n_sims), ("n_frames", n_frames), ("chunk_size", chunk_size)):
        _check_int(name, value, minimum=1)
    _check_int("n_objects", n_objects, minimum=2)
    n_devices = device_count(n_devices)
    size = -(-min(chunk_size, n_sims) // n_devices) * n_devices
    out: dict[str, np.ndarray] = {}
    for start in range(0, n_sims, size):
        count = min(size, n_sims - start)
        chunk = simulate_sharded(trajectory_keys(key, start, size=size), system,
                                 n_objects=n_objects, n_frames=n_frames, n_devices=n_devices,
                                 **physics)
        for name, array in chunk.items():
            array = np.asarray(array)
            out.setdefault(name, np.empty((n_sims,) + array.shape[1:], array.dtype))
            out[name][start:start + count] = array[:count]
        if progress is not None:
            progress(start + count)
    return out


def online_key(key: jax.Array, epoch: int) -> jax.Array:
    """The key of epoch `epoch`'s fresh training trajectories (`fresh_training_split`),
    independent of the stored splits' keys (`split_key`) and of every other epoch's."""
    return jax.random.fold_in(jax.random.fold_in(key, len(SPLITS)), epoch)


def fresh_training_split(dataset: Dataset, key: jax.Array, *,
                         n_devices: int | None = None) -> Split:
    """New training trajectories like `dataset.train`: unlimited fresh data.

    The same system, number of trajectories, objects, frames and physics (the
    metadata's, else the system's defaults), drawn with `key` (trajectory i from
    ``fold_in(key, i)``, so the result does not depend on the device count) and
    normalised with `dataset.stats`, the statistics of the stored training split.

    Returns:
      Split with features ``[S, N, T, D]`` float32 and labels ``[S, E]`` int32, in memory.
    """
    n_sims, n_objects, n_frames, _ = dataset.train.features.shape
    arrays = generate_split(key, dataset.system, n_sims=n_sims, n_objects=n_objects,
                            n_frames=n_frames, n_devices=n_devices,
                            **physics_parameters(dataset.system, dataset.metadata.get("physics")))
    features = model_features({k: v for k, v in arrays.items() if k != "edges"}, dataset.stats)
    return Split(features, labels_from_edges(dataset.system, arrays["edges"],
                                             n_edge_types=dataset.n_edge_types))


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Building and caching dataset directories


def dataset_settings(*, system: str, n_objects: int = 5, n_train: int = DEFAULT_SIZES["train"],
                     n_valid: int = DEFAULT_SIZES["valid"], n_test: int = DEFAULT_SIZES["test"],
                     n_frames_train: int | None = None, n_frames_valid: int | None = None,
                     n_frames_test: int | None = None, seed: int = 42,
                     physics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Checks and completes the settings of a dataset (defaults filled in), as stored in
    metadata.json and compared by `ensure_dataset`.

    Raises:
      ValueError: naming the offending setting (unknown system, sizes < 1, n_objects < 2, ...).
    """
    systems.get(system)
    _check_int("n_objects", n_objects, minimum=2)
    _check_int("seed", seed, minimum=0)
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    frames = {"train": n_frames_train, "valid": n_frames_valid, "test": n_frames_test}
    for split in SPLITS:
        _check_int(f"n_{split}", sizes[split], minimum=1)
        frames[split] = systems.default_n_frames(system, split) if frames[split] is None \
            else frames[split]
        _check_int(f"n_frames_{split}", frames[split], minimum=1)
    physics = _jsonable(physics_parameters(system, physics))
    return {"system": system, "n_objects": n_objects, "n_sims": sizes, "n_frames": frames,
            "seed": seed, "physics": physics}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value.item() if isinstance(value, np.generic) else value


def build_dataset(path: str | os.PathLike, *, format: str = "native",
                  chunk_size: int = DEFAULT_CHUNK_SIZE, overwrite: bool = False,
                  progress: Callable[[str], Callable[[int, int], None]] | None = None,
                  n_devices: int | None = None, **settings: Any) -> Path:
    """Generates a dataset and writes it atomically to `path`.

    Args:
      path: the dataset directory (must not exist unless `overwrite`).
      format: "native" or "reference" (the original code's files, suffix ``_{system}{N}``).
      chunk_size: trajectories simulated per call.
      overwrite: replace an existing dataset, once the new one is complete.
      progress: ``progress(split)`` returns a callback ``(done, total)`` for that split.
      n_devices: local devices sharing each chunk (`generate_split`); None uses all.
      **settings: keywords of `dataset_settings`.

    Returns:
      The dataset directory.
    """
    settings = dataset_settings(**settings)
    formats.check_format(format)
    device_count(n_devices)  # a bad value fails before any directory is made
    root = jax.random.key(settings["seed"])
    suffix = formats.reference_suffix(settings["system"], settings["n_objects"])
    with formats.atomic_directory(path, overwrite=overwrite) as directory:
        records = {}
        for split in SPLITS:
            total = settings["n_sims"][split]
            report = None if progress is None else _count_of(progress(split), total)
            arrays = generate_split(
                split_key(root, split), settings["system"], n_sims=total,
                n_objects=settings["n_objects"], n_frames=settings["n_frames"][split],
                chunk_size=chunk_size, progress=report, n_devices=n_devices,
                **settings["physics"])
            records[split] = formats.write_split(directory, split, arrays, format=format,
                                                 suffix=suffix)
        formats.write_metadata(directory, {**settings, **_provenance()}, records,
                               format=format, suffix=suffix)
    return Path(path)


def _count_of(callback: Callable[[int, int], None], total: int) -> Progress:
    return lambda done: callback(done, total)


def _provenance() -> dict[str, Any]:
    try:
        version = importlib.metadata.version("nri-jax")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    return {"package": {"name": "nri-jax", "version": version}, "jax_version": jax.__version__}


def ensure_dataset(path: str | os.PathLike, *, format: str = "native",
                   chunk_size: int = DEFAULT_CHUNK_SIZE, overwrite: bool = False,
                   progress: Callable[[str], Callable[[int, int], None]] | None = None,
                   n_devices: int | None = None, **settings: Any) -> Path:
    """Reuses the dataset at `path` when its settings match exactly, else generates it.

    Only the settings are compared (system, N, sizes, frames, seed, all physics), not the
    package version that wrote the files.

    Args:
      path: the dataset directory.
      format: "native" or "reference"; part of what must match.
      chunk_size: trajectories simulated per call, when generating.
      overwrite: replace a dataset at `path` whose settings differ or whose files are broken;
        without it that is a FileExistsError naming the differences.
      progress: as in `build_dataset`.
      n_devices: local devices sharing each chunk, when generating; None uses all.
      **settings: keywords of `dataset_settings`.

    Returns:
      The dataset directory.
    """
    wanted = dataset_settings(**settings)
    device_count(n_devices)
    if not Path(path).exists():
        return build_dataset(path, format=format, chunk_size=chunk_size, progress=progress,
                             n_devices=n_devices, **settings)
    try:
        existing = formats.read_metadata(path)
        differences = {key: (existing.get(key), value) for key, value in wanted.items()
                       if existing.get(key) != value}
        if existing["format"] != format:
            differences["format"] = (existing["format"], format)
        if not differences and format == "native":
            formats.check_native_files(path, existing)
    except formats.DatasetError as error:
        differences = {"metadata": str(error)}
    if not differences:
        return Path(path)
    if not overwrite:
        raise FileExistsError(f"{path} holds a different dataset (existing, requested): "
                              f"{differences}; pass overwrite=True or choose another path")
    return build_dataset(path, format=format, chunk_size=chunk_size, overwrite=True,
                         progress=progress, n_devices=n_devices, **settings)
