"""Graph network block and interaction network against NumPy float64 loops over edges."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from nri_jax.gnn import graph_network as gn
from helpers import numpy_variables, padded_with_junk, random_multigraphs


def random_graphs(seed):
    return random_multigraphs(seed, f_global=2)


def np_mlp(params, x, activate_final=False):
    """Dense layers dense_0, dense_1, ... with ReLU between them, float64."""
    n_layers = len(params)
    for i in range(n_layers):
        layer = params[f"dense_{i}"]
        x = x @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        if i < n_layers - 1 or activate_final:
            x = np.maximum(x, 0)
    return x


def np_reduce(rows, width, reduce):
    if not rows:
        return np.zeros(width)
    return {"sum": np.sum, "mean": np.mean, "max": np.max}[reduce](np.stack(rows), axis=0)


def np_block(params, graph, aggregation, global_aggregation):
    """The GN block by loops over edges, nodes and graphs (None: update off)."""
    nodes, edges, u = (None if x is None else np.asarray(x, np.float64)
                       for x in (graph.nodes, graph.edges, graph.globals))
    node_graph = np.repeat(np.arange(len(graph.n_node)), graph.n_node)
    edge_graph = np.repeat(np.arange(len(graph.n_edge)), graph.n_edge)
    s, r = np.asarray(graph.senders), np.asarray(graph.receivers)

    def cat(*parts):
        return np.concatenate([p for p in parts if p is not None])
    if "edge_mlp" in params:
        edges = np.stack([np_mlp(params["edge_mlp"], cat(
            None if edges is None else edges[k], nodes[s[k]], nodes[r[k]],
            None if u is None else u[edge_graph[k]])) for k in range(len(s))])
    if "node_mlp" in params:
        new = []
        for i in range(len(nodes)):
            incoming = None if edges is None else np_reduce(
                [edges[k] for k in range(len(s)) if r[k] == i], edges.shape[1], aggregation)
            new.append(np_mlp(params["node_mlp"], cat(
                nodes[i], incoming, None if u is None else u[node_graph[i]])))
        nodes = np.stack(new)
    if "global_mlp" in params:
        u = np.stack([np_mlp(params["global_mlp"], cat(
            None if u is None else u[g],
            np_reduce(list(nodes[node_graph == g]), nodes.shape[1], global_aggregation),
            None if edges is None else np_reduce(list(edges[edge_graph == g]), edges.shape[1],
                                                 global_aggregation)))
            for g in range(len(graph.n_node))])
    return nodes, edges, u


def _params_f64(variables):
    return jax.tree.map(lambda p: np.asarray(p, np.float64), variables["params"])


@pytest.mark.parametrize("kwargs, drop", [
    (dict(aggregation="sum", global_aggregation="sum"), ()),
    (dict(aggregation="mean", global_aggregation="max"), ()),
    (dict(aggregation="max", global_aggregation="mean"), ()),
    (dict(edge_widths=None, aggregation="mean"), ()),
    (dict(node_widths=None, global_aggregation="max"), ("globals",)),
    (dict(global_widths=None, aggregation="max"), ("edges",)),
    (dict(aggregation="max", global_aggregation="max"), ("edges", "globals")),
])
def test_block_matches_numpy_reference(x64, kwargs, drop):
    graph = random_graphs(0)._replace(**{name: None for name in drop})
    kwargs = dict(kwargs)
    module = gn.GraphNetworkBlock(edge_widths=kwargs.pop("edge_widths", (5, 4)),
                                  node_widths=kwargs.pop("node_widths", (6, 3)),
                                  global_widths=kwargs.pop("global_widths", (4, 2)), **kwargs)
    variables = numpy_variables(module, graph)
    out = jax.jit(module.apply)(variables, graph)
    expected = np_block(_params_f64(variables), graph, module.aggregation,
                        module.global_aggregation)
    for got, want in zip((out.nodes, out.edges, out.globals), expected):
        if want is None:
            assert got is None
        else:
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # Updates that are off keep their features exactly.
    if module.edge_widths is None and graph.edges is not None:
        np.testing.assert_array_equal(out.edges, graph.edges)
    if module.node_widths is None:
        np.testing.assert_array_equal(out.nodes, graph.nodes)


def test_interaction_network_matches_numpy_reference(x64):
    graph = random_graphs(1)
    module = gn.InteractionNetwork(relation_widths=(5, 4), object_widths=(6, 3))
    variables = numpy_variables(module, graph)
    out = jax.jit(module.apply)(variables, graph)
    params = _params_f64(variables)
    nodes, edges = np.asarray(graph.nodes), np.asarray(graph.edges)
    s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
    effects = np.stack([np_mlp(params["relation_mlp"],
                               np.concatenate([edges[k], nodes[s[k]], nodes[r[k]]]))
                        for k in range(len(s))])
    summed = np.zeros((len(nodes), effects.shape[1]))
    for k in range(len(s)):
        summed[r[k]] += effects[k]
    expected = np_mlp(params["object_mlp"], np.concatenate([nodes, summed], axis=1))
    np.testing.assert_allclose(out.edges, effects, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.nodes, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(out.globals, graph.globals)


@pytest.mark.parametrize("module", [
    gn.GraphNetworkBlock((5, 4), (6, 3), (4, 2), aggregation="max", global_aggregation="max"),
    gn.GraphNetworkBlock((5, 4), (6, 3), (4, 2), aggregation="mean", global_aggregation="mean"),
    gn.InteractionNetwork((5, 4), (6, 3)),
])
def test_padding_never_leaks_into_real_rows(module):
    graph = random_graphs(2)
    padded = padded_with_junk(graph)
    variables = numpy_variables(module, graph)
    apply = jax.jit(module.apply)
    out, out_padded = apply(variables, graph), apply(variables, padded)
    n, e, g = len(graph.nodes), len(graph.senders), len(graph.n_node)
    np.testing.assert_allclose(out_padded.nodes[:n], out.nodes, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out_padded.edges[:e], out.edges, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out_padded.globals[:g], out.globals, rtol=1e-6, atol=1e-6)
    for leaf in (out_padded.nodes, out_padded.edges, out_padded.globals):
        assert np.all(np.isfinite(leaf))


def permute_within_graphs(graph, seed):
    """Permutes nodes and edges inside each graph; returns the graph and the two maps
    (row j of the new graph is row map[j] of the old)."""
    rng = np.random.default_rng(seed)

    def block_permutation(sizes):
        first = np.cumsum(np.concatenate([[0], sizes[:-1]]))
        return np.concatenate([o + rng.permutation(n) for o, n in zip(first, sizes)]).astype(int)
    node_map, edge_map = block_permutation(graph.n_node), block_permutation(graph.n_edge)
    inverse = np.argsort(node_map)
    permuted = graph._replace(
        nodes=graph.nodes[node_map], edges=graph.edges[edge_map],
        senders=inverse[graph.senders[edge_map]].astype(np.int32),
        receivers=inverse[graph.receivers[edge_map]].astype(np.int32))
    return permuted, node_map, edge_map


@pytest.mark.parametrize("module", [
    gn.GraphNetworkBlock((5, 4), (6, 3), (4, 2), aggregation="max", global_aggregation="sum"),
    gn.InteractionNetwork((5, 4), (6, 3), aggregation="mean"),
])
def test_permutation_equivariance(x64, module):
    graph = random_graphs(3)
    permuted, node_map, edge_map = permute_within_graphs(graph, 4)
    assert not np.array_equal(node_map, np.arange(len(node_map)))
    variables = numpy_variables(module, graph)
    apply = jax.jit(module.apply)
    out, out_permuted = apply(variables, graph), apply(variables, permuted)
    np.testing.assert_allclose(out_permuted.nodes, out.nodes[node_map], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out_permuted.edges, out.edges[edge_map], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out_permuted.globals, out.globals, rtol=1e-10, atol=1e-10)
    # Can fail: the nodes are not all alike.
    assert not np.allclose(out_permuted.nodes, out.nodes, atol=1e-3)


@pytest.mark.parametrize("aggregation, segment_fn", [
    ("sum", jraph.segment_sum), ("mean", jraph.segment_mean)])
def test_agrees_with_jraph_graph_network(x64, aggregation, segment_fn):
    """jraph.GraphNetwork with the same MLPs gives the same graph (its "max" leaves -inf
    at nodes without incoming edges, which is why the block has its own)."""
    graph = random_graphs(5)
    module = gn.GraphNetworkBlock((5, 4), (6, 3), (4, 2), aggregation=aggregation,
                                  global_aggregation=aggregation)
    variables = numpy_variables(module, graph)
    out = module.apply(variables, graph)

    def mlp(name, *parts):
        params = variables["params"][name]
        widths = tuple(params[f"dense_{i}"]["bias"].shape[0] for i in range(len(params)))
        return gn.MLP(widths).apply({"params": params}, jnp.concatenate(parts, axis=-1))
    network = jraph.GraphNetwork(
        update_edge_fn=lambda e, s, r, u: mlp("edge_mlp", e, s, r, u),
        update_node_fn=lambda v, sent, received, u: mlp("node_mlp", v, received, u),
        update_global_fn=lambda v, e, u: mlp("global_mlp", u, v, e),
        aggregate_edges_for_nodes_fn=segment_fn, aggregate_nodes_for_globals_fn=segment_fn,
        aggregate_edges_for_globals_fn=segment_fn)
    expected = jax.jit(network)(jax.tree.map(jnp.asarray, graph))
    for got, want in zip((out.nodes, out.edges, out.globals),
                         (expected.nodes, expected.edges, expected.globals)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_repeated_jitted_call_does_not_recompile():
    module = gn.GraphNetworkBlock((4,), (4,), (4,))
    graph = random_graphs(6)
    variables = numpy_variables(module, graph)
    apply = jax.jit(module.apply)
    apply(variables, graph)
    apply(variables, random_graphs(7))
    assert apply._cache_size() == 1


def test_mlp_layers_and_final_activation():
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    module = gn.MLP((4, 2), activation=nn.tanh, activate_final=True)
    variables = numpy_variables(module, x)
    p = variables["params"]
    expected = np.tanh(np.tanh(x @ p["dense_0"]["kernel"] + p["dense_0"]["bias"])
                       @ p["dense_1"]["kernel"] + p["dense_1"]["bias"])
    np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-5, atol=1e-6)


def test_segment_reduce_gives_zero_for_empty_segments():
    data = jnp.array([[1.0, -2.0], [3.0, -4.0]])
    ids = jnp.array([0, 0])
    for reduce, first in [("sum", [4.0, -6.0]), ("mean", [2.0, -3.0]), ("max", [3.0, -2.0])]:
        out = jax.jit(gn.segment_reduce, static_argnums=(2, 3))(data, ids, 2, reduce)
        np.testing.assert_allclose(out, [first, [0.0, 0.0]])


@pytest.mark.parametrize("make, match", [
    (lambda: gn.GraphNetworkBlock(aggregation="median"), "aggregation must be one of"),
    (lambda: gn.GraphNetworkBlock(global_aggregation="min"), "global_aggregation must be"),
    (lambda: gn.GraphNetworkBlock(node_widths=(4, 0)), "node_widths must be a sequence"),
    (lambda: gn.GraphNetworkBlock(edge_widths=()), "edge_widths must name at least one"),
    (lambda: gn.InteractionNetwork(aggregation="prod"), "aggregation must be one of"),
    (lambda: gn.MLP(8), "widths must be a sequence"),
    (lambda: gn.segment_reduce(jnp.ones((2, 1)), jnp.zeros(2, int), 1, "min"),
     "reduce must be one of"),
])
def test_bad_settings_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_graphs_are_rejected():
    graph = random_graphs(8)
    module = gn.GraphNetworkBlock((4,), (4,), (4,))
    with pytest.raises(ValueError, match="graph.nodes must be an array"):
        module.init(jax.random.key(0), graph._replace(nodes=graph.nodes[:, :, None]))
    with pytest.raises(ValueError, match="graph.edges must be"):
        module.init(jax.random.key(0), graph._replace(edges=graph.edges[1:]))
    with pytest.raises(ValueError, match="graph.globals must be"):
        module.init(jax.random.key(0), graph._replace(globals=graph.globals[1:]))
