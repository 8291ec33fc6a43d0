"""Message passing and aggregation against NumPy float64 loops; jraph's segment ops checked."""

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest
from helpers import numpy_variables

from nri_jax.gnn import padding
from nri_jax.gnn.message_passing import AGGREGATIONS, MessagePassing, aggregate, segment_softmax


def random_batch(seed, sizes=(4, 6, 3), n_features=3, n_edge_features=2, dtype=np.float64):
    """Random directed graphs, batched: node 0 of each receives nothing, its first edge is
    listed twice (and self-loops may occur)."""
    rng = np.random.default_rng(seed)
    senders, receivers, n_edge, offset = [], [], [], 0
    for n in sizes:
        pairs = np.array([(s, r) for s in range(n) for r in range(1, n)])
        chosen = pairs[rng.choice(len(pairs), size=2 * n - 2, replace=False)]
        chosen = np.concatenate([chosen, chosen[:1]])
        senders.append(chosen[:, 0] + offset)
        receivers.append(chosen[:, 1] + offset)
        n_edge.append(len(chosen))
        offset += n
    n_edges = sum(n_edge)
    return jraph.GraphsTuple(
        nodes=rng.normal(size=(offset, n_features)).astype(dtype),
        edges=None if n_edge_features is None else
        rng.normal(size=(n_edges, n_edge_features)).astype(dtype),
        senders=np.concatenate(senders).astype(np.int32),
        receivers=np.concatenate(receivers).astype(np.int32),
        n_node=np.array(sizes, np.int32), n_edge=np.array(n_edge, np.int32), globals=None)


def permute(graph, seed):
    """The graph with its nodes relabelled and its edges reordered at random; returns it and
    the node permutation (new node r is old node perm[r])."""
    rng = np.random.default_rng(seed)
    node_perm = rng.permutation(graph.nodes.shape[0])
    edge_perm = rng.permutation(graph.senders.shape[0])
    new_index = np.argsort(node_perm).astype(np.int32)  # old node i is new node new_index[i]
    edges = graph.edges if graph.edges is None else graph.edges[edge_perm]
    return graph._replace(nodes=graph.nodes[node_perm], edges=edges,
                          senders=new_index[graph.senders][edge_perm],
                          receivers=new_index[graph.receivers][edge_perm]), node_perm


def check_padding(run, graph):
    """`run(graph) -> nodes` gives the real nodes the same values on the graph padded with
    `jraph.pad_with_graphs` (edge features padded with zeros), and finite padding rows."""
    padded = jraph.pad_with_graphs(graph, n_node=graph.nodes.shape[0] + 5,
                                   n_edge=graph.senders.shape[0] + 7,
                                   n_graph=graph.n_node.shape[0] + 2)
    out, out_padded = np.asarray(run(graph)), np.asarray(run(padded))
    real = np.asarray(padding.node_mask(padded))
    assert real.sum() == out.shape[0] and out_padded.shape[0] == out.shape[0] + 5
    np.testing.assert_allclose(out_padded[real], out, rtol=0, atol=1e-6)
    assert np.all(np.isfinite(out_padded))


def float64_params(variables):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])


def numpy_mlp(params, x):
    names = sorted(params, key=lambda name: int(name.split("_")[-1]))
    for i, name in enumerate(names):
        x = x @ params[name]["kernel"] + params[name]["bias"]
        if i < len(names) - 1:
            x = np.maximum(x, 0)
    return x


def numpy_aggregate(messages, receivers, n_nodes, how, scores=None):
    """One node at a time; a node with no incoming edge keeps 0."""
    out = np.zeros((n_nodes,) + messages.shape[1:])
    for i in range(n_nodes):
        rows = np.flatnonzero(receivers == i)
        if how == "softmax-attention":
            rows = rows[np.isfinite(scores[rows]).any(axis=tuple(range(1, scores.ndim)))]
        if rows.size == 0:
            continue
        if how == "sum":
            out[i] = messages[rows].sum(0)
        elif how == "mean":
            out[i] = messages[rows].mean(0)
        elif how == "max":
            out[i] = messages[rows].max(0)
        else:
            s = scores[rows]
            w = np.exp(s - s.max(0))
            w = w / w.sum(0)
            out[i] = np.einsum("e...,e...f->...f", w, messages[rows])
    return out


def numpy_message_passing(params, graph, how, scores=None):
    x, s, r = graph.nodes, graph.senders, graph.receivers
    inputs = np.concatenate([x[s], x[r], graph.edges], axis=1)
    messages = numpy_mlp(params["message"], inputs)
    if how == "softmax-attention" and scores is None:
        scores = inputs @ params["score"]["kernel"][:, 0] + params["score"]["bias"][0]
    incoming = numpy_aggregate(messages, r, len(x), how, scores)
    return numpy_mlp(params["update"], np.concatenate([x, incoming], axis=1))


# jraph's segment ops on the installed JAX: the ones used here are right, the others
# are checked to fail as the module docstring says (so a change in jraph shows up).

def test_jraph_segment_sum_mean_and_max_or_constant_are_right(x64):
    rng = np.random.default_rng(0)
    data, ids = rng.normal(size=(7, 2)), np.array([0, 3, 3, 0, 4, 3, 0])
    for name, how in [("segment_sum", "sum"), ("segment_mean", "mean"),
                      ("segment_max_or_constant", "max")]:
        got = jax.jit(getattr(jraph, name), static_argnums=2)(data, ids, 6)
        np.testing.assert_allclose(got, numpy_aggregate(data, ids, 6, how), rtol=0, atol=1e-12)


