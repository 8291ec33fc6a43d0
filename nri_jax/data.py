"""Device-side data: splits as sharded arrays, index batches, and the data-parallel mesh.

Datasets are small next to device memory (50k springs trajectories are about
200 MB in float32), so each split lives on the devices whole and a batch is an
index gather inside the jitted step: no host round trip per step. The examples
of a split are sharded over the `data` axis of the mesh (each device holds
1/n of them, and each process reads only the rows its devices hold), and so is
the batch axis of every gathered batch; parameters and optimiser state are
replicated, so XLA inserts the gradient all-reduce and BatchNorm statistics are
taken over the global batch.

A batch is the same global set of examples whatever the number of devices, so
results depend on the device count only through floating-point rounding.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


class Split(NamedTuple):
    """One split of a dataset in model layout.

    Attributes:
      features: [S, N, T, D] float trajectories.
      labels: [S, E] int edge-type labels, row-major off-diagonal, receiver = row.
    """

    features: jax.Array
    labels: jax.Array


def make_mesh(n_devices: int | None = None) -> Mesh:
    """A one-axis mesh named `data` over the first `n_devices` devices (all by default).

    In a multi-process run (`jax.distributed`) the mesh spans every process's
    devices, so `n_devices` must be None or all of them.
    """
    devices = jax.devices()
    if n_devices is None:
        n_devices = len(devices)
    if not 0 < n_devices <= len(devices):
        raise ValueError(f"n_devices must be in [1, {len(devices)}] (visible devices), "
                         f"got {n_devices}")
    if jax.process_count() > 1 and n_devices != len(devices):
        raise ValueError(f"n_devices={n_devices}: a run of {jax.process_count()} processes "
                         f"uses all {len(devices)} devices; leave n_devices unset")
    # Auto axes: XLA propagates the batch sharding through the model (GSPMD).
    return jax.make_mesh((n_devices,), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                         devices=devices[:n_devices])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, n_examples: int | None, mesh: Mesh, name: str) -> None:
    """Fails early when a batch cannot be split evenly or is larger than the data.

    Args:
      batch_size: the global batch size.
      n_examples: the size of the split batches are drawn from without padding
        (None where the last batch is padded, as in evaluation).
      mesh: the device mesh the batch is sharded over.
      name: the setting's name, for the error message.
    """
    n = mesh.devices.size
    if batch_size % n:
        ok = [b for b in (batch_size - batch_size % n, batch_size + n - batch_size % n) if b > 0]
        raise ValueError(f"{name}={batch_size} does not divide over {n} devices; "
                         f"use a multiple of {n}, e.g. {ok}")
    if n_examples is not None and batch_size > n_examples:
        raise ValueError(f"{name}={batch_size} is larger than the split ({n_examples} "
                         f"examples)")


def put_split(features: Any, labels: Any, mesh: Mesh) -> Split:
    """Shards a split's examples over the mesh, reading only the rows this process holds.

    Args:
      features: [S, N, T, D] and labels: [S, E], NumPy arrays or anything with
        `.shape` that NumPy can slice along the first axis (such as the lazy
        rows of `simulators.datasets.open_dataset`).
      mesh: the device mesh.

    Returns:
      The split as global arrays sharded along S, which is padded with zero
      rows to a multiple of the device count (batch indices never reach them).
    """
    n_devices = mesh.devices.size
    return Split(*(_put_rows(rows, n_devices, batch_sharded(mesh)) for rows in (features, labels)))


def _put_rows(rows: Any, n_devices: int, sharding: NamedSharding) -> jax.Array:
    n = rows.shape[0]
    shape = (-(-n // n_devices) * n_devices,) + tuple(rows.shape[1:])

    def shard(index: tuple[slice, ...]) -> np.ndarray:
        start, stop, _ = index[0].indices(shape[0])
        block = np.asarray(rows[start:min(stop, n)])
        padding = np.zeros((stop - start - len(block),) + shape[1:], block.dtype)
        return np.concatenate([block, padding])

    return jax.make_array_from_callback(shape, sharding, shard)


def shuffled_batches(key: jax.Array, n_examples: int, batch_size: int) -> jax.Array:
    """Indices of one shuffled epoch, [n_batches, batch_size]; the remainder is dropped.

    Dropping the (at most batch_size - 1) leftover examples keeps every step the
    same shape, so the step compiles once; they are seen in other epochs.
    """
    n_batches = n_examples // batch_size
    perm = jax.random.permutation(key, n_examples)
    return perm[: n_batches * batch_size].reshape(n_batches, batch_size)


def ordered_batches(n_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights covering every example once, for evaluation.

    The last batch is padded with index 0 and weight 0, so every batch has the
    same shape and padded rows drop out of the weighted sums.

    Returns:
      indices: [n_batches, batch_size] int32.
      weights: [n_batches, batch_size] float32, 1 for real examples, 0 for padding.
    """
    n_batches = -(-n_examples // batch_size)
    flat = np.arange(n_batches * batch_size)
    weights = (flat < n_examples).astype(np.float32)
    indices = np.where(flat < n_examples, flat, 0).astype(np.int32)
    return indices.reshape(n_batches, -1), weights.reshape(n_batches, -1)


def gather(split: Split, indices: jax.Array, mesh: Mesh | None = None) -> Split:
    """The batch `split[indices]` [B, ...]; with a mesh, gathered from sharded examples.

    With a mesh, every device looks up the indices that fall in its own block of
    examples (zeros elsewhere) and a reduce-scatter sums the blocks and hands
    each device its B/n rows of the batch. That moves one batch over the
    interconnect instead of all-gathering the split; the sum is exact because
    each row comes from exactly one device and zeros from the others (only a
    -0.0 comes out as +0.0).

    Args:
      split: [S, ...] arrays, S sharded over the mesh's `data` axis.
      indices: [B] int indices into S, the same on every device; B must be a
        multiple of the device count.
      mesh: the device mesh, or None for a plain gather.
    """
    if mesh is None:
        return Split(*(jnp.take(a, indices, axis=0) for a in split))

    def local(block: Split, indices: jax.Array) -> Split:
        rows = block.features.shape[0]
        local_indices = indices - jax.lax.axis_index(DATA_AXIS) * rows
        mine = (local_indices >= 0) & (local_indices < rows)
        safe = jnp.clip(local_indices, 0, rows - 1)

        def pick(a):
            picked = jnp.take(a, safe, axis=0)
            return jnp.where(mine.reshape((-1,) + (1,) * (a.ndim - 1)), picked,
                             jnp.zeros((), a.dtype))

        return Split(*(jax.lax.psum_scatter(pick(a), DATA_AXIS, scatter_dimension=0, tiled=True)
                       for a in block))

    return jax.shard_map(local, mesh=mesh, in_specs=(P(DATA_AXIS), P()),
                         out_specs=P(DATA_AXIS))(split, indices)
