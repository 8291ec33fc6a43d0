"""Readouts: per node, per edge, and per graph (sum, mean, max, gated sum).

Graph readouts pool the node rows of each graph into one [G, F] row per graph.
Padding (`jraph.pad_with_graphs`) puts every padding node in a padding graph, so
a real graph pools real nodes only; when `padded` (the default, as for every
jitted batch of a fixed shape) the padding graphs' rows are set to 0, and a
graph with no nodes pools to 0 for every reduction (never NaN, never -inf).

The gated sum is Li et al. (2016)'s graph-level output without its outer
tanh: h_G = sum_i sigmoid(gate(v_i)) * value(v_i), both MLPs per node.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from nri_jax import graphs
from nri_jax.gnn import padding
from nri_jax.gnn.graph_network import MLP, check_aggregation, check_graph_features, \
    check_widths

GRAPH_REDUCTIONS = ("sum", "mean", "max")


def pool_nodes(values: jax.Array, graph: jraph.GraphsTuple, *, reduce: str = "sum",
               padded: bool = True) -> jax.Array:
    """Pools per-node values into one row per graph.

    Args:
      values: [sum N, F], a row per node of `graph`.
      graph: gives the node -> graph map (`n_node`).
      reduce: "sum", "mean" or "max" over each graph's nodes.
      padded: the last graphs are `jraph.pad_with_graphs` padding: their rows are 0.

    Returns:
      [G, F]; graphs without nodes (and padding graphs) are 0.
    """
    check_aggregation("reduce", reduce, GRAPH_REDUCTIONS)
    if values.ndim != 2 or values.shape[0] != padding.n_nodes(graph):
        raise ValueError(f"values must be [{padding.n_nodes(graph)}, F] (a row per node), "
                         f"got {values.shape}")
    values = jnp.asarray(values)
    n_graph = graph.n_node.shape[0]
    index = padding.node_graph_index(graph)
    count = graph.n_node.reshape(n_graph, 1)
    if reduce == "max":
        pooled = jraph.segment_max(values, index, n_graph)
        pooled = jnp.where(count > 0, pooled, 0)  # an empty segment's max is -inf
    else:
        pooled = jraph.segment_sum(values, index, n_graph)
        if reduce == "mean":
            pooled = pooled / jnp.maximum(count, 1).astype(values.dtype)
    real = padding.graph_mask(graph, padded=padded).reshape(n_graph, 1)
    return jnp.where(real, pooled, 0)


def graph_readout(graph: jraph.GraphsTuple, *, reduce: str = "sum",
                  padded: bool = True) -> jax.Array:
    """Sum, mean or max of each graph's node features: nodes [sum N, F] -> [G, F].

    See `pool_nodes` for `reduce` and `padded`.
    """
    check_graph_features(graph)
    return pool_nodes(graph.nodes, graph, reduce=reduce, padded=padded)


class _MLPReadout(nn.Module):
    """An MLP applied to one row per node or edge (`rows` says which).

    Attributes:
      widths: the MLP's layer widths.
      activation: between its layers.
    """

    widths: Sequence[int]
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    def __post_init__(self):
        check_widths("widths", self.widths)
        super().__post_init__()

    def rows(self, graph: jraph.GraphsTuple) -> jax.Array:
        raise NotImplementedError

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> jax.Array:
        """Returns [rows, widths[-1]]."""
        check_graph_features(graph)
        return MLP(self.widths, self.activation, name="mlp")(self.rows(graph))


class NodeReadout(_MLPReadout):
    """An MLP applied to every node: nodes [sum N, F] -> [sum N, widths[-1]]."""

    def rows(self, graph: jraph.GraphsTuple) -> jax.Array:
        return graph.nodes


class EdgeReadout(_MLPReadout):
    """An MLP on each edge's [v_sender, v_receiver, e] (e left out when edges are None):
    -> [sum E, widths[-1]]."""

    def rows(self, graph: jraph.GraphsTuple) -> jax.Array:
        return graphs.node_to_edge(graph.nodes, graph.senders, graph.receivers, graph.edges,
                                   axis=0)


class GatedSumReadout(nn.Module):
    """Gated sum over each graph's nodes: sum_i sigmoid(gate(v_i)) * value(v_i) -> [G, F].

    Attributes:
      features: F, the width of the readout.
      hidden: hidden widths of both MLPs (may be empty: linear gate and value).
      padded: the last graphs are padding (their rows are 0), as in `pool_nodes`.
      activation: between the MLPs' layers.
    """

    features: int
    hidden: Sequence[int] = ()
    padded: bool = True
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    def __post_init__(self):
        if not isinstance(self.features, int) or self.features < 1:
            raise ValueError(f"features must be a positive int, got {self.features!r}")
        check_widths("hidden", self.hidden, allow_empty=True)
        super().__post_init__()

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> jax.Array:
        """Args: graph with nodes [sum N, F_in]. Returns [G, features]."""
        check_graph_features(graph)
        widths = tuple(self.hidden) + (self.features,)
        gate = MLP(widths, self.activation, name="gate_mlp")(graph.nodes)
        value = MLP(widths, self.activation, name="value_mlp")(graph.nodes)
        return pool_nodes(nn.sigmoid(gate) * value, graph, reduce="sum", padded=self.padded)
