"""Masks and graph indices of padded GraphsTuples against hand-built answers."""

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from nri_jax.gnn import padding


def two_graphs():
    """A triangle (3 nodes, 3 edges) and a pair (2 nodes, 1 edge), batched."""
    return jraph.GraphsTuple(
        nodes=jnp.arange(5.0)[:, None], edges=jnp.ones((4, 1)),
        senders=jnp.array([0, 1, 2, 3]), receivers=jnp.array([1, 2, 0, 4]),
        n_node=jnp.array([3, 2]), n_edge=jnp.array([3, 1]), globals=jnp.zeros((2, 1)))


def test_unpadded_graphs_are_all_real():
    graph = two_graphs()
    assert padding.n_nodes(graph) == 5 and padding.n_edges(graph) == 4
    np.testing.assert_array_equal(padding.node_mask(graph, padded=False), [True] * 5)
    np.testing.assert_array_equal(padding.edge_mask(graph, padded=False), [True] * 4)
    np.testing.assert_array_equal(padding.graph_mask(graph, padded=False), [True] * 2)
    # jraph's own mask drops the last graph of any batch: the default assumes padding.
    np.testing.assert_array_equal(padding.node_mask(graph), [True] * 3 + [False] * 2)
    np.testing.assert_array_equal(padding.node_graph_index(graph), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(padding.edge_graph_index(graph), [0, 0, 0, 1])


def test_padding_is_masked_and_indexed_to_the_padding_graph():
    graph = jraph.pad_with_graphs(two_graphs(), n_node=8, n_edge=7, n_graph=3)
    np.testing.assert_array_equal(padding.node_mask(graph), [True] * 5 + [False] * 3)
    np.testing.assert_array_equal(padding.edge_mask(graph), [True] * 4 + [False] * 3)
    np.testing.assert_array_equal(padding.graph_mask(graph), [True, True, False])
    index = jax.jit(padding.node_graph_index)(graph)
    np.testing.assert_array_equal(index, [0, 0, 0, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(jax.jit(padding.edge_graph_index)(graph),
                                  [0, 0, 0, 1, 2, 2, 2])
    # Padding edges join padding nodes only: no real node receives from padding.
    padded = ~np.asarray(padding.edge_mask(graph))
    assert np.all(np.asarray(graph.receivers)[padded] >= 5)
