"""Masks and indices of padded graphs (`jraph.pad_with_graphs`).

`jraph.pad_with_graphs` appends one or more padding graphs that hold the padding
nodes and edges: its padding edges join padding nodes only, so a real node never
receives from a padding node. These helpers give the masks and the node -> graph
and edge -> graph indices every layer and readout needs, as arrays of static size.

jraph's masks take the LAST graph of a batch to be padding, whether or not the
batch was padded: an unpadded batch would lose its last graph. The masks here
therefore say which they assume (`padded`, default True, as every jitted batch
of a fixed shape is).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph


def n_nodes(graph: jraph.GraphsTuple) -> int:
    """Total (static) number of node rows, padding included."""
    return jax.tree.leaves(graph.nodes)[0].shape[0]


def n_edges(graph: jraph.GraphsTuple) -> int:
    """Total (static) number of edge rows, padding included."""
    return graph.senders.shape[0]


def node_mask(graph: jraph.GraphsTuple, *, padded: bool = True) -> jax.Array:
    """[sum N] bool: True for real nodes (all of them when not `padded`)."""
    if not padded:
        return jnp.ones(n_nodes(graph), bool)
    return jraph.get_node_padding_mask(graph)


def edge_mask(graph: jraph.GraphsTuple, *, padded: bool = True) -> jax.Array:
    """[sum E] bool: True for real edges (all of them when not `padded`)."""
    if not padded:
        return jnp.ones(n_edges(graph), bool)
    return jraph.get_edge_padding_mask(graph)


def graph_mask(graph: jraph.GraphsTuple, *, padded: bool = True) -> jax.Array:
    """[G] bool: True for real graphs; when `padded`, the last graph is padding."""
    if not padded:
        return jnp.ones(graph.n_node.shape[0], bool)
    return jraph.get_graph_padding_mask(graph)


def node_graph_index(graph: jraph.GraphsTuple) -> jax.Array:
    """[sum N] int32: the graph each node belongs to."""
    n_graph = graph.n_node.shape[0]
    return jnp.repeat(jnp.arange(n_graph, dtype=jnp.int32), graph.n_node,
                      total_repeat_length=n_nodes(graph))


def edge_graph_index(graph: jraph.GraphsTuple) -> jax.Array:
    """[sum E] int32: the graph each edge belongs to."""
    n_graph = graph.n_edge.shape[0]
    return jnp.repeat(jnp.arange(n_graph, dtype=jnp.int32), graph.n_edge,
                      total_repeat_length=n_edges(graph))
