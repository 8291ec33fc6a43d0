"""Dataset files on disk: the native layout and the original NRI code's layout.

Both layouts hold the same raw arrays, one dict per split. In memory (and in the native layout)
the arrays keep the simulators' layout:

* springs / charged: ``loc`` and ``vel`` ``[S, T, N, 2]``, ``edges`` ``[S, N, N]``;
* Kuramoto: ``feat`` ``[S, N, T, 4]``, ``edges`` ``[S, N, N]``.

Native layout: a directory with ``{split}_{array}.npy`` for every split and array plus
``metadata.json``, which records the settings, the package version and the shape and dtype of
every file. Reference layout (the original code's files): ``loc_{split}{suffix}.npy`` and
``vel_...`` ``[S, T, 2, N]`` float64, ``edges_...`` ``[S, N, N]``; Kuramoto ``feat_...``
``[S, N, T, 4]`` and ``edges_...``; the suffix is e.g. ``_springs5``.

Writing is atomic: everything goes into a hidden temporary sibling directory, ``metadata.json``
last, and the directory is renamed into place only when complete, so an interrupted run never
leaves a directory that loads as a dataset, and an existing dataset is replaced only on request
and only once its successor is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np

SPLITS = ("train", "valid", "test")
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
FORMATS = ("native", "reference")

# The reference generator names its files after the system and the number of objects.
_SUFFIX_PATTERN = re.compile(r"^_?(springs|charged|kuramoto)(\d+)$")


class DatasetError(ValueError):
    """A dataset directory is incomplete, inconsistent or in neither layout."""


class RawDataset(NamedTuple):
    """Raw arrays of the three splits as stored on disk, in the simulators' layout.

    Attributes:
      system: "springs", "charged" or "kuramoto".
      n_objects: N.
      splits: split name -> array name -> array (layouts in the module docstring).
      metadata: the directory's metadata.json ({} for a reference directory without one).
      format: "native" or "reference".
    """

    system: str
    n_objects: int
    splits: dict[str, dict[str, np.ndarray]]
    metadata: dict[str, Any]
    format: str


# ---------------------------------------------------------------------------------------------
# Checking arrays


def check_split(arrays: Mapping[str, np.ndarray], *, split: str) -> tuple[int, int, int]:
    """Checks one split's raw arrays against each other.

    Args:
      arrays: either ``loc``, ``vel`` ``[S, T, N, 2]`` and ``edges`` ``[S, N, N]``, or
        ``feat`` ``[S, N, T, 4]`` and ``edges``.
      split: name used in error messages.

    Returns:
      ``(S, N, T)``.
    """
    lead = "feat" if "feat" in arrays else "loc"
    expected = {"feat", "edges"} if "feat" in arrays else {"loc", "vel", "edges"}
    if set(arrays) != expected:
        raise DatasetError(f"{split} split: arrays {sorted(arrays)}, expected {sorted(expected)}")
    for name, array in arrays.items():
        kind = "iuf" if name == "edges" else "f"
        if array.ndim != (3 if name == "edges" else 4) or array.dtype.kind not in kind:
            raise DatasetError(f"{split} {name}: wrong rank or dtype {array.shape} {array.dtype}")
    edges = arrays["edges"]
    if "feat" in arrays:
        s, n, t, d = arrays["feat"].shape
        if d != 4:
            raise DatasetError(f"{split} feat: last axis must be 4, shape {(s, n, t, d)}")
    else:
        s, t, n, d = arrays["loc"].shape
        if d != 2 or arrays["vel"].shape != arrays["loc"].shape:
            raise DatasetError(f"{split} loc {arrays['loc'].shape} and vel "
                               f"{arrays['vel'].shape} must both be [S, T, N, 2]")
    if edges.shape != (s, n, n):
        raise DatasetError(f"{split} edges: shape {edges.shape}, {lead} implies {(s, n, n)}")
    return s, n, t


def check_splits(splits: Mapping[str, Mapping[str, np.ndarray]]) -> int:
    """Checks that all three splits are present and agree on N and the arrays; returns N."""
    if set(splits) != set(SPLITS):
        raise DatasetError(f"splits {sorted(splits)}, expected {list(SPLITS)}")
    sizes = {split: check_split(splits[split], split=split) for split in SPLITS}
    n_objects = {size[1] for size in sizes.values()}
    if len(n_objects) != 1:
        raise DatasetError(f"splits disagree on the number of objects: "
                           f"{ {split: size[1] for split, size in sizes.items()} }")
    if len({frozenset(splits[split]) for split in SPLITS}) != 1:
        raise DatasetError("splits hold different arrays (feat vs loc/vel)")
    return n_objects.pop()


# ---------------------------------------------------------------------------------------------
# Atomic directories


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary sibling of `path`, renamed to `path` when the block succeeds.

    On an exception the temporary directory is removed and `path` is left as it was.

    Args:
      path: the final directory.
      overwrite: replace an existing dataset at `path` (only after the new one is complete).
        Without it an existing `path` is an error; with it, a `path` holding anything other than
        dataset files is still refused, so a typo cannot delete unrelated data.
    """
    path = Path(path)
    _check_replaceable(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield temporary
        _move_into_place(temporary, path, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _check_replaceable(path: Path, *, overwrite: bool) -> None:
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it "
                              "(pass overwrite=True / --overwrite to replace it)")
    if not path.is_dir() or path.is_symlink():
        raise FileExistsError(f"{path} exists and is not a dataset directory; not replacing it")
    for entry in path.iterdir():
        if not (entry.is_file() and (entry.name == METADATA_FILE or entry.suffix == ".npy")):
            raise FileExistsError(f"refusing to replace {path}: it holds {entry.name!r}, "
                                  "which is not a dataset file")
    # A directory of the original code's files may hold several datasets: replace only one.
    if len(_reference_suffixes(path)) > 1:
        raise FileExistsError(f"refusing to replace {path}: it holds several reference datasets "
                              f"{_reference_suffixes(path)}")


def _move_into_place(temporary: Path, path: Path, *, overwrite: bool) -> None:
    # Checked again: the directory may have appeared while the data was being generated.
    _check_replaceable(path, overwrite=overwrite)
    if not path.exists():
        os.rename(temporary, path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.rename(path, old / path.name)
    try:
        os.rename(temporary, path)
    except BaseException:
        os.rename(old / path.name, path)
        raise
    finally:
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Writing


def reference_suffix(system: str, n_objects: int) -> str:
    """The reference generator's file suffix, e.g. ``_springs5``."""
    return f"_{system}{n_objects}"


def write_split(directory: str | os.PathLike, split: str, arrays: Mapping[str, np.ndarray], *,
                format: str = "native", suffix: str = "") -> dict[str, Any]:
    """Writes one split's raw arrays into `directory` in the given layout.

    Args:
      directory: usually the temporary directory of `atomic_directory`.
      split: "train", "valid" or "test".
      arrays: raw arrays in the simulators' layout (see `check_split`).
      format: "native" or "reference" (float64, ``[S, T, 2, N]`` for loc / vel).
      suffix: file suffix of the reference layout.

    Returns:
      The split's record for metadata.json: sizes and each file's name, shape and dtype.
    """
    check_format(format)
    n_sims, _, n_frames = check_split(arrays, split=split)
    files = {}
    for name, array in arrays.items():
        if format == "reference":
            file, array = f"{name}_{split}{suffix}.npy", _to_reference(name, array)
        else:
            file = f"{split}_{name}.npy"
        np.save(Path(directory) / file, array, allow_pickle=False)
        files[name] = {"file": file, "shape": list(array.shape), "dtype": array.dtype.str}
    return {"n_sims": n_sims, "n_frames": n_frames, "files": files}


def _to_reference(name: str, array: np.ndarray) -> np.ndarray:
    # The original code stored float64 and put the coordinate axis before the objects.
    if name in ("loc", "vel"):
        array = np.swapaxes(array, -1, -2)
    return np.ascontiguousarray(array, dtype=np.float64)


def write_metadata(directory: str | os.PathLike, metadata: Mapping[str, Any],
                   records: Mapping[str, Mapping[str, Any]], *, format: str = "native",
                   suffix: str = "") -> dict[str, Any]:
    """Writes metadata.json; call it last, after every split's files.

    Args:
      directory: the dataset directory being written.
      metadata: settings and provenance (must hold "system" and "n_objects").
      records: split -> the record returned by `write_split`.
      format: "native" or "reference".
      suffix: the reference layout's suffix (recorded for reference directories).

    Returns:
      The full metadata as written.
    """
    check_format(format)
    if set(records) != set(SPLITS):
        raise ValueError(f"records must hold the splits {SPLITS}, got {sorted(records)}")
    full = {**metadata, "format": format, "format_version": FORMAT_VERSION,
            "splits": {split: dict(records[split]) for split in SPLITS}}
    if format == "reference":
        full["suffix"] = suffix
    text = json.dumps(full, indent=2, sort_keys=True) + "\n"
    (Path(directory) / METADATA_FILE).write_text(text)
    return full


def write_dataset(path: str | os.PathLike, splits: Mapping[str, Mapping[str, np.ndarray]],
                  metadata: Mapping[str, Any], *, format: str = "native",
                  overwrite: bool = False) -> Path:
    """Writes all three splits and metadata.json atomically (see `atomic_directory`).

    Args:
      path: the dataset directory.
      splits: split -> raw arrays.
      metadata: settings and provenance; must hold "system" (str) and "n_objects" (int).
      format: "native" or "reference".
      overwrite: replace an existing dataset directory.

    Returns:
      The dataset directory.
    """
    check_format(format)
    n_objects = check_splits(splits)
    if metadata.get("n_objects") != n_objects or not isinstance(metadata.get("system"), str):
        raise ValueError(f"metadata must name the system and n_objects={n_objects}, "
                         f"got system={metadata.get('system')!r}, "
                         f"n_objects={metadata.get('n_objects')!r}")
    suffix = reference_suffix(metadata["system"], n_objects)
    with atomic_directory(path, overwrite=overwrite) as directory:
        records = {split: write_split(directory, split, splits[split], format=format,
                                      suffix=suffix) for split in SPLITS}
        write_metadata(directory, metadata, records, format=format, suffix=suffix)
    return Path(path)


def check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")


# ---------------------------------------------------------------------------------------------
# Reading


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks a dataset directory's metadata.json.

    Raises:
      DatasetError: metadata.json is missing, unreadable or incomplete.
    """
    file = Path(path) / METADATA_FILE
    if not file.is_file():
        raise DatasetError(f"{file} is missing: {path} is not a complete dataset "
                           "(an interrupted generation leaves none)")
    try:
        metadata = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read {file}: {error}") from error
    required = ("format", "format_version", "system", "n_objects", "splits")
    missing = [key for key in required if not isinstance(metadata, dict) or key not in metadata]
    if missing:
        raise DatasetError(f"{file} is incomplete: missing {missing}")
    if metadata["format_version"] != FORMAT_VERSION or metadata["format"] not in FORMATS:
        raise DatasetError(f"{file}: unsupported format {metadata['format']!r} version "
                           f"{metadata['format_version']!r} (this code reads version "
                           f"{FORMAT_VERSION})")
    if set(metadata["splits"]) != set(SPLITS):
        raise DatasetError(f"{file}: splits {sorted(metadata['splits'])}, expected {SPLITS}")
    return metadata


def detect_format(path: str | os.PathLike) -> str:
    """Returns "native" or "reference" for a dataset directory.

    A directory with a metadata.json is whatever that file says; one without it is a reference
    directory when it holds the original code's training files, and an error otherwise.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset directory {path} does not exist")
    if (path / METADATA_FILE).exists():
        return read_metadata(path)["format"]
    if _reference_suffixes(path):
        return "reference"
    if any(path.glob("train_*.npy")):
        raise DatasetError(f"{path} holds native files but no {METADATA_FILE}: "
                           "an incomplete (interrupted?) dataset")
    raise DatasetError(f"{path} is neither a native dataset ({METADATA_FILE}) nor a reference "
                       "one (loc_train<suffix>.npy or feat_train<suffix>.npy)")


def read_dataset(path: str | os.PathLike, *, format: str | None = None,
                 system: str | None = None, suffix: str | None = None,
                 mmap: bool = False) -> RawDataset:
    """Reads a dataset directory in either layout into the simulators' layout.

    Args:
      path: the dataset directory.
      format: "native" or "reference"; None detects it (`detect_format`).
      system: the system of a reference directory whose suffix does not name it.
      suffix: the file suffix of a reference directory holding several datasets.
      mmap: map the files read-only instead of reading them (only headers are read here).

    Returns:
      The raw arrays, checked for completeness and consistent shapes.
    """
    format = detect_format(path) if format is None else format
    check_format(format)
    if format == "native":
        return read_native(path, mmap=mmap)
    return read_reference(path, system=system, suffix=suffix, mmap=mmap)


def read_native(path: str | os.PathLike, *, mmap: bool = False) -> RawDataset:
    """Reads a native directory; every file must match the shape and dtype in metadata.json."""
    path = Path(path)
    metadata = read_metadata(path)
    if metadata["format"] != "native":
        raise DatasetError(f"{path / METADATA_FILE} describes a {metadata['format']!r} dataset")
    splits = {}
    for split in SPLITS:
        files = metadata["splits"][split].get("files", {})
        splits[split] = {name: _read_array(path / entry["file"], shape=entry["shape"],
                                           dtype=entry["dtype"], mmap=mmap)
                         for name, entry in files.items()}
    n_objects = _checked(path, splits)
    if n_objects != metadata["n_objects"]:
        raise DatasetError(f"{path}: files hold {n_objects} objects, metadata says "
                           f"{metadata['n_objects']}")
    return RawDataset(metadata["system"], n_objects, splits, metadata, "native")


def read_reference(path: str | os.PathLike, *, system: str | None = None,
                   suffix: str | None = None, mmap: bool = False) -> RawDataset:
    """Reads the original code's files (``loc_train_springs5.npy``, ...).

    Args:
      path: the directory.
      system: needed when neither the suffix nor a metadata.json names the system.
      suffix: needed when the directory holds files with several suffixes.
      mmap: map the files read-only instead of reading them.
    """
    path = Path(path)
    metadata = read_metadata(path) if (path / METADATA_FILE).exists() else {}
    suffix = _choose_suffix(path, suffix, metadata.get("suffix"))
    kind = "feat" if (path / f"feat_train{suffix}.npy").exists() else "loc"
    names = ("feat", "edges") if kind == "feat" else ("loc", "vel", "edges")
    splits = {split: {name: _from_reference(
        name, _read_array(path / f"{name}_{split}{suffix}.npy", mmap=mmap))
        for name in names} for split in SPLITS}
    n_objects = _checked(path, splits)
    system = _reference_system(path, suffix, kind, n_objects, system or metadata.get("system"))
    return RawDataset(system, n_objects, splits, metadata, "reference")


def _from_reference(name: str, array: np.ndarray) -> np.ndarray:
    if name in ("loc", "vel") and array.ndim == 4:
        if array.shape[2] != 2:
            raise DatasetError(f"{name}: reference layout is [S, T, 2, N], got {array.shape}")
        return np.swapaxes(array, -1, -2)
    return array


def _checked(path: Path, splits: Mapping[str, Mapping[str, np.ndarray]]) -> int:
    try:
        return check_splits(splits)
    except DatasetError as error:
        raise DatasetError(f"{path}: {error}") from error


def _reference_suffixes(path: Path) -> list[str]:
    pattern = re.compile(r"^(?:loc|feat)_train(.*)\.npy$")
    matches = (pattern.match(entry.name) for entry in path.iterdir())
    return sorted({match.group(1) for match in matches if match})


def _choose_suffix(path: Path, suffix: str | None, recorded: str | None) -> str:
    if suffix is not None:
        return suffix
    if recorded is not None:
        return recorded
    suffixes = _reference_suffixes(path)
    if len(suffixes) != 1:
        raise DatasetError(f"{path} holds reference files with suffixes {suffixes}; "
                           "pass suffix= to choose one" if suffixes else
                           f"{path} holds no loc_train*.npy or feat_train*.npy")
    return suffixes[0]


def _reference_system(path: Path, suffix: str, kind: str, n_objects: int,
                      system: str | None) -> str:
    match = _SUFFIX_PATTERN.match(suffix)
    if match and int(match.group(2)) != n_objects:
        raise DatasetError(f"{path}: suffix {suffix!r} says {match.group(2)} objects, "
                           f"the files hold {n_objects}")
    system = system or (match.group(1) if match else None)
    system = system or ("kuramoto" if kind == "feat" else None)
    if system is None:
        raise DatasetError(f"{path}: cannot tell the system from suffix {suffix!r}; "
                           "pass system=")
    if (system == "kuramoto") != (kind == "feat"):
        raise DatasetError(f"{path}: system {system!r} does not match the {kind}_* files")
    return system


def check_native_files(path: str | os.PathLike, metadata: Mapping[str, Any]) -> None:
    """Checks, reading only headers, that every file in `metadata` is complete and as recorded."""
    for split in SPLITS:
        for entry in metadata["splits"][split].get("files", {}).values():
            _read_array(Path(path) / entry["file"], shape=entry["shape"], dtype=entry["dtype"],
                        mmap=True)


def _read_array(file: Path, *, shape: list[int] | None = None, dtype: str | None = None,
                mmap: bool = False) -> np.ndarray:
    """Loads one .npy file (or maps it, which checks its header and length); errors name it."""
    if not file.is_file():
        raise DatasetError(f"missing file {file}")
    try:
        array = np.load(file, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as error:
        raise DatasetError(f"cannot read {file} (truncated or corrupt?): {error}") from error
    if shape is not None and list(array.shape) != list(shape):
        raise DatasetError(f"{file} has shape {array.shape}, metadata says {tuple(shape)}")
    if dtype is not None and array.dtype != np.dtype(dtype):
        raise DatasetError(f"{file} has dtype {array.dtype}, metadata says {np.dtype(dtype)}")
    return array
