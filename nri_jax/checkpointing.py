"""Checkpoints of the train state with orbax: the latest epochs and the best one.

Orbax writes each checkpoint into a temporary directory
(`<step>.orbax-checkpoint-tmp-<timestamp>`) and renames it into place when
complete, so a run killed mid-write leaves the previous checkpoint intact (and
a stale temporary directory, which orbax ignores). A checkpoint that fails to
restore, because its files are truncated or corrupted, is reported by path and
skipped in favour of the previous good one; it is left as it is until the run
writes that step again.

Orbax does not checksum array data (a flipped byte in a data file restores as a
wrong number without any error), so each checkpoint's metadata carries a
SHA-256 digest of the state and metadata, checked on restore.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required."""


DIGEST_KEY = "sha256"


def manager(directory: pathlib.Path, *, max_to_keep: int,
            create: bool = True) -> ocp.CheckpointManager:
    """A synchronous checkpoint manager keeping the newest `max_to_keep` steps.

    With `create=False` a missing `directory` is not created (it then has no
    steps): for readers, which must leave a run directory as they found it.
    """
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    """Saves the state pytree and a JSON dict of run metadata as checkpoint `step`.

    An existing checkpoint `step` was written by an earlier attempt of this run,
    killed before it moved past the step: when it holds the same state (same
    digest) it is kept as it is; otherwise (damaged, or a rerun on hardware
    that is not bit-reproducible) it is replaced, as orbax will not overwrite
    a step by itself. In a multi-process run every process calls this; orbax
    writes once.
    """
    # The digest covers the metadata exactly as it reads back from JSON.
    meta = json.loads(json.dumps(meta))
    meta[DIGEST_KEY] = digest(state, meta)
    if step in mngr.all_steps():
        if _saved_digest(mngr, step) == meta[DIGEST_KEY]:
            return
        log.warning("replacing checkpoint %s written by an earlier attempt",
                    pathlib.Path(mngr.directory) / str(step))
        mngr.delete(step)
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()


def _saved_digest(mngr: ocp.CheckpointManager, step: int) -> str | None:
    """The digest recorded in checkpoint `step`'s metadata (None if unreadable)."""
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"].get(DIGEST_KEY)
    except Exception:  # a damaged checkpoint is replaced, whatever orbax raises for it
        return None


def digest(state: Any, meta: dict) -> str:
    """SHA-256 of every leaf's dtype, shape and bytes (in tree order) and of `meta`."""
    sha = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(state)):
        array = np.ascontiguousarray(leaf)
        sha.update(f"{array.dtype.str}{array.shape}".encode())
        sha.update(array.tobytes())
    sha.update(json.dumps(meta, sort_keys=True).encode())
    return sha.hexdigest()


def restore(mngr: ocp.CheckpointManager, like: Any) -> tuple[Any, dict, int] | None:
    """Restores the newest checkpoint that reads back whole and matches its digest.

    Args:
      mngr: the manager of one checkpoint directory.
      like: a pytree with the structure, shapes, dtypes and shardings of the state.

    Returns:
      (state, meta, step) of the newest good checkpoint, or None when there is none.

    Raises:
      CheckpointError: when checkpoints exist but none can be read; it names each one.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    failures = []
    for step in sorted(mngr.all_steps(), reverse=True):
        path = pathlib.Path(mngr.directory) / str(step)
        try:
            state, meta = _restore_step(mngr, step, abstract)
        except Exception as err:  # orbax and tensorstore raise many types for damaged files
            _drop_closed_loop_reports()
            failures.append(f"{path}: {type(err).__name__}: {err}")
            log.warning("checkpoint %s cannot be read (%s: %s); trying an older one",
                        path, type(err).__name__, err)
            continue
        return state, meta, step
    if failures:
        raise CheckpointError(f"no readable checkpoint in {mngr.directory}:\n  "
                              + "\n  ".join(failures))
    return None


def _restore_step(mngr: ocp.CheckpointManager, step: int, abstract: Any) -> tuple[Any, dict]:
    """Checkpoint `step` as (state, meta), its digest checked and removed from meta."""
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    state, meta = restored["state"], dict(restored["meta"])
    expected = meta.pop(DIGEST_KEY, None)
    # Checkpoints written before digests were recorded are accepted as they read.
    if expected is not None and digest(state, meta) != expected:
        raise CheckpointError("the restored state does not match the SHA-256 digest recorded "
                              "when it was saved (corrupted data files)")
    return state, meta


def _drop_closed_loop_reports() -> None:
    """Silences the "Event loop is closed" reports that follow a failed restore.

    When one read of a damaged checkpoint fails, orbax closes its event loop while
    tensorstore completes the other reads; each of their callbacks then finds the
    loop closed and Python prints it as an unraisable exception: dozens of
    tracebacks that bury the warning naming the damaged checkpoint. Other
    unraisable exceptions still reach the previous hook. The reports arrive
    after the restore has returned, so the hook stays installed for the process
    (from the first failed restore on) rather than around the call.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_reports", False):
        return

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_reports = True
    sys.unraisablehook = hook