def test_jraph_segment_max_and_softmax_fail_on_empty_or_masked_segments(x64):
    data, ids = np.array([1.0, 2.0, -np.inf, -np.inf]), np.array([0, 0, 2, 2])
    assert np.all(np.asarray(jraph.segment_max(data[:2], ids[:2], 3))[1:] == -np.inf)
    softmax = np.asarray(jraph.segment_softmax(data, ids, 3))
    assert np.all(np.isnan(softmax[2:]))  # hence our own segment_softmax
    np.testing.assert_allclose(softmax[:2], segment_softmax(data, ids, 3)[:2], rtol=1e-12)


def test_segment_softmax_against_numpy_with_masked_edges_and_finite_gradients(x64):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 3)) * 30  # large: the shift must guard exp
    logits[[1, 4], 0] = -np.inf
    logits[[5, 6], 2] = -np.inf  # every edge of segment 3 masked in head 2
    ids = np.array([0, 0, 1, 0, 1, 3, 3, 1])
    got = np.asarray(jax.jit(segment_softmax, static_argnums=2)(logits, ids, 5))
    for i in range(5):
        for h in range(3):
            rows = ids == i
            finite = rows & np.isfinite(logits[:, h])
            expected = np.zeros(8)
            if finite.any():
                expected[finite] = np.exp(logits[finite, h] - logits[finite, h].max())
                expected /= expected.sum()
            np.testing.assert_allclose(got[rows, h], expected[rows], rtol=0, atol=1e-12)
    grad = jax.grad(lambda z: jnp.sum(segment_softmax(z, ids, 5) * jnp.arange(24.0).reshape(8, 3)))
    assert np.all(np.isfinite(grad(logits)))


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_aggregate_against_numpy_loops(how, x64):
    rng = np.random.default_rng(2)
    receivers = np.array([1, 1, 3, 1, 4, 3, 4, 4], np.int32)  # nodes 0 and 2 receive nothing
    messages = rng.normal(size=(8, 2, 3)) - 5  # all negative: max must not be clipped at 0
    scores = rng.normal(size=(8, 2)) if how == "softmax-attention" else None
    got = jax.jit(aggregate, static_argnums=(2, 3))(messages, receivers, 5, how, scores)
    expected = numpy_aggregate(messages, receivers, 5, how, scores)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(got)[[0, 2]], 0.0)


def test_aggregate_max_gradient_is_finite_at_empty_nodes():
    receivers = jnp.array([1, 1, 3])
    grad = jax.grad(lambda m: jnp.sum(aggregate(m, receivers, 4, "max")))(jnp.ones((3, 2)))
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_message_passing_against_numpy(how, x64):
    graph = random_batch(3)
    layer = MessagePassing(message_widths=(5, 4), update_widths=(6, 3), aggregation=how)
    variables = numpy_variables(layer, graph, seed=3)
    got = jax.jit(layer.apply)(variables, graph).nodes
    expected = numpy_message_passing(float64_params(variables), graph, how)
    assert got.shape == (13, 3) and got.dtype == jnp.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_message_passing_with_given_scores_masks_edges(x64):
    graph = random_batch(4)
    scores = np.random.default_rng(4).normal(size=graph.senders.shape)
    scores[graph.receivers == 2] = -np.inf  # node 2 hears nothing
    layer = MessagePassing((4,), (3,), aggregation="softmax-attention")
    variables = numpy_variables(layer, graph, scores, seed=4)
    assert "score" not in variables["params"]
    got = jax.jit(layer.apply)(variables, graph, scores).nodes
    expected = numpy_message_passing(float64_params(variables), graph, "softmax-attention",
                                     scores)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("how", ["mean", "max", "softmax-attention"])
def test_padding_does_not_change_real_nodes(how):
    graph = random_batch(5, dtype=np.float32)
    layer = MessagePassing((4,), (3,), aggregation=how)
    variables = layer.init(jax.random.key(5), graph)
    apply = jax.jit(layer.apply)
    check_padding(lambda g: apply(variables, g).nodes, graph)


def test_permuting_nodes_and_edges_permutes_the_output(x64):
    graph = random_batch(6, sizes=(9,))
    permuted, node_perm = permute(graph, 6)
    layer = MessagePassing((4,), (3,), aggregation="softmax-attention")
    variables = numpy_variables(layer, graph, seed=6)
    apply = jax.jit(layer.apply)
    np.testing.assert_allclose(apply(variables, permuted).nodes,
                               np.asarray(apply(variables, graph).nodes)[node_perm],
                               rtol=0, atol=1e-12)
    assert apply._cache_size() == 1  # the same shapes and dtypes: no recompilation


def test_bad_arguments_raise_naming_them():
    graph = random_batch(7)
    with pytest.raises(ValueError, match="aggregation"):
        MessagePassing(aggregation="median")
    with pytest.raises(ValueError, match="message_widths"):
        MessagePassing(message_widths=())
    with pytest.raises(ValueError, match="graph.nodes"):
        MessagePassing().init(jax.random.key(0), graph._replace(nodes=graph.nodes[:, 0]))
    messages, receivers = jnp.ones((4, 2)), jnp.zeros(4, jnp.int32)
    with pytest.raises(ValueError, match="how"):
        aggregate(messages, receivers, 3, "min")
    with pytest.raises(ValueError, match="messages"):
        aggregate(jnp.ones(4), receivers, 3, "sum")
    with pytest.raises(ValueError, match="receivers"):
        aggregate(messages, receivers[:3], 3, "sum")
    with pytest.raises(ValueError, match="scores"):
        aggregate(messages, receivers, 3, "softmax-attention")
    with pytest.raises(ValueError, match="scores"):
        aggregate(messages, receivers, 3, "softmax-attention", jnp.ones(3))
    with pytest.raises(ValueError, match="scores"):
        aggregate(messages, receivers, 3, "sum", jnp.ones(4))
