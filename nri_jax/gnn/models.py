"""Small models for node and graph classification, assembled from the package's layers.

    GATClassifier          GAT layers (ELU between them), the last one averaging its heads
    GraphClassifier        GCN layers -> a graph readout (sum / mean / max / gated) -> MLP
    DiffPoolClassifier     dense GCN -> DiffPool to C clusters -> dense GCN -> mean -> MLP

A GCN node classifier is `gcn.MultiLayerGCN(widths=(hidden..., n_classes))`.
Losses are per example (`cross_entropy`: one value per node or graph); which
rows count and how they are averaged is the caller's, in its loss function.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import optax

from nri_jax.gnn import diffpool, readout
from nri_jax.gnn.gat import GAT
from nri_jax.gnn.gcn import GCN
from nri_jax.gnn.graph_network import MLP, check_aggregation, check_widths

READOUTS = ("sum", "mean", "max", "gated")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy per row: logits [R, C], int labels [R] -> [R]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `values` [R] over the rows where `mask` [R] is True (0 when none is)."""
    return jnp.sum(jnp.where(mask, values, 0)) / jnp.maximum(jnp.sum(mask), 1)


class GATClassifier(nn.Module):
    """GAT layers: `hidden` widths with `num_heads` concatenated heads and ELU, then one
    layer of `n_classes` features whose heads are averaged (Velickovic et al.'s layout).

    Attributes:
      hidden: per-head width of each hidden layer (may be empty).
      n_classes: C, the output width.
      num_heads: heads of every layer.
    """

    hidden: Sequence[int]
    n_classes: int
    num_heads: int = 4

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> jax.Array:
        """graph with nodes [N, F] -> logits [N, n_classes]."""
        for i, width in enumerate(self.hidden):
            graph = GAT(width, self.num_heads, activation=nn.elu, name=f"gat_{i}")(graph)
        return GAT(self.n_classes, self.num_heads, concat=False, name="output")(graph).nodes


class GraphClassifier(nn.Module):
    """GCN layers (ReLU after each), a graph readout, and an MLP to class logits.

    Attributes:
      widths: the GCN layers' widths.
      n_classes: C.
      readout: "sum", "mean", "max" (`readout.pool_nodes`) or "gated"
        (`readout.GatedSumReadout` to widths[-1] features).
      padded: the batch ends with `jraph.pad_with_graphs` padding graphs.
    """

    widths: Sequence[int]
    n_classes: int
    readout: str = "mean"
    padded: bool = True

    def __post_init__(self):
        check_widths("widths", self.widths)
        check_aggregation("readout", self.readout, READOUTS)
        super().__post_init__()

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> jax.Array:
        """graph batch with nodes [sum N, F] -> logits [G, n_classes]."""
        for i, width in enumerate(self.widths):
            graph = GCN(width, activation=nn.relu, name=f"gcn_{i}")(graph)
        if self.readout == "gated":
            pooled = readout.GatedSumReadout(self.widths[-1], padded=self.padded,
                                             name="gated")(graph)
        else:
            pooled = readout.pool_nodes(graph.nodes, graph, reduce=self.readout,
                                        padded=self.padded)
        return MLP((self.widths[-1], self.n_classes), name="head")(pooled)


class DiffPoolLogits(NamedTuple):
    """Class logits [G, C] and DiffPool's per-graph auxiliary losses ([G] each)."""

    logits: jax.Array
    link_loss: jax.Array
    entropy_loss: jax.Array


class DiffPoolClassifier(nn.Module):
    """Dense GCN embedding, one DiffPool layer, a dense GCN on the clusters, mean, MLP.

    Attributes:
      widths: widths of the dense GCNs before and after pooling.
      clusters: C, DiffPool's clusters.
      n_classes: number of classes.
      max_nodes: N, static padded size of the dense graphs (`diffpool.to_dense`).
      padded: the batch ends with padding graphs.
    """

    widths: Sequence[int]
    clusters: int
    n_classes: int
    max_nodes: int
    padded: bool = True

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> DiffPoolLogits:
        """graph batch with nodes [sum N, F] -> DiffPoolLogits ([G, n_classes], [G], [G])."""
        dense = diffpool.to_dense(graph, max_nodes=self.max_nodes, padded=self.padded)
        x = nn.relu(diffpool.DenseGNN(self.widths, name="embed")(*dense))
        pooled = diffpool.DiffPool(self.clusters, self.widths, self.widths[:1],
                                   name="pool")(x, dense.adjacency, dense.mask)
        cluster_mask = jnp.ones(pooled.nodes.shape[:2], bool)
        x = nn.relu(diffpool.DenseGNN(self.widths, name="pooled_gnn")(
            nn.relu(pooled.nodes), pooled.adjacency, cluster_mask))
        logits = MLP((self.widths[-1], self.n_classes), name="head")(jnp.mean(x, axis=1))
        return DiffPoolLogits(logits, pooled.link_loss, pooled.entropy_loss)
