"""Edge-conditioned convolution against a NumPy float64 loop over edges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax.gnn import ecc
from helpers import N_EDGES, SIZES, numpy_variables, padded_with_junk
from helpers import random_multigraphs as random_graphs

def np_ecc(params, graph, f_out, aggregation):
    """Loops over edges: filter MLP (ReLU between layers), sender @ filter, mean or sum."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    nodes, edges = np.asarray(graph.nodes, np.float64), np.asarray(graph.edges, np.float64)
    f_in = nodes.shape[1]
    filter_mlp = p["filter_mlp"]
    out = nodes @ p["root"]["kernel"] + p["root"].get("bias", 0.0)
    for i in range(len(nodes)):
        messages = []
        for k in np.flatnonzero(np.asarray(graph.receivers) == i):
            h = edges[k]
            for layer in range(len(filter_mlp)):
                dense = filter_mlp[f"dense_{layer}"]
                h = h @ dense["kernel"] + dense["bias"]
                if layer < len(filter_mlp) - 1:
                    h = np.maximum(h, 0)
            theta = h.reshape(f_in, f_out)
            messages.append(nodes[graph.senders[k]] @ theta)
        if messages:
            out[i] += np.mean(messages, axis=0) if aggregation == "mean" else np.sum(messages, 0)
    return out


@pytest.mark.parametrize("kwargs", [
    dict(features=4, filter_widths=(5,), aggregation="mean"),
    dict(features=2, filter_widths=(), aggregation="sum"),
    dict(features=3, filter_widths=(6, 4), aggregation="mean", use_bias=False),
])
def test_matches_numpy_reference(x64, kwargs):
    graph = random_graphs(0)
    module = ecc.EdgeConditionedConv(**kwargs)
    variables = numpy_variables(module, graph)
    out = jax.jit(module.apply)(variables, graph)
    assert out.nodes.shape == (sum(SIZES), module.features) and out.nodes.dtype == jnp.float64
    expected = np_ecc(variables["params"], graph, module.features, module.aggregation)
    np.testing.assert_allclose(out.nodes, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(out.edges, graph.edges)
    # The node without incoming edges keeps its root term only.
    root = variables["params"]["root"]
    np.testing.assert_allclose(out.nodes[0], graph.nodes[0] @ np.asarray(root["kernel"], float)
                               + np.asarray(root.get("bias", 0.0), float), rtol=1e-10)


@pytest.mark.parametrize("aggregation", ["mean", "sum"])
def test_padding_never_leaks_into_real_rows(aggregation):
    graph = random_graphs(1)
    module = ecc.EdgeConditionedConv(4, (5,), aggregation=aggregation)
    variables = numpy_variables(module, graph)
    apply = jax.jit(module.apply)
    out, out_padded = apply(variables, graph), apply(variables, padded_with_junk(graph))
    n = len(graph.nodes)
    np.testing.assert_allclose(out_padded.nodes[:n], out.nodes, rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(out_padded.nodes))


def test_permutation_equivariance(x64):
    graph = random_graphs(2)
    rng = np.random.default_rng(3)
    first = np.cumsum((0,) + SIZES[:-1])
    node_map = np.concatenate([o + rng.permutation(n) for o, n in zip(first, SIZES)])
    edge_map = rng.permutation(len(graph.senders))  # edge order is free for one layer
    inverse = np.argsort(node_map)
    permuted = graph._replace(nodes=graph.nodes[node_map], edges=graph.edges[edge_map],
                              senders=inverse[graph.senders[edge_map]].astype(np.int32),
                              receivers=inverse[graph.receivers[edge_map]].astype(np.int32))
    module = ecc.EdgeConditionedConv(3, (4,))
    variables = numpy_variables(module, graph)
    apply = jax.jit(module.apply)
    out, out_permuted = apply(variables, graph), apply(variables, permuted)
    np.testing.assert_allclose(out_permuted.nodes, out.nodes[node_map], rtol=1e-10, atol=1e-10)
    assert not np.allclose(out_permuted.nodes, out.nodes, atol=1e-3)


def test_filters_depend_on_the_edge_features():
    """Changing one edge's features changes its receiver only."""
    graph = random_graphs(4)
    module = ecc.EdgeConditionedConv(3, (4,))
    variables = numpy_variables(module, graph)
    apply = jax.jit(module.apply)
    edges = np.array(graph.edges)
    edges[0] += 1.0
    changed = apply(variables, graph._replace(edges=edges)).nodes != apply(variables, graph).nodes
    np.testing.assert_array_equal(np.any(changed, axis=1),
                                  np.arange(len(graph.nodes)) == graph.receivers[0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(features=0), "features must be a positive int"),
    (dict(features=3, aggregation="max"), "aggregation must be one of"),
    (dict(features=3, filter_widths=(-1,)), "filter_widths must be a sequence"),
])
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ecc.EdgeConditionedConv(**kwargs)


def test_graph_without_edge_features_is_rejected():
    graph = random_graphs(5)._replace(edges=None)
    with pytest.raises(ValueError, match="graph.edges must be an array"):
        ecc.EdgeConditionedConv(3).init(jax.random.key(0), graph)
