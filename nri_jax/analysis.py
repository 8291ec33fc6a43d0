"""Numbers the notebooks look at: energy of a springs trajectory, per-edge confidence.

Pure functions of host or device arrays, all jittable (keyword settings static).
Edge order is the library's: row-major off-diagonal entries of the [N, N]
matrix, receiver = row. Edge types learned without supervision may come out
permuted; functions that compare predictions with labels take the
`permutation` that `metrics.best_permutation_accuracy` chose (predicted type p
is read as label `permutation[p]`), or compare argmax with labels directly when
it is None, as the plain `edge_accuracy` does.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from simulators import springs

Array = jax.Array


class Energy(NamedTuple):
    """Mechanical energy of a trajectory, per frame.

    Attributes:
      kinetic: [T] sum_i |v_i|^2 / 2 (unit masses).
      potential: [T] sum_{i<j} k_ij |x_i - x_j|^2 / 2.
    """

    kinetic: Array
    potential: Array

    @property
    def total(self) -> Array:
        return self.kinetic + self.potential


def springs_energy(position: Array, velocity: Array, edges: Array, *,
                   spring_constants: Sequence[float] = springs.DEFAULT_SPRING_CONSTANTS
                   ) -> Energy:
    """Kinetic and spring potential energy of one springs trajectory.

    Conserved up to O(dt) by the semi-implicit Euler integrator while no wall is
    hit and no force is clipped; a wall reflection keeps the speed but moves a
    particle by up to 2 |v| dt, which changes the potential slightly.

    Args:
      position: [T, N, 2] positions in physical units (not normalised).
      velocity: [T, N, 2] velocities in physical units.
      edges: [N, N] integer edge types indexing `spring_constants`.
      spring_constants: K spring constants, one per edge type.

    Returns:
      `Energy` of [T] arrays.
    """
    position, velocity, edges = jnp.asarray(position), jnp.asarray(velocity), jnp.asarray(edges)
    if position.ndim != 3 or position.shape[-1] != 2:
        raise ValueError(f"position must be [T, N, 2], got shape {position.shape}")
    n_frames, n_objects, _ = position.shape
    if velocity.shape != position.shape:
        raise ValueError(f"velocity must be [T, N, 2] = {position.shape}, got {velocity.shape}")
    if edges.shape != (n_objects, n_objects):
        raise ValueError(f"edges must be [N, N] = {(n_objects, n_objects)}, got {edges.shape}")
    kinetic = 0.5 * jnp.sum(jnp.square(velocity), axis=(1, 2))
    stiffness = springs.stiffness(edges, tuple(spring_constants), position.dtype)
    # The simulator's energy takes the batch last: frames become its batch axis.
    potential = springs.potential_energy(
        jnp.transpose(position, (1, 2, 0)),
        jnp.broadcast_to(stiffness[:, :, None], (n_objects, n_objects, n_frames)))
    return Energy(kinetic, potential)


def _check_probs(probs: Array, labels: Array) -> None:
    if probs.ndim != 3:
        raise ValueError(f"probs must be [B, E, K], got shape {probs.shape}")
    if labels.shape != probs.shape[:2]:
        raise ValueError(f"labels must be [B, E] = {probs.shape[:2]}, got shape {labels.shape}")


def predicted_labels(probs: Array, *, permutation: Sequence[int] | None = None) -> Array:
    """Argmax edge types read as labels: [B, E, K] -> [B, E] int32.

    Args:
      probs: [B, E, K] edge-type probabilities (or logits).
      permutation: K labels; predicted type p means label permutation[p]. None
        keeps the types as they are.
    """
    types = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    if permutation is None:
        return types
    _check_permutation(permutation, probs.shape[-1])
    return jnp.asarray(permutation, jnp.int32)[types]


def probabilities_as_labels(probs: Array, *, permutation: Sequence[int] | None = None) -> Array:
    """Edge-type probabilities reordered into label order: [B, E, K] -> [B, E, K].

    Entry [..., l] is the probability of the type read as label l, so that
    column 0 is "no interaction" for springs even when the encoder learned the
    types the other way round. Its argmax is `predicted_labels`.

    Args:
      probs: [B, E, K] edge-type probabilities.
      permutation: K labels; predicted type p means label permutation[p]. None
        returns `probs` unchanged.
    """
    if permutation is None:
        return probs
    _check_permutation(permutation, probs.shape[-1])
    # q_label[permutation[p]] = q_type[p], i.e. q_label = q_type[inverse permutation].
    inverse = [list(permutation).index(label) for label in range(len(permutation))]
    return jnp.take(jnp.asarray(probs), jnp.asarray(inverse), axis=-1)


def _check_permutation(permutation: Sequence[int], n_types: int) -> None:
    if sorted(permutation) != list(range(n_types)):
        raise ValueError(f"permutation must reorder 0..{n_types - 1}, got {tuple(permutation)}")


class Calibration(NamedTuple):
    """Edge accuracy as a function of the encoder's confidence.

    Attributes:
      bin_edges: [n_bins + 1] confidence bounds, from 1/K to 1.
      count: [n_bins] edges whose confidence falls in each bin.
      confidence: [n_bins] mean confidence in each bin (NaN where empty).
      accuracy: [n_bins] fraction of correct edges in each bin (NaN where empty).
    """

    bin_edges: Array
    count: Array
    confidence: Array
    accuracy: Array


def accuracy_by_confidence(probs: Array, labels: Array, *, n_bins: int = 5,
                           permutation: Sequence[int] | None = None) -> Calibration:
    """Bins every edge by its confidence max_k q(z = k) and scores each bin.

    The confidence of K types lies in [1/K, 1]; that range is cut into `n_bins`
    equal bins, the last one closed (confidence 1 counts).

    Args:
      probs: [B, E, K] edge-type probabilities.
      labels: [B, E] integer labels.
      n_bins: number of bins.
      permutation: relabelling of predicted types (see the module docstring).

    Returns:
      `Calibration` over all B * E edges.
    """
    _check_probs(probs, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    lowest = 1.0 / probs.shape[-1]
    confidence = jnp.max(probs, axis=-1).ravel()
    correct = (predicted_labels(probs, permutation=permutation) == labels).ravel()
    position = (confidence - lowest) / (1.0 - lowest) * n_bins
    bins = jnp.clip(jnp.floor(position), 0, n_bins - 1).astype(jnp.int32)  # [B * E]
    # Sums per bin, not a product with a one-hot matrix: a GPU's TF32 products
    # would round the confidences to ~1e-3.
    total = lambda values: jax.ops.segment_sum(values, bins, num_segments=n_bins)
    count = total(jnp.ones_like(confidence))
    # Empty bins have no mean: NaN marks them (matplotlib leaves them out).
    mean = lambda values: jnp.where(count > 0, total(values) / jnp.maximum(count, 1), jnp.nan)
    return Calibration(jnp.linspace(lowest, 1.0, n_bins + 1, dtype=confidence.dtype),
                       count.astype(jnp.int32), mean(confidence),
                       mean(correct.astype(confidence.dtype)))


class EdgeList(NamedTuple):
    """Selected edges of a batch, one entry per edge.

    Attributes:
      example: [M] index b of the example.
      edge: [M] edge index e (row-major off-diagonal order).
      receiver: [M] receiving object i (the row).
      sender: [M] sending object j (the column).
      confidence: [M] max_k q(z = k) of the edge.
      predicted: [M] predicted label (after `permutation`).
      label: [M] true label.
    """

    example: Array
    edge: Array
    receiver: Array
    sender: Array
    confidence: Array
    predicted: Array
    label: Array


def least_confident_edges(probs: Array, labels: Array, *, n_edges: int = 10,
                          permutation: Sequence[int] | None = None) -> EdgeList:
    """The `n_edges` edges of a batch where the encoder is least sure, least sure first.

    Args:
      probs: [B, E, K] edge-type probabilities.
      labels: [B, E] integer labels.
      n_edges: M <= B * E, how many edges to return.
      permutation: relabelling of predicted types (see the module docstring).

    Returns:
      `EdgeList` of [M] arrays sorted by increasing confidence.
    """
    _check_probs(probs, labels)
    n_total = probs.shape[0] * probs.shape[1]
    if not 1 <= n_edges <= n_total:
        raise ValueError(f"n_edges must be in [1, B * E = {n_total}], got {n_edges}")
    confidence = jnp.max(probs, axis=-1).ravel()
    _, flat = jax.lax.top_k(-confidence, n_edges)
    example, edge = jnp.divmod(flat, probs.shape[1])
    receiver, sender = _edge_endpoints(edge, probs.shape[1])
    predicted = predicted_labels(probs, permutation=permutation).ravel()
    return EdgeList(example, edge, receiver, sender, confidence[flat], predicted[flat],
                    labels.ravel()[flat].astype(jnp.int32))


def _edge_endpoints(edge: Array, n_edges: int) -> tuple[Array, Array]:
    """Receiver i and sender j of edge indices in the row-major off-diagonal order."""
    n_objects = int(round((1 + (1 + 4 * n_edges) ** 0.5) / 2))
    if n_objects * (n_objects - 1) != n_edges:
        raise ValueError(f"E = {n_edges} is not N(N-1) for any N")
    # Row i holds the N - 1 senders j != i in increasing order: the diagonal is skipped.
    receiver, column = jnp.divmod(edge, n_objects - 1)
    return receiver, column + (column >= receiver)
