"""Graph autoencoder for link prediction (Kipf & Welling 2016), and ranking metrics.

    Z = GCN(A_train, X)                       node embeddings [N, D]
    logit(i, j) = z_i . z_j                   inner-product decoder
    loss = BCE over the training edges (label 1) and sampled pairs (label 0)

The encoder sees only the training edges (`datasets.split_edges`); the held-out
edges and as many non-edges are ranked by their logits. Negatives for training
are uniform random pairs (`uniform_pairs`); a few of them are edges, as in the
original, which only adds noise of order the graph's density.

Metrics, over positive and negative scores:

    AUC = P(s+ > s-) + P(s+ = s-) / 2   (rank form: (R+ - P(P+1)/2) / (P Q), R+ the
                                         sum of the positives' average ranks)
    AP  = mean over positives i of precision at threshold s_i
        = sum over distinct thresholds t of (recall(t) - recall(t_prev)) precision(t)

with ties treated as one threshold (as scikit-learn does). `degree_scores`
(deg_u * deg_v in the training graph, preferential attachment) is the
structure-only baseline an embedding should beat.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import optax

from nri_jax.gnn import padding
from nri_jax.gnn.gcn import MultiLayerGCN


class GraphAutoencoder(nn.Module):
    """A GCN encoder (ReLU between layers, linear last layer); decode with `pair_logits`.

    Attributes:
      widths: GCN widths; D = widths[-1] is the embedding width.
    """

    widths: Sequence[int] = (32, 16)

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> jax.Array:
        """graph (training edges, both directions) with nodes [N, F] -> Z [N, D]."""
        return MultiLayerGCN(self.widths, name="encoder")(graph).nodes


def _check_pairs(name: str, pairs: jax.Array) -> None:
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"{name} must be [M, 2] node pairs, got shape {pairs.shape}")


def pair_logits(embeddings: jax.Array, pairs: jax.Array) -> jax.Array:
    """Inner-product decoder: embeddings [N, D], pairs int [M, 2] -> logits [M]."""
    _check_pairs("pairs", pairs)
    return jnp.sum(embeddings[pairs[:, 0]] * embeddings[pairs[:, 1]], axis=-1)


def uniform_pairs(key: jax.Array, n_nodes: int, count: int) -> jax.Array:
    """`count` random pairs of distinct nodes (may repeat, may be edges): int32 [count, 2]."""
    first_key, shift_key = jax.random.split(key)
    first = jax.random.randint(first_key, (count,), 0, n_nodes)
    # second = first + a nonzero shift (mod N): uniform over the other N - 1 nodes.
    second = (first + jax.random.randint(shift_key, (count,), 1, n_nodes)) % n_nodes
    return jnp.stack([first, second], axis=1).astype(jnp.int32)


def link_losses(positive_logits: jax.Array, negative_logits: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
    """Binary cross-entropy per pair: (-log sigmoid(s+) [P], -log(1 - sigmoid(s-)) [Q])."""
    return (optax.sigmoid_binary_cross_entropy(positive_logits, jnp.ones_like(positive_logits)),
            optax.sigmoid_binary_cross_entropy(negative_logits, jnp.zeros_like(negative_logits)))


def degree_scores(graph: jraph.GraphsTuple, pairs: jax.Array) -> jax.Array:
    """Preferential attachment deg_u * deg_v, degrees counted in `graph` (each edge in both
    directions, so in-degree = degree): pairs int [M, 2] -> [M] float32."""
    _check_pairs("pairs", pairs)
    degree = jraph.segment_sum(jnp.ones(padding.n_edges(graph), jnp.float32),
                               jnp.asarray(graph.receivers), padding.n_nodes(graph))
    return degree[pairs[:, 0]] * degree[pairs[:, 1]]


def _check_scores(positive: jax.Array, negative: jax.Array) -> None:
    if positive.ndim != 1 or negative.ndim != 1 or not positive.size or not negative.size:
        raise ValueError(f"positive and negative scores must be non-empty [P] and [Q], got "
                         f"shapes {positive.shape}, {negative.shape}")


@jax.jit
def roc_auc(positive: jax.Array, negative: jax.Array) -> jax.Array:
    """Area under the ROC curve from the rank sum (ties: average ranks).

    Args:
      positive: [P] scores of the positives.
      negative: [Q] scores of the negatives.

    Returns:
      Scalar AUC = P(s+ > s-) + P(s+ = s-) / 2 over all P * Q pairs.
    """
    _check_scores(positive, negative)
    ordered = jnp.sort(jnp.concatenate([positive, negative]))
    below = jnp.searchsorted(ordered, positive, side="left")
    up_to = jnp.searchsorted(ordered, positive, side="right")
    dtype = jnp.promote_types(positive.dtype, jnp.float32)
    ranks = (below + up_to + 1).astype(dtype) / 2  # 1-based average rank among tied scores
    p, q = positive.shape[0], negative.shape[0]
    return (jnp.sum(ranks) - p * (p + 1) / 2) / (p * q)


@jax.jit
def average_precision(positive: jax.Array, negative: jax.Array) -> jax.Array:
    """Average precision: the mean over positives of the precision at their score.

    Args:
      positive: [P] scores of the positives.
      negative: [Q] scores of the negatives.

    Returns:
      Scalar AP; all pairs scoring >= a threshold count as predicted positive.
    """
    _check_scores(positive, negative)
    every = jnp.sort(jnp.concatenate([positive, negative]))
    positives = jnp.sort(positive)
    selected = every.shape[0] - jnp.searchsorted(every, positive, side="left")
    true = positives.shape[0] - jnp.searchsorted(positives, positive, side="left")
    dtype = jnp.promote_types(positive.dtype, jnp.float32)
    return jnp.mean(true.astype(dtype) / selected.astype(dtype))
