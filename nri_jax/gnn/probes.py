"""Frozen-embedding probes: how well a fixed embedding separates known classes.

`nearest_centroid_predict` classifies each node by the closest class mean of a
few labelled nodes (Euclidean distance): no training, so the accuracy measures
the embedding alone. Used on Deep Graph Infomax embeddings against an untrained
encoder of the same architecture (`infomax.py`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames="n_classes")
def nearest_centroid_predict(embeddings: jax.Array, labels: jax.Array, train_mask: jax.Array,
                             *, n_classes: int) -> jax.Array:
    """The class of the nearest training centroid for every node.

    Args:
      embeddings: [N, F].
      labels: int [N] (only the training nodes' are read).
      train_mask: bool [N], the labelled nodes.
      n_classes: C, static; a class without training nodes is never predicted.

    Returns:
      int32 [N] predicted classes.
    """
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1] \
            or train_mask.shape != embeddings.shape[:1]:
        raise ValueError(f"embeddings must be [N, F] with labels and train_mask [N], got "
                         f"{embeddings.shape}, {labels.shape}, {train_mask.shape}")
    weights = jax.nn.one_hot(labels, n_classes) * train_mask[:, None]  # [N, C]
    counts = jnp.sum(weights, axis=0)
    centroids = weights.T @ embeddings / jnp.maximum(counts, 1)[:, None]  # [C, F]
    distances = jnp.sum((embeddings[:, None, :] - centroids[None, :, :]) ** 2, axis=-1)
    distances = jnp.where(counts[None, :] > 0, distances, jnp.inf)
    return jnp.argmin(distances, axis=-1).astype(jnp.int32)


def masked_accuracy(predictions: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Share of the masked rows where predictions == labels: scalar."""
    hits = (predictions == labels) & mask
    return jnp.sum(hits) / jnp.maximum(jnp.sum(mask), 1)
