"""Per-example evaluation metrics: edge accuracy and confusion, prediction MSE.

Edge types are learned without supervision, so the encoder's labelling of the
types can come out permuted (e.g. "0 = spring" instead of "1 = spring").
`edge_accuracy` compares argmax with the labels directly (the reference's
number); `best_permutation_accuracy` relabels the predicted types with the one
permutation that is best over a whole dataset, chosen from the summed confusion
matrix (never per example, which would inflate the accuracy).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

_MAX_BRUTE_FORCE_TYPES = 8


def edge_types(logits_or_types: jax.Array) -> jax.Array:
    """[B, E, K] logits or probabilities -> argmax [B, E]; integer [B, E] types pass through."""
    if jnp.issubdtype(logits_or_types.dtype, jnp.integer):
        if logits_or_types.ndim != 2:
            raise ValueError(f"edge types must be [B, E], got shape {logits_or_types.shape}")
        return logits_or_types
    if logits_or_types.ndim != 3:
        raise ValueError(f"logits must be [B, E, K], got shape {logits_or_types.shape}")
    return jnp.argmax(logits_or_types, axis=-1)


def edge_confusion(logits_or_types: jax.Array, labels: jax.Array, *, n_types: int) -> jax.Array:
    """Per-example confusion counts of (label, predicted type).

    Args:
      logits_or_types: [B, E, K] logits (argmax taken) or [B, E] integer types.
      labels: [B, E] integer labels in [0, K).
      n_types: K.

    Returns:
      [B, K, K] float32 counts, entry [b, l, p] = #edges of example b with label l
      predicted as p (floats, so that weighted sums over examples are matmuls).
    """
    predicted = edge_types(logits_or_types)
    if labels.shape != predicted.shape:
        raise ValueError(f"labels must be [B, E] = {predicted.shape}, got shape {labels.shape}")
    one_hot_labels = jax.nn.one_hot(labels, n_types, dtype=jnp.float32)
    one_hot_predicted = jax.nn.one_hot(predicted, n_types, dtype=jnp.float32)
    return jnp.einsum("bel,bep->blp", one_hot_labels, one_hot_predicted)


def edge_accuracy(logits_or_types: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of edges whose predicted type (argmax) equals the label, per example: [B]."""
    predicted = edge_types(logits_or_types)
    if labels.shape != predicted.shape:
        raise ValueError(f"labels must be [B, E] = {predicted.shape}, got shape {labels.shape}")
    return jnp.mean((predicted == labels).astype(jnp.float32), axis=-1)


def best_permutation_accuracy(confusion) -> tuple[float, tuple[int, ...]]:
    """Accuracy under the best relabelling of predicted edge types (host NumPy).

    Args:
      confusion: [K, K] counts (label, predicted) summed over a whole dataset.

    Returns:
      `(accuracy, permutation)`: predicted type p is read as label permutation[p];
      accuracy = sum_p confusion[permutation[p], p] / total. All K! permutations
      for K <= 8, the Hungarian algorithm (scipy) beyond.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    k = confusion.shape[0]
    if confusion.shape != (k, k) or k < 1:
        raise ValueError(f"confusion must be a square [K, K] matrix, got shape {confusion.shape}")
    total = confusion.sum()
    if not total > 0:
        raise ValueError(f"confusion must contain counts (total > 0), got total {total}")
    if k <= _MAX_BRUTE_FORCE_TYPES:
        columns = np.arange(k)
        best = max(itertools.permutations(range(k)),
                   key=lambda perm: confusion[list(perm), columns].sum())
    else:
        from scipy.optimize import linear_sum_assignment  # only for K > 8
        rows, cols = linear_sum_assignment(-confusion)
        best = tuple(int(r) for _, r in sorted(zip(cols, rows)))
    return float(confusion[list(best), np.arange(k)].sum() / total), tuple(int(p) for p in best)


def mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean squared error over all non-batch axes, per example: [B]."""
    if predictions.shape != targets.shape or predictions.ndim < 2:
        raise ValueError(f"predictions and targets must have the same shape [B, ...], got "
                         f"{predictions.shape} and {targets.shape}")
    return jnp.mean(jnp.square(predictions - targets), axis=tuple(range(1, predictions.ndim)))


def mse_by_horizon(predictions: jax.Array, targets: jax.Array, *,
                   prediction_steps: int) -> jax.Array:
    """MSE at each horizon h = 1..P of a decoder fed ground truth every P frames.

    Prediction t (of frame t+1) is h = t mod P + 1 steps past its last
    ground-truth input (`decoders.MLPDecoder` with ``Teaching(period=P)``).

    Args:
      predictions, targets: [B, N, T', D] with T' >= P.
      prediction_steps: P.

    Returns:
      [B, P]: per horizon, the mean over N, D and all blocks that reach it.
    """
    if predictions.shape != targets.shape or predictions.ndim != 4:
        raise ValueError(f"predictions and targets must both be [B, N, T', D], got "
                         f"{predictions.shape} and {targets.shape}")
    n_steps = predictions.shape[2]
    if not 1 <= prediction_steps <= n_steps:
        raise ValueError(f"prediction_steps must be in [1, T'={n_steps}], got {prediction_steps}")
    per_step = jnp.mean(jnp.square(predictions - targets), axis=(1, 3))  # [B, T']
    # Averaging matrix [T', P]: column h averages the steps at horizon h + 1.
    horizon = np.arange(n_steps) % prediction_steps
    select = (horizon[:, None] == np.arange(prediction_steps)[None, :]).astype(np.float32)
    return per_step @ jnp.asarray(select / select.sum(axis=0), per_step.dtype)
