"""Graph network block (Battaglia et al. 2018) and interaction network (Battaglia et al. 2016).

A graph network block updates a graph in three optional steps, each an MLP on
concatenated features:

    edges   e'_k = phi_e([e_k, v_sender(k), v_receiver(k), u_graph(k)])
    nodes   v'_i = phi_v([v_i, agg_{k -> i} e'_k, u_graph(i)])
    globals u'_g = phi_u([u_g, agg_{i in g} v'_i, agg_{k in g} e'_k])

Each step sees the results of the steps before it. Missing features (edges or
globals None) are left out of the concatenations. An interaction network is the
block without globals: a relational model on [e, v_s, v_r] gives each edge an
effect, effects are summed at receivers, and an object model on [v, effects]
gives the new nodes.

jraph.GraphNetwork computes the same thing (the tests check it against this
module for sum and mean), but its "max" aggregation leaves -inf at nodes without
incoming edges and at graphs without nodes, and jraph is archived; the block is
written here on jraph's data structure and segment ops, as principle 5 of the
style guide asks.

Padding (`jraph.pad_with_graphs`): padding edges join padding nodes only and
padding nodes belong to padding graphs, so every aggregation of a real node or
graph sees real rows only; empty segments aggregate to 0 for every reduction,
which keeps padding rows finite.

This module also holds the small pieces the other layers of the package share:
the `MLP`, `segment_reduce` and `check_graph_features`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from nri_jax import graphs
from nri_jax.gnn import padding

AGGREGATIONS = ("sum", "mean", "max")


def check_aggregation(name: str, value: str, allowed: Sequence[str] = AGGREGATIONS) -> None:
    """Raises ValueError unless `value` (the argument `name`) is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_widths(name: str, widths: Sequence[int], *, allow_empty: bool = False) -> None:
    """Raises ValueError unless `widths` (the argument `name`) is a sequence of positive ints."""
    if isinstance(widths, (int, str)) or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"{name} must be a sequence of positive ints, got {widths!r}")
    if not allow_empty and len(widths) == 0:
        raise ValueError(f"{name} must name at least one layer width, got {widths!r}")


def segment_reduce(data: jax.Array, segment_ids: jax.Array, num_segments: int,
                   reduce: str = "sum") -> jax.Array:
    """Sum, mean or max of the rows of `data` in each segment; empty segments give 0.

    Args:
      data: [R, F] rows to reduce.
      segment_ids: int [R], the segment of each row, in [0, num_segments).
      num_segments: S, static.
      reduce: "sum", "mean" or "max".

    Returns:
      [S, F]. Unlike `jax.ops.segment_max` (which gives -inf), an empty segment
      is 0 for "max" as for "sum" and "mean".
    """
    check_aggregation("reduce", reduce)
    if reduce == "sum":
        return jraph.segment_sum(data, segment_ids, num_segments)
    if reduce == "mean":
        return jraph.segment_mean(data, segment_ids, num_segments)
    return jraph.segment_max_or_constant(data, segment_ids, num_segments, constant=0.0)


def check_graph_features(graph: jraph.GraphsTuple, *, edges_required: bool = False) -> None:
    """Raises ValueError unless the graph's features are 2-D arrays with one row per item.

    nodes [sum N, F], edges [sum E, F_e] (or None unless `edges_required`),
    globals [G, F_u] or None, senders and receivers [sum E].
    """
    nodes = graph.nodes
    if not hasattr(nodes, "ndim") or nodes.ndim != 2:
        raise ValueError(f"graph.nodes must be an array [sum N, F], got "
                         f"{getattr(nodes, 'shape', type(nodes).__name__)}")
    n_edges = padding.n_edges(graph)
    if graph.receivers.shape != (n_edges,):
        raise ValueError(f"graph.receivers must have the shape of graph.senders {(n_edges,)}, "
                         f"got {graph.receivers.shape}")
    if graph.edges is None:
        if edges_required:
            raise ValueError("graph.edges must be an array [sum E, F_e], got None")
    elif graph.edges.ndim != 2 or graph.edges.shape[0] != n_edges:
        raise ValueError(f"graph.edges must be [{n_edges}, F_e] (one row per sender), "
                         f"got {graph.edges.shape}")
    n_graph = graph.n_node.shape[0]
    if graph.globals is not None and (graph.globals.ndim != 2
                                      or graph.globals.shape[0] != n_graph):
        raise ValueError(f"graph.globals must be [{n_graph}, F_u] (one row per graph), "
                         f"got {graph.globals.shape}")


def _concat(parts) -> jax.Array:
    return jnp.concatenate([p for p in parts if p is not None], axis=-1)


