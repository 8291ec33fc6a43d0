"""Multi-process plumbing: joining a run, process 0's files, failing together.

In a multi-process run (`jax.distributed`) every process runs the same program;
process 0 alone writes files and logs, the others wait for it at named points
(`sync`), and an error on any process is raised on all of them instead of
leaving the others waiting in the next collective. With one process each of
these is the obvious single-process action.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from simulators import datasets


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Joins a multi-process run through `jax.distributed`; call before any other JAX use.

    Arguments left None are taken from the environment: JAX_COORDINATOR_ADDRESS,
    or the cluster JAX detects (SLURM, Open MPI, TPU pods, Kubernetes).

    Raises:
      ValueError: for a process count below 1 or a process id outside it.
    """
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is None:
        raise ValueError(f"process_id={process_id} needs num_processes")
    if process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    # CPU processes exchange gradients over TCP (gloo); GPU and TPU use their own links.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_main_process() -> bool:
    """Whether this process writes files and logs (process 0 of a multi-process run)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process reaches this point (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def write_text(path: pathlib.Path, text: str) -> None:
    """Writes a file atomically (a reader or a killed run never leaves half of it),
    from process 0 only."""
    if not is_main_process():
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: pathlib.Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def raise_on_every_process(error: Exception | None, what: str) -> None:
    """Raises `error`; in a multi-process run every process raises when any one
    failed, instead of the others waiting for it in the next collective."""
    if jax.process_count() > 1:
        failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
        if error is None and failed.any():
            error = RuntimeError(f"{what} failed on process(es) "
                                 f"{np.flatnonzero(failed).tolist()}; see their output")
    if error is not None:
        raise error


def open_shared(path: pathlib.Path):
    """`open_dataset`; with several processes only process 0 streams the training
    split for the normalisation extremes and sends them to the others, so that
    they read nothing but their own rows."""
    opened = datasets.open_dataset(path) if is_main_process() else None
    if jax.process_count() == 1:
        return opened
    stats = opened.stats if opened is not None else None
    # float64 travels as uint32 words: the values arrive bit for bit (NaN: none).
    words = np.asarray(stats if stats is not None else [np.nan] * 4, np.float64).view(np.uint32)
    values = np.asarray(multihost_utils.broadcast_one_to_all(words)).view(np.float64)
    stats = None if np.isnan(values).any() else datasets.NormStats(*map(float, values))
    return opened if opened is not None else datasets.open_dataset(path, stats=stats)
