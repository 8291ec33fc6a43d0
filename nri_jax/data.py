"""Device-side data: splits as arrays, index batches, and the data-parallel mesh.

Datasets are small next to device memory (50k springs trajectories are about
200 MB in float32), so each split lives on the device(s) whole and a batch is
an index gather inside the jitted step: no host round trip per step. The batch
axis of every gathered batch is sharded over the `data` axis of the mesh;
parameters and optimiser state are replicated, so XLA inserts the gradient
all-reduce and BatchNorm statistics are taken over the global batch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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
    """A one-axis mesh named `data` over the first `n_devices` devices (all by default)."""
    devices = jax.devices()
    if n_devices is None:
        n_devices = len(devices)
    if not 0 < n_devices <= len(devices):
        raise ValueError(f"n_devices must be in [1, {len(devices)}] (visible devices), "
                         f"got {n_devices}")
    return Mesh(np.asarray(devices[:n_devices]), (DATA_AXIS,))


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


def put_split(split: Split, mesh: Mesh) -> Split:
    """Places a split on every device of the mesh (replicated)."""
    return Split(*(jax.device_put(np.asarray(a), replicated(mesh)) for a in split))


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
    """The batch `split[indices]`, batch axis sharded over the mesh when given."""
    batch = Split(jnp.take(split.features, indices, axis=0),
                  jnp.take(split.labels, indices, axis=0))
    if mesh is None:
        return batch
    return jax.lax.with_sharding_constraint(batch, batch_sharded(mesh))