class MLP(nn.Module):
    """Dense layers with an activation between them (and after the last if asked).

    Attributes:
      widths: output width of each layer, at least one; layer i is `dense_{i}`.
      activation: applied after every layer but the last.
      activate_final: also apply `activation` after the last layer.
    """

    widths: Sequence[int]
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    activate_final: bool = False

    def __post_init__(self):
        check_widths("widths", self.widths)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps [..., F_in] -> [..., widths[-1]]."""
        for i, width in enumerate(self.widths):
            x = nn.Dense(width, name=f"dense_{i}")(x)
            if i < len(self.widths) - 1 or self.activate_final:
                x = self.activation(x)
        return x


class GraphNetworkBlock(nn.Module):
    """One graph network block: edge, node and global updates, each optional.

    Attributes:
      edge_widths: widths of phi_e, or None to keep the edges.
      node_widths: widths of phi_v, or None to keep the nodes.
      global_widths: widths of phi_u, or None to keep the globals.
      aggregation: how incoming edges reach a node: "sum", "mean" or "max".
      global_aggregation: how a graph's nodes and edges reach its global.
      activation: between the layers of each MLP (not after the last).
    """

    edge_widths: Sequence[int] | None = (64, 64)
    node_widths: Sequence[int] | None = (64, 64)
    global_widths: Sequence[int] | None = (64, 64)
    aggregation: str = "sum"
    global_aggregation: str = "sum"
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    def __post_init__(self):
        for name in ("edge_widths", "node_widths", "global_widths"):
            if getattr(self, name) is not None:
                check_widths(name, getattr(self, name))
        check_aggregation("aggregation", self.aggregation)
        check_aggregation("global_aggregation", self.global_aggregation)
        super().__post_init__()

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
        """Updates the graph; shapes as in `check_graph_features`.

        Args:
          graph: nodes [sum N, F], edges [sum E, F_e] or None, globals [G, F_u] or None.

        Returns:
          The graph with nodes [sum N, node_widths[-1]], edges [sum E,
          edge_widths[-1]] and globals [G, global_widths[-1]] where updated.
        """
        check_graph_features(graph)
        # jnp arrays: host (NumPy) features cannot be indexed by traced graph indices.
        nodes, edges, globals_ = (None if x is None else jnp.asarray(x)
                                  for x in (graph.nodes, graph.edges, graph.globals))
        n_graph = graph.n_node.shape[0]
        node_graph = padding.node_graph_index(graph)
        edge_graph = padding.edge_graph_index(graph)
        if self.edge_widths is not None:
            edges = MLP(self.edge_widths, self.activation, name="edge_mlp")(_concat([
                edges,
                graphs.gather_senders(nodes, graph.senders, axis=0),
                graphs.gather_receivers(nodes, graph.receivers, axis=0),
                None if globals_ is None else globals_[edge_graph]]))
        if self.node_widths is not None:
            incoming = None if edges is None else segment_reduce(
                edges, graph.receivers, padding.n_nodes(graph), self.aggregation)
            nodes = MLP(self.node_widths, self.activation, name="node_mlp")(_concat([
                nodes, incoming, None if globals_ is None else globals_[node_graph]]))
        if self.global_widths is not None:
            reduce = self.global_aggregation
            globals_ = MLP(self.global_widths, self.activation, name="global_mlp")(_concat([
                globals_,
                segment_reduce(nodes, node_graph, n_graph, reduce),
                None if edges is None else segment_reduce(edges, edge_graph, n_graph, reduce)]))
        return graph._replace(nodes=nodes, edges=edges, globals=globals_)


class InteractionNetwork(nn.Module):
    """Interaction network: relational model on edges, object model on nodes.

    effects_k = phi_R([e_k, v_sender(k), v_receiver(k)]) (e_k left out when the
    graph has no edge features), v'_i = phi_O([v_i, agg_{k -> i} effects_k]).
    Globals pass through unchanged.

    Attributes:
      relation_widths: widths of the relational model phi_R.
      object_widths: widths of the object model phi_O.
      aggregation: how effects reach their receiver; "sum" in the paper.
      activation: between the layers of each MLP.
    """

    relation_widths: Sequence[int] = (64, 64)
    object_widths: Sequence[int] = (64, 64)
    aggregation: str = "sum"
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    def __post_init__(self):
        check_widths("relation_widths", self.relation_widths)
        check_widths("object_widths", self.object_widths)
        check_aggregation("aggregation", self.aggregation)
        super().__post_init__()

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
        """Args: graph with nodes [sum N, F], edges [sum E, F_e] or None.

        Returns:
          The graph with nodes [sum N, object_widths[-1]] and edges (the
          effects) [sum E, relation_widths[-1]].
        """
        check_graph_features(graph)
        nodes = graph.nodes
        effects = MLP(self.relation_widths, self.activation, name="relation_mlp")(_concat([
            graph.edges,
            graphs.gather_senders(nodes, graph.senders, axis=0),
            graphs.gather_receivers(nodes, graph.receivers, axis=0)]))
        incoming = segment_reduce(effects, graph.receivers, padding.n_nodes(graph),
                                  self.aggregation)
        nodes = MLP(self.object_widths, self.activation, name="object_mlp")(
            _concat([nodes, incoming]))
        return graph._replace(nodes=nodes, edges=effects)