# Exported parameters: a small, self-checking file for shipping a trained model.

EXPORT_DTYPES = ("float32", "float16", "bfloat16")


def save_variables(path: pathlib.Path, variables: dict, *, dtype: str = "float16") -> dict:
    """Writes a model's ``{"params", "batch_stats"}`` as one msgpack file.

    The parameters are stored as `dtype` (half precision halves the file; the
    BatchNorm statistics stay float32: running variances can be too small for
    float16). The file is written next to `path` and renamed into place, so an
    interrupted export never leaves a truncated file under the final name.

    Returns:
      ``{"dtype": ..., "sha256": ..., "n_parameters": ...}``, to keep beside the
      file (`load_variables` checks the digest).
    """
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {EXPORT_DTYPES}, got {dtype!r}")
    import flax.serialization  # flax is the model's own dependency; only export needs it here
    host = jax.device_get({"params": variables["params"],
                           "batch_stats": variables.get("batch_stats", {})})
    stored = {"params": jax.tree.map(lambda a: np.asarray(a).astype(dtype), host["params"]),
              "batch_stats": jax.tree.map(np.asarray, host["batch_stats"])}
    data = flax.serialization.msgpack_serialize(stored)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return {"dtype": dtype, "sha256": hashlib.sha256(data).hexdigest(),
            "n_parameters": int(sum(np.size(a) for a in jax.tree.leaves(host["params"])))}


def load_variables(path: pathlib.Path, like: dict, *, sha256: str | None) -> dict:
    """Reads `save_variables`' file as arrays of `like`'s structure, shapes and dtypes.

    Args:
      path: the msgpack file.
      like: ``{"params", "batch_stats"}`` of the model to fill (arrays or shape structs).
      sha256: the digest recorded at export (None skips the check).

    Raises:
      CheckpointError: naming the file, when it is missing, damaged, or made for
        another model (a parameter missing, extra or of another shape).
    """
    import flax.serialization
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read exported parameters {path}: {err}") from err
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"{path} does not match the SHA-256 digest recorded at export "
                              "(damaged or replaced file)")
    try:
        stored = flax.serialization.msgpack_restore(data)
    except Exception as err:  # msgpack raises several types for a damaged file
        raise CheckpointError(f"{path} is not an exported parameter file ({err})") from err
    named = lambda tree: {jax.tree_util.keystr(k): v
                          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
    want, got = named(like), named(stored)
    extra = sorted(got.keys() - want.keys())
    if extra:
        raise CheckpointError(f"{path} holds parameters this model does not have: {extra[:5]}")
    leaves = []
    for name, ref in want.items():  # in `like`'s leaf order
        if name not in got:
            raise CheckpointError(f"{path} lacks parameter {name} of this model")
        value = np.asarray(got[name])
        if value.shape != tuple(ref.shape):
            raise CheckpointError(f"{path}: parameter {name} has shape {value.shape}, the "
                                  f"model's is {tuple(ref.shape)} (another model's file?)")
        leaves.append(value.astype(ref.dtype))
    return jax.tree.unflatten(jax.tree.structure(like), leaves)
