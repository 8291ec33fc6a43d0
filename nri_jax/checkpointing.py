"""Checkpoints of the train state with orbax: the latest epochs and the best one.

Orbax writes each checkpoint into a temporary directory and renames it into
place when complete, so a run killed mid-write leaves the previous checkpoint
intact. A checkpoint that still fails to restore (truncated or corrupted files)
is reported by path and skipped in favour of the previous good one; nothing is
deleted on the way.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required."""


def manager(directory: pathlib.Path, *, max_to_keep: int) -> ocp.CheckpointManager:
    """A synchronous checkpoint manager keeping the newest `max_to_keep` steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    """Saves the state pytree and a JSON dict of run metadata as checkpoint `step`.

    In a multi-process run every process calls this; orbax writes once.
    """
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, like: Any) -> tuple[Any, dict, int] | None:
    """Restores the newest checkpoint that reads back whole.

    Args:
      mngr: the manager of one checkpoint directory.
      like: a pytree with the structure, shapes, dtypes and shardings of the state.

    Returns:
      (state, meta, step) of the newest good checkpoint, or None when there is none.

    Raises:
      CheckpointError: when checkpoints exist but none can be read.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    steps = sorted(mngr.all_steps(), reverse=True)
    failures = []
    for step in steps:
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except Exception as err:  # orbax raises many types for damaged files
            path = pathlib.Path(mngr.directory) / str(step)
            failures.append(f"{path}: {type(err).__name__}: {err}")
            log.warning("checkpoint %s cannot be read (%s); trying an older one", path, err)
            continue
        return restored["state"], dict(restored["meta"]), step
    if failures:
        raise CheckpointError("no readable checkpoint:\n  " + "\n  ".join(failures))
    return None
