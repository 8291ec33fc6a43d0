"""Graph convolution (Kipf & Welling 2017).

    H' = act(D^-1/2 (A + I) D^-1/2 H W + b),   D_ii = sum_j (A + I)_ij

A_ij is the (weighted) number of edges j -> i: receiver row, sender column, as
in `nri_jax.graphs`; duplicate edges add up, and the added I is one self-loop
per node whether or not the graph already has one. D_ii is thus 1 plus the
weight arriving at i; for an undirected graph (each edge listed both ways) this
is Kipf and Welling's degree. Without self-loops a node with nothing arriving
has D_ii = 0, and 0^-1/2 is taken as 0: it neither receives nor sends.

The normalised adjacency is never formed: each edge gets the coefficient
w_k / sqrt(D_rr D_ss) and each node the self coefficient 1 / D_ii, and the
propagation is a gather plus a segment sum.

Padding (`jraph.pad_with_graphs`): padding edges join padding nodes only, so a
real node's degree counts real edges only and no padding row reaches it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from nri_jax import graphs
from nri_jax.gnn import padding
from nri_jax.gnn.graph_network import check_graph_features, check_widths


def _check_features(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _inverse_sqrt(degree: jax.Array) -> jax.Array:
    """degree^-1/2 with 0 where the degree is 0 (finite gradients there too)."""
    positive = degree > 0
    return jnp.where(positive, jax.lax.rsqrt(jnp.where(positive, degree, 1)), 0)


def symmetric_normalization(graph: jraph.GraphsTuple, edge_weights: jax.Array | None = None,
                            *, add_self_loops: bool = True) -> tuple[jax.Array, jax.Array]:
    """Coefficients of D^-1/2 (A + I) D^-1/2 on the graph's edges and self-loops.

    Args:
      graph: senders and receivers [sum E] (nodes only give the node count).
      edge_weights: optional non-negative [sum E] weights (default 1 per edge).
      add_self_loops: use A + I; otherwise A.

    Returns:
      `(edge_coefficients [sum E], self_coefficients [sum N])`: w_k /
      sqrt(D_rr D_ss) for edge k from s to r, and 1 / D_ii (0 without self-loops).
    """
    n_nodes, n_edges = padding.n_nodes(graph), padding.n_edges(graph)
    if edge_weights is None:
        edge_weights = jnp.ones(n_edges)
    elif edge_weights.shape != (n_edges,):
        raise ValueError(f"edge_weights must be [{n_edges}] (one per edge), "
                         f"got shape {edge_weights.shape}")
    receivers, senders = jnp.asarray(graph.receivers), jnp.asarray(graph.senders)
    degree = jraph.segment_sum(edge_weights, receivers, n_nodes) + float(add_self_loops)
    scale = _inverse_sqrt(degree)
    edge_coefficients = edge_weights * scale[senders] * scale[receivers]
    return edge_coefficients, float(add_self_loops) * scale * scale


class GCN(nn.Module):
    """One graph convolution layer.

    Attributes:
      features: F_out, the width of the new node features.
      use_bias: add b after the propagation.
      activation: applied last, or None for a linear layer.
      add_self_loops: normalise A + I (Kipf & Welling) rather than A.
    """

    features: int
    use_bias: bool = True
    activation: Callable[[jax.Array], jax.Array] | None = None
    add_self_loops: bool = True

    def __post_init__(self):
        _check_features("features", self.features)
        super().__post_init__()

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple,
                 edge_weights: jax.Array | None = None) -> jraph.GraphsTuple:
        """Args:
          graph: nodes [sum N, F_in]; graph.edges is not read.
          edge_weights: optional non-negative [sum E] weights, the entries of A.

        Returns:
          The graph with nodes [sum N, features]; edges and globals unchanged.
        """
        check_graph_features(graph._replace(edges=None))
        edge_coefficients, self_coefficients = symmetric_normalization(
            graph, edge_weights, add_self_loops=self.add_self_loops)
        # W before propagating: the product runs on F_out columns, never wider ones.
        projected = nn.Dense(self.features, use_bias=False, name="linear")(
            jnp.asarray(graph.nodes))
        sent = graphs.gather_senders(projected, graph.senders, axis=0)
        nodes = (jraph.segment_sum(edge_coefficients[:, None] * sent, jnp.asarray(graph.receivers),
                                   padding.n_nodes(graph))
                 + self_coefficients[:, None] * projected)
        if self.use_bias:
            nodes = nodes + self.param("bias", nn.initializers.zeros, (self.features,))[None, :]
        if self.activation is not None:
            nodes = self.activation(nodes)
        return graph._replace(nodes=nodes)


class MultiLayerGCN(nn.Module):
    """Stacked GCN layers (`layer_{i}`), the activation between them, none after the last.

    Attributes:
      widths: F_out of each layer, at least one.
      activation: between layers.
      use_bias: each layer adds a bias.
      add_self_loops: as in `GCN`.
    """

    widths: Sequence[int]
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    use_bias: bool = True
    add_self_loops: bool = True

    def __post_init__(self):
        check_widths("widths", self.widths)
        super().__post_init__()

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple,
                 edge_weights: jax.Array | None = None) -> jraph.GraphsTuple:
        """As `GCN.__call__`, with nodes [sum N, widths[-1]] out."""
        for i, width in enumerate(self.widths):
            last = i == len(self.widths) - 1
            graph = GCN(width, self.use_bias, None if last else self.activation,
                        self.add_self_loops, name=f"layer_{i}")(graph, edge_weights)
        return graph
