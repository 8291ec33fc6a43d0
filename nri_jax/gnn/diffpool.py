"""DiffPool (Ying et al. 2018): learned soft clustering of dense graphs.

On dense per-graph tensors (graphs of different sizes padded to N nodes, with a
node mask), an assignment GNN gives each node a distribution over C clusters and
an embedding GNN gives new node features:

    S  = softmax(GNN_pool(A, X))   [B, N, C]  (rows of padding nodes 0)
    Z  = GNN_embed(A, X)           [B, N, F']
    X' = S^T Z                     [B, C, F']
    A' = S^T A S                   [B, C, C]

with two auxiliary losses per graph: link prediction ||A - S S^T||_F over the
real nodes, and the mean entropy of S's rows over the real nodes. Losses are
per graph ([B]); weighting and averaging them is the train step's business.

The GNNs are stacks of `DenseGCN` layers: H' = P H W + b with P the
row-normalised adjacency with self-loops, (A + I) / (1 + in-degree), i.e. each
node averages itself and its in-neighbours. Row (random-walk) normalisation
rather than GCN's symmetric one, because the adjacency here is directed
(receiver row, sender column, as in `nri_jax.graphs`) and, after one pooling
step, weighted.

`to_dense` turns a batched, padded `jraph.GraphsTuple` into (X, A, mask).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from nri_jax.gnn import padding
from nri_jax.gnn.graph_network import check_graph_features, check_widths


class DenseGraphs(NamedTuple):
    """A batch of graphs as dense tensors, padded to N nodes.

    Attributes:
      nodes: [B, N, F] node features, 0 at padding positions.
      adjacency: [B, N, N], adjacency[b, i, j] = weight of the edges j -> i
        (receiver row, sender column), 0 at padding positions.
      mask: [B, N] bool, True for real nodes.
    """

    nodes: jax.Array
    adjacency: jax.Array
    mask: jax.Array


class DiffPoolOutput(NamedTuple):
    """DiffPool's pooled graph and auxiliary losses.

    Attributes:
      nodes: X' [B, C, F'].
      adjacency: A' [B, C, C].
      assignment: S [B, N, C], rows of padding nodes 0.
      link_loss: [B], ||A - S S^T||_F over each graph's real nodes.
      entropy_loss: [B], mean over each graph's real nodes of the entropy of
        its row of S (0 for a graph without real nodes).
    """

    nodes: jax.Array
    adjacency: jax.Array
    assignment: jax.Array
    link_loss: jax.Array
    entropy_loss: jax.Array


def _check_max_nodes(graph: jraph.GraphsTuple, max_nodes: int, padded: bool) -> None:
    """Raises ValueError unless max_nodes is a positive int that holds every real
    graph (checked only when `n_node` is concrete, i.e. outside `jit`)."""
    if not isinstance(max_nodes, (int, np.integer)) or max_nodes < 1:
        raise ValueError(f"max_nodes must be a positive int, got {max_nodes!r}")
    real_graphs = padding.graph_mask(graph, padded=padded)
    if isinstance(graph.n_node, jax.core.Tracer) or isinstance(real_graphs, jax.core.Tracer):
        return
    largest = int(np.max(np.where(np.asarray(real_graphs), np.asarray(graph.n_node), 0),
                         initial=0))
    if largest > max_nodes:
        raise ValueError(f"max_nodes must be at least the largest graph's {largest} "
                         f"nodes, got {max_nodes}")


def to_dense(graph: jraph.GraphsTuple, *, max_nodes: int, padded: bool = True,
             edge_weights: jax.Array | None = None) -> DenseGraphs:
    """Batched GraphsTuple -> dense (X, A, mask), one row of B per graph.

    Every graph of the tuple gets a row, padding graphs included (with an all
    False mask), so B = G is static. Duplicate edges add up in A.

    Args:
      graph: nodes [sum N, F]; node i of graph g is row i - (nodes before g).
      max_nodes: N, static; no real graph may have more nodes. Checked when
        `n_node` is concrete; under `jit`, nodes beyond N are dropped.
      padded: the last graphs are `jraph.pad_with_graphs` padding (masked out).
      edge_weights: optional [sum E] weights of the edges (default 1).

    Returns:
      DenseGraphs with nodes [G, N, F], adjacency [G, N, N], mask [G, N].
    """
    check_graph_features(graph)
    _check_max_nodes(graph, max_nodes, padded)
    n_graph, n_rows = graph.n_node.shape[0], padding.n_nodes(graph)
    node_graph = padding.node_graph_index(graph)
    first = jnp.cumsum(graph.n_node) - graph.n_node
    position = jnp.arange(n_rows, dtype=jnp.int32) - first[node_graph].astype(jnp.int32)
    # Padding nodes go to position N: out of bounds, dropped by the scatters.
    position = jnp.where(padding.node_mask(graph, padded=padded), position, max_nodes)
    features = jnp.asarray(graph.nodes)
    nodes = jnp.zeros((n_graph, max_nodes, features.shape[-1]), features.dtype)
    nodes = nodes.at[node_graph, position].set(features, mode="drop")
    mask = jnp.zeros((n_graph, max_nodes), bool).at[node_graph, position].set(True, mode="drop")
    if edge_weights is None:
        edge_weights = jnp.ones(padding.n_edges(graph), features.dtype)
    edge_weights = jnp.asarray(edge_weights)
    if edge_weights.shape != (padding.n_edges(graph),):
        raise ValueError(f"edge_weights must be [{padding.n_edges(graph)}], "
                         f"got {edge_weights.shape}")
    adjacency = jnp.zeros((n_graph, max_nodes, max_nodes), edge_weights.dtype).at[
        node_graph[graph.receivers], position[graph.receivers], position[graph.senders]
    ].add(edge_weights, mode="drop")
    return DenseGraphs(nodes, adjacency, mask)


def check_dense(nodes: jax.Array, adjacency: jax.Array, mask: jax.Array) -> None:
    """Raises ValueError unless nodes [B, N, F], adjacency [B, N, N], mask [B, N]."""
    if nodes.ndim != 3:
        raise ValueError(f"nodes must be [B, N, F], got {nodes.shape}")
    b, n = nodes.shape[:2]
    if adjacency.shape != (b, n, n):
        raise ValueError(f"adjacency must be [{b}, {n}, {n}] to match nodes, "
                         f"got {adjacency.shape}")
    if mask.shape != (b, n):
        raise ValueError(f"mask must be [{b}, {n}] to match nodes, got {mask.shape}")


def _masked_adjacency(adjacency: jax.Array, mask: jax.Array) -> jax.Array:
    m = mask.astype(adjacency.dtype)
    return adjacency * m[:, :, None] * m[:, None, :]


def propagation_matrix(adjacency: jax.Array, mask: jax.Array) -> jax.Array:
    """(A + I) / (1 + in-degree) on the real nodes: [B, N, N] -> [B, N, N].

    Rows and columns of padding nodes are 0 (no self-loop either).
    """
    n = adjacency.shape[-1]
    m = mask.astype(adjacency.dtype)
    eye = jnp.eye(n, dtype=adjacency.dtype).reshape(1, n, n)
    looped = _masked_adjacency(adjacency, mask) + eye * m[:, :, None]
    degree = jnp.sum(looped, axis=-1, keepdims=True)
    return looped / jnp.where(degree > 0, degree, 1)


class DenseGCN(nn.Module):
    """One dense GCN-style layer: H' = P H W + b, rows of padding nodes set to 0.

    P is `propagation_matrix(A, mask)`.

    Attributes:
      features: F', the output width.
      use_bias: add b.
    """

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, nodes: jax.Array, adjacency: jax.Array, mask: jax.Array) -> jax.Array:
        """nodes [B, N, F], adjacency [B, N, N], mask [B, N] -> [B, N, features]."""
        check_dense(nodes, adjacency, mask)
        mixed = jnp.einsum("bij,bjf->bif", propagation_matrix(adjacency, mask), nodes)
        out = nn.Dense(self.features, use_bias=self.use_bias, name="dense")(mixed)
        return out * mask[:, :, None].astype(out.dtype)


class DenseGNN(nn.Module):
    """A stack of `DenseGCN` layers (`gcn_{i}`), `activation` between them.

    Attributes:
      widths: output width of each layer, at least one.
      activation: after every layer but the last.
    """

    widths: Sequence[int]
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    def __post_init__(self):
        check_widths("widths", self.widths)
        super().__post_init__()

    @nn.compact
    def __call__(self, nodes: jax.Array, adjacency: jax.Array, mask: jax.Array) -> jax.Array:
        """nodes [B, N, F], adjacency [B, N, N], mask [B, N] -> [B, N, widths[-1]]."""
        for i, width in enumerate(self.widths):
            nodes = DenseGCN(width, name=f"gcn_{i}")(nodes, adjacency, mask)
            if i < len(self.widths) - 1:
                nodes = self.activation(nodes)
        return nodes


def _frobenius(x: jax.Array) -> jax.Array:
    """||x||_F over the last two axes, with a finite gradient at 0."""
    squared = jnp.sum(x * x, axis=(-2, -1))
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1)), 0)


class DiffPool(nn.Module):
    """One DiffPool layer on dense graphs.

    Attributes:
      clusters: C, the number of clusters.
      embed_widths: widths of the embedding GNN; F' = embed_widths[-1].
      pool_widths: hidden widths of the assignment GNN (may be empty); its
        last layer, with C outputs, is added here.
      activation: between the GNN layers.
    """

    clusters: int
    embed_widths: Sequence[int]
    pool_widths: Sequence[int] = ()
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    def __post_init__(self):
        if not isinstance(self.clusters, int) or self.clusters < 1:
            raise ValueError(f"clusters must be a positive int, got {self.clusters!r}")
        check_widths("embed_widths", self.embed_widths)
        check_widths("pool_widths", self.pool_widths, allow_empty=True)
        super().__post_init__()

    @nn.compact
    def __call__(self, nodes: jax.Array, adjacency: jax.Array,
                 mask: jax.Array) -> DiffPoolOutput:
        """Pools each graph to C clusters.

        Args:
          nodes: X [B, N, F].
          adjacency: A [B, N, N] (receiver row, sender column); entries of
            padding nodes are ignored.
          mask: [B, N] bool, True for real nodes.

        Returns:
          DiffPoolOutput: X' [B, C, F'], A' [B, C, C], S [B, N, C], losses [B].
        """
        check_dense(nodes, adjacency, mask)
        adjacency = _masked_adjacency(adjacency, mask)
        logits = DenseGNN(tuple(self.pool_widths) + (self.clusters,), self.activation,
                          name="pool_gnn")(nodes, adjacency, mask)
        embedded = DenseGNN(self.embed_widths, self.activation, name="embed_gnn")(
            nodes, adjacency, mask)
        real = mask[:, :, None].astype(logits.dtype)
        assignment = jax.nn.softmax(logits, axis=-1) * real
        pooled_nodes = jnp.einsum("bnc,bnf->bcf", assignment, embedded)
        pooled_adjacency = jnp.einsum("bnc,bnm,bmd->bcd", assignment, adjacency, assignment)
        link = _frobenius(adjacency - jnp.einsum("bnc,bmc->bnm", assignment, assignment))
        # Entropy from log_softmax: finite, with finite gradients, at any logits.
        entropy = -jnp.sum(jax.nn.softmax(logits, axis=-1) * jax.nn.log_softmax(logits, axis=-1),
                           axis=-1) * real[:, :, 0]
        n_real = jnp.maximum(jnp.sum(real[:, :, 0], axis=-1), 1)
        return DiffPoolOutput(pooled_nodes, pooled_adjacency, assignment, link,
                              jnp.sum(entropy, axis=-1) / n_real)
