"""GCN against a dense NumPy float64 D^-1/2 (A + I) D^-1/2 X W + b."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import numpy_variables
from test_gnn_message_passing import check_padding, float64_params, permute, random_batch

from nri_jax.gnn.gcn import GCN, MultiLayerGCN, symmetric_normalization


def dense_adjacency(graph, weights=None):
    """A[r, s] = total weight of the edges s -> r (duplicates add)."""
    n = graph.nodes.shape[0]
    weights = np.ones(len(graph.senders)) if weights is None else weights
    adjacency = np.zeros((n, n))
    for s, r, w in zip(graph.senders, graph.receivers, weights):
        adjacency[r, s] += w
    return adjacency


def numpy_propagation(graph, weights=None, self_loops=True):
    a_hat = dense_adjacency(graph, weights) + (np.eye(graph.nodes.shape[0]) if self_loops else 0)
    degree = a_hat.sum(axis=1)
    scale = np.zeros_like(degree)
    scale[degree > 0] = degree[degree > 0] ** -0.5
    return scale[:, None] * a_hat * scale[None, :]


def numpy_gcn(params, graph, x, weights=None, self_loops=True):
    return numpy_propagation(graph, weights, self_loops) @ x @ params["linear"]["kernel"] \
        + params["bias"]


def test_gcn_against_dense_numpy(x64):
    graph = random_batch(0)  # duplicate edges, self-loop edges, nodes receiving nothing
    layer = GCN(features=4)
    variables = numpy_variables(layer, graph, seed=0)
    got = jax.jit(layer.apply)(variables, graph).nodes
    expected = numpy_gcn(float64_params(variables), graph, graph.nodes)
    assert got.shape == (13, 4) and got.dtype == jnp.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_gcn_with_edge_weights_and_without_self_loops(x64):
    graph = random_batch(1)
    weights = np.random.default_rng(1).uniform(0, 2, size=graph.senders.shape)
    weights[:3] = 0.0
    layer = GCN(features=3, add_self_loops=False, activation=jnp.tanh)
    variables = numpy_variables(layer, graph, weights, seed=1)
    got = jax.jit(layer.apply)(variables, graph, weights).nodes
    expected = np.tanh(numpy_gcn(float64_params(variables), graph, graph.nodes, weights,
                                 self_loops=False))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    # Node 0 of each graph receives nothing and has no self-loop: only the bias is left.
    bias = np.tanh(float64_params(variables)["bias"])
    np.testing.assert_allclose(np.asarray(got)[[0, 4, 10]], np.stack([bias] * 3), atol=1e-12)


def test_multilayer_gcn_against_dense_numpy(x64):
    graph = random_batch(2, n_edge_features=None)
    layer = MultiLayerGCN(widths=(5, 2))
    variables = numpy_variables(layer, graph, seed=2)
    got = jax.jit(layer.apply)(variables, graph).nodes
    params = float64_params(variables)
    hidden = np.maximum(numpy_gcn(params["layer_0"], graph, graph.nodes), 0)
    np.testing.assert_allclose(got, numpy_gcn(params["layer_1"], graph, hidden),
                               rtol=0, atol=1e-10)


def test_normalised_undirected_adjacency_has_spectral_radius_one(x64):
    graph = random_batch(3, sizes=(7, 5))
    both_ways = graph._replace(senders=np.concatenate([graph.senders, graph.receivers]),
                               receivers=np.concatenate([graph.receivers, graph.senders]))
    edge_coefficients, self_coefficients = jax.jit(symmetric_normalization)(both_ways)
    matrix = dense_adjacency(both_ways, np.asarray(edge_coefficients)) + np.diag(self_coefficients)
    np.testing.assert_allclose(matrix, numpy_propagation(both_ways), rtol=0, atol=1e-12)
    np.testing.assert_allclose(matrix, matrix.T, rtol=0, atol=1e-12)
    # D^-1/2 (A + I) D^-1/2 of an undirected graph: eigenvalues in (-1, 1], 1 per component.
    eigenvalues = np.linalg.eigvalsh(matrix)
    assert eigenvalues.max() == pytest.approx(1.0, abs=1e-12) and eigenvalues.min() > -1


def test_padding_does_not_change_real_nodes():
    graph = random_batch(4, dtype=np.float32, n_edge_features=None)
    weights = np.random.default_rng(4).uniform(0.5, 1.5, size=graph.senders.shape)
    graph = graph._replace(edges=weights.astype(np.float32))  # padded with weight 0
    layer = GCN(features=3, activation=jnp.tanh)
    variables = layer.init(jax.random.key(4), graph)
    apply = jax.jit(layer.apply)
    check_padding(lambda g: apply(variables, g, g.edges).nodes, graph)


def test_permuting_nodes_and_edges_permutes_the_output(x64):
    graph = random_batch(5, sizes=(10,), n_edge_features=None)
    permuted, node_perm = permute(graph, 5)
    layer = MultiLayerGCN(widths=(4, 3))
    variables = numpy_variables(layer, graph, seed=5)
    apply = jax.jit(layer.apply)
    np.testing.assert_allclose(apply(variables, permuted).nodes,
                               np.asarray(apply(variables, graph).nodes)[node_perm],
                               rtol=0, atol=1e-12)


def test_bad_arguments_raise_naming_them():
    graph = random_batch(6)
    with pytest.raises(ValueError, match="features"):
        GCN(features=0)
    with pytest.raises(ValueError, match="widths"):
        MultiLayerGCN(widths=(4, 0))
    with pytest.raises(ValueError, match="graph.nodes"):
        GCN(3).init(jax.random.key(0), graph._replace(nodes=graph.nodes[None]))
    with pytest.raises(ValueError, match="edge_weights"):
        GCN(3).init(jax.random.key(0), graph, jnp.ones((len(graph.senders), 1)))
