"""Node, edge and graph readouts against NumPy float64 loops, padded and not."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax.gnn import readout
from helpers import N_EDGES, SIZES, numpy_variables, padded_with_junk
from helpers import random_multigraphs as random_graphs

def np_mlp(params, x):
    """Dense layers dense_0, dense_1, ... with ReLU between them, float64."""
    for i in range(len(params)):
        layer = params[f"dense_{i}"]
        x = x @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        if i < len(params) - 1:
            x = np.maximum(x, 0)
    return x


def np_pool(values, sizes, reduce):
    """Loops over graphs; an empty graph pools to 0."""
    out, start = [], 0
    for n in sizes:
        rows = values[start:start + n]
        start += n
        out.append(np.zeros(values.shape[1]) if n == 0 else
                   {"sum": np.sum, "mean": np.mean, "max": np.max}[reduce](rows, axis=0))
    return np.stack(out)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
@pytest.mark.parametrize("sizes, n_edges", [(SIZES, N_EDGES), ((3, 0, 2), (2, 0, 1))])
def test_graph_readout_matches_numpy(x64, reduce, sizes, n_edges):
    graph = random_graphs(0, sizes, n_edges)
    run = jax.jit(functools.partial(readout.graph_readout, reduce=reduce, padded=False))
    out = run(graph)
    assert out.shape == (len(sizes), 3) and out.dtype == jnp.float64
    np.testing.assert_allclose(out, np_pool(graph.nodes, sizes, reduce), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_graph_readout_ignores_padding(reduce):
    graph = random_graphs(1)
    padded = padded_with_junk(graph)
    out = jax.jit(functools.partial(readout.graph_readout, reduce=reduce, padded=False))(graph)
    out_padded = jax.jit(functools.partial(readout.graph_readout, reduce=reduce))(padded)
    g = len(SIZES)
    np.testing.assert_allclose(out_padded[:g], out, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out_padded[g:], 0.0)  # padding graphs: 0, not -inf or NaN


def test_gated_sum_matches_numpy(x64):
    graph = random_graphs(2)
    module = readout.GatedSumReadout(4, hidden=(5,), padded=False)
    variables = numpy_variables(module, graph)
    out = jax.jit(module.apply)(variables, graph)
    p = variables["params"]
    gated = (1 / (1 + np.exp(-np_mlp(p["gate_mlp"], graph.nodes)))
             * np_mlp(p["value_mlp"], graph.nodes))
    np.testing.assert_allclose(out, np_pool(gated, SIZES, "sum"), rtol=1e-10, atol=1e-10)


def test_gated_sum_ignores_padding():
    graph = random_graphs(3)
    module = readout.GatedSumReadout(4, hidden=(5,), padded=False)
    variables = numpy_variables(module, graph)
    out = jax.jit(module.apply)(variables, graph)
    out_padded = jax.jit(readout.GatedSumReadout(4, hidden=(5,)).apply)(
        variables, padded_with_junk(graph))
    np.testing.assert_allclose(out_padded[:len(SIZES)], out, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out_padded[len(SIZES):], 0.0)


def test_node_and_edge_readouts_match_numpy(x64):
    graph = random_graphs(4)
    nodes, edges = graph.nodes, graph.edges
    node_module, edge_module = readout.NodeReadout((5, 2)), readout.EdgeReadout((6, 3))
    node_vars, edge_vars = numpy_variables(node_module, graph), numpy_variables(edge_module, graph)
    np.testing.assert_allclose(jax.jit(node_module.apply)(node_vars, graph),
                               np_mlp(node_vars["params"]["mlp"], nodes), rtol=1e-10, atol=1e-10)
    expected = np.stack([np_mlp(edge_vars["params"]["mlp"], np.concatenate(
        [nodes[s], nodes[r], edges[k]])) for k, (s, r) in enumerate(zip(graph.senders,
                                                                         graph.receivers))])
    np.testing.assert_allclose(jax.jit(edge_module.apply)(edge_vars, graph), expected,
                               rtol=1e-10, atol=1e-10)


def test_node_and_edge_readouts_ignore_padding():
    graph = random_graphs(5)
    padded = padded_with_junk(graph)
    for module, real in [(readout.NodeReadout((5, 2)), len(graph.nodes)),
                         (readout.EdgeReadout((6, 3)), len(graph.senders))]:
        variables = numpy_variables(module, graph)
        apply = jax.jit(module.apply)
        out, out_padded = apply(variables, graph), apply(variables, padded)
        np.testing.assert_allclose(out_padded[:real], out, rtol=1e-6, atol=1e-6)
        assert np.all(np.isfinite(out_padded))


def test_graph_readouts_are_permutation_invariant(x64):
    graph = random_graphs(6)
    rng = np.random.default_rng(7)
    first = np.cumsum((0,) + SIZES[:-1])
    node_map = np.concatenate([o + rng.permutation(n) for o, n in zip(first, SIZES)])
    permuted = graph._replace(nodes=graph.nodes[node_map])
    module = readout.GatedSumReadout(4, hidden=(5,), padded=False)
    variables = numpy_variables(module, graph)
    np.testing.assert_allclose(module.apply(variables, permuted), module.apply(variables, graph),
                               rtol=1e-10, atol=1e-10)
    for reduce in ("sum", "mean", "max"):
        np.testing.assert_allclose(readout.graph_readout(permuted, reduce=reduce, padded=False),
                                   readout.graph_readout(graph, reduce=reduce, padded=False),
                                   rtol=1e-10, atol=1e-10)
    # Can fail: moving a node to another graph changes the readout.
    moved = graph._replace(n_node=np.array([5, 0, 6], np.int32))
    assert not np.allclose(readout.graph_readout(moved, padded=False),
                           readout.graph_readout(graph, padded=False))


def test_bad_arguments_are_rejected():
    graph = random_graphs(8)
    with pytest.raises(ValueError, match="reduce must be one of"):
        readout.graph_readout(graph, reduce="min")
    with pytest.raises(ValueError, match="values must be"):
        readout.pool_nodes(jnp.ones((3, 2)), graph)
    with pytest.raises(ValueError, match="features must be a positive int"):
        readout.GatedSumReadout(0)
    with pytest.raises(ValueError, match="widths must name at least one"):
        readout.NodeReadout(())
    with pytest.raises(ValueError, match="graph.nodes must be an array"):
        readout.graph_readout(graph._replace(nodes=graph.nodes[:, 0]))
