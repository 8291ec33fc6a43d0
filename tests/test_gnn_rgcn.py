"""Relational GCN and NRI's typed message MLPs against NumPy float64 loops and dense adjacencies."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import numpy_variables
from test_gnn_message_passing import check_padding, float64_params, permute, random_batch

from nri_jax import graphs
from nri_jax.gnn.rgcn import RGCN, TypedMessages


def relation_kernels(params):
    if "kernels" in params:
        return params["kernels"]
    return np.einsum("kb,bio->kio", params["coefficients"], params["bases"])


def numpy_rgcn_int_types(params, graph, types, k):
    """The paper's sum: for each node and type, the mean of W_k v_j over N_i^k."""
    x, kernels = graph.nodes, relation_kernels(params)
    out = x @ params["self_connection"]["kernel"] + params["bias"]
    for i in range(x.shape[0]):
        for t in range(k):
            neighbours = graph.senders[(graph.receivers == i) & (types == t)]
            if neighbours.size:
                out[i] += (x[neighbours] @ kernels[t]).sum(0) / neighbours.size
    return out


def numpy_rgcn_soft_types(params, graph, weights):
    """sum_k diag(1 / c_k) A_k X W_k + X W_0 + b, with A_k[r, s] the type-k weight of s -> r."""
    x, kernels = graph.nodes, relation_kernels(params)
    n = x.shape[0]
    out = x @ params["self_connection"]["kernel"] + params["bias"]
    for t in range(weights.shape[1]):
        adjacency = np.zeros((n, n))
        for s, r, w in zip(graph.senders, graph.receivers, weights[:, t]):
            adjacency[r, s] += w
        counts = adjacency.sum(1)
        inverse = np.divide(1, counts, out=np.zeros(n), where=counts > 0)
        out += (inverse[:, None] * adjacency) @ x @ kernels[t]
    return out


def random_soft_types(seed, n_edges, k):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n_edges, k)) * 2
    weights = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    weights[:, -1] = 0.0  # a type nothing carries: c_ik = 0 everywhere
    return weights


@pytest.mark.parametrize("num_bases", [None, 2])
def test_rgcn_int_types_against_numpy_loops(num_bases, x64):
    graph = random_batch(0)  # duplicate edges, self-loop edges, nodes receiving nothing
    types = np.random.default_rng(0).integers(0, 3, size=graph.senders.shape).astype(np.int32)
    layer = RGCN(features=4, num_edge_types=3, num_bases=num_bases)
    variables = numpy_variables(layer, graph, types, seed=0)
    got = jax.jit(layer.apply)(variables, graph, types).nodes
    expected = numpy_rgcn_int_types(float64_params(variables), graph, types, 3)
    assert got.shape == (13, 4) and got.dtype == jnp.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("num_bases", [None, 2])
def test_rgcn_soft_types_against_dense_numpy(num_bases, x64):
    graph = random_batch(1)
    weights = random_soft_types(1, len(graph.senders), 4)
    layer = RGCN(features=3, num_edge_types=4, num_bases=num_bases)
    variables = numpy_variables(layer, graph, weights, seed=1)
    got = jax.jit(layer.apply)(variables, graph, weights).nodes
    np.testing.assert_allclose(got, numpy_rgcn_soft_types(float64_params(variables), graph,
                                                          weights), rtol=0, atol=1e-10)


def test_one_hot_weights_equal_int_types_and_options_drop_their_terms(x64):
    graph = random_batch(2, n_edge_features=None)
    types = np.random.default_rng(2).integers(0, 2, size=graph.senders.shape).astype(np.int32)
    layer = RGCN(features=3, num_edge_types=2, self_connection=False, use_bias=False,
                 activation=jnp.tanh)
    variables = numpy_variables(layer, graph, types, seed=2)
    assert set(variables["params"]) == {"kernels"}
    apply = jax.jit(layer.apply)
    np.testing.assert_allclose(apply(variables, graph, types).nodes,
                               apply(variables, graph, np.eye(2)[types]).nodes,
                               rtol=0, atol=1e-12)
    params = dict(float64_params(variables), self_connection={"kernel": np.zeros((3, 3))},
                  bias=np.zeros(3))
    np.testing.assert_allclose(apply(variables, graph, types).nodes,
                               np.tanh(numpy_rgcn_int_types(params, graph, types, 2)),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("soft", [False, True])
def test_padding_does_not_change_real_nodes(soft):
    graph = random_batch(3, dtype=np.float32, n_edge_features=None)
    n_edges = len(graph.senders)
    types = (random_soft_types(3, n_edges, 3).astype(np.float32) if soft
             else np.random.default_rng(3).integers(0, 3, size=n_edges).astype(np.int32))
    graph = graph._replace(edges=types)  # padded with type 0 / weight 0
    layer = RGCN(features=3, num_edge_types=3, num_bases=2)
    variables = layer.init(jax.random.key(3), graph, types)
    apply = jax.jit(layer.apply)
    check_padding(lambda g: apply(variables, g, g.edges).nodes, graph)


def test_permuting_nodes_and_edges_permutes_the_output(x64):
    graph = random_batch(4, sizes=(10,), n_edge_features=None)
    graph = graph._replace(edges=random_soft_types(4, len(graph.senders), 3))
    permuted, node_perm = permute(graph, 4)  # the types travel with their edges
    layer = RGCN(features=3, num_edge_types=3)
    variables = numpy_variables(layer, graph, graph.edges, seed=4)
    apply = jax.jit(layer.apply)
    np.testing.assert_allclose(apply(variables, permuted, permuted.edges).nodes,
                               np.asarray(apply(variables, graph, graph.edges).nodes)[node_perm],
                               rtol=0, atol=1e-12)


def test_bad_arguments_raise_naming_them():
    graph = random_batch(5)
    n_edges = len(graph.senders)
    types = np.zeros(n_edges, np.int32)
    with pytest.raises(ValueError, match="num_edge_types"):
        RGCN(features=3, num_edge_types=0)
    with pytest.raises(ValueError, match="num_bases"):
        RGCN(features=3, num_edge_types=2, num_bases=0)
    with pytest.raises(ValueError, match="features"):
        RGCN(features=0, num_edge_types=2)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="edge_types"):
        RGCN(3, 2).init(key, graph, np.ones((n_edges, 3), np.float32))
    with pytest.raises(ValueError, match="edge_types"):
        RGCN(3, 2).init(key, graph, np.ones(n_edges, np.float32))
    with pytest.raises(ValueError, match="edge_types"):
        RGCN(3, 2).init(key, graph, types[:-1])
    with pytest.raises(ValueError, match="graph.nodes"):
        RGCN(3, 2).init(key, graph._replace(nodes=graph.nodes[None]), types)


def numpy_typed_messages(params, nodes, weights, senders, receivers, skip_first, activation):
    """One message per edge, written out: sum over types of w[k] act(W2 act(W1 [v_s, v_r]))."""
    out = np.zeros((len(senders), params["second_bias"].shape[-1]))
    for e, (s, r) in enumerate(zip(senders, receivers)):
        pair = np.concatenate([nodes[s], nodes[r]])
        for k in range(1 if skip_first else 0, weights.shape[1]):
            hidden = activation(pair @ params["first_kernel"][k] + params["first_bias"][k])
            message = activation(hidden @ params["second_kernel"][k] + params["second_bias"][k])
            out[e] += weights[e, k] * message
    return out


@pytest.mark.parametrize("skip_first", [False, True])
def test_typed_messages_on_any_graph_against_numpy_loops(skip_first, x64):
    graph = random_batch(6, n_edge_features=None)  # duplicates, self-loops, silent nodes
    weights = random_soft_types(6, len(graph.senders), 3)
    layer = TypedMessages(hidden=5, n_edge_types=3, skip_first=skip_first, activation=jnp.tanh)
    args = (graph.nodes, weights, graph.senders, graph.receivers)
    variables = numpy_variables(layer, *args, seed=6)
    got = jax.jit(layer.apply)(variables, *args)
    expected = numpy_typed_messages(float64_params(variables), *args, skip_first, np.tanh)
    assert got.shape == (len(graph.senders), 5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_typed_messages_fully_connected_dense_path_equals_the_index_path(x64):
    """A batch [B, N, F] on the default (fully connected, dense) index against the same
    graphs as one GraphsTuple on jax index arrays (gathers), values and gradients."""
    rng = np.random.default_rng(7)
    nodes = rng.normal(size=(3, 4, 2))
    weights = random_soft_types(7, 3 * 12, 2).reshape(3, 12, 2)
    layer = TypedMessages(hidden=6, n_edge_types=2, skip_first=False, activation=jax.nn.relu)
    variables = numpy_variables(layer, nodes, weights, seed=7)
    batched = graphs.fully_connected_graphs(jnp.asarray(nodes))

    def dense(params, x):
        return layer.apply({"params": params}, x, weights).sum(axis=(0, 1)) @ np.arange(6.0)

    def indexed(params, x):
        return layer.apply({"params": params}, x.reshape(12, 2), weights.reshape(36, 2),
                           batched.senders, batched.receivers).sum(0) @ np.arange(6.0)

    params = variables["params"]
    np.testing.assert_allclose(
        layer.apply(variables, nodes, weights).reshape(36, 6),
        layer.apply(variables, batched.nodes, weights.reshape(36, 2), batched.senders,
                    batched.receivers), rtol=0, atol=1e-12)
    for a, b in zip(jax.tree.leaves(jax.grad(dense, argnums=(0, 1))(params, nodes)),
                    jax.tree.leaves(jax.grad(indexed, argnums=(0, 1))(params, nodes))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_typed_messages_bfloat16_relu_keeps_the_plain_relu_gradients():
    """In bfloat16 the hidden ReLU saves its bfloat16 output for its backward pass
    (`TypedMessages._hidden_activation`): the same values and gradients as a ReLU
    that autodiff differentiates from its float32 input."""
    rng = np.random.default_rng(9)
    nodes = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    weights = jnp.asarray(random_soft_types(9, 3 * 20, 2).reshape(3, 20, 2), jnp.float32)
    probe = jnp.asarray(rng.normal(size=(3, 20, 16)), jnp.float32)

    def layer(activation):
        return TypedMessages(hidden=16, n_edge_types=2, skip_first=False,
                             activation=activation, compute_dtype="bfloat16")

    saving, plain = layer(jax.nn.relu), layer(lambda v: jax.nn.relu(v))
    params = saving.init(jax.random.key(9), nodes, weights)["params"]

    def loss(module, params, x, w):
        return jnp.sum(module.apply({"params": params}, x, w) * probe)

    def value_and_grads(module):
        return jax.tree.leaves(jax.value_and_grad(functools.partial(loss, module),
                                                  argnums=(0, 1, 2))(params, nodes, weights))

    for a, b in zip(value_and_grads(saving), value_and_grads(plain)):
        assert np.any(a != 0)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_typed_messages_refuse_a_wrong_edge_type_shape_and_a_lone_index():
    graph = random_batch(8, n_edge_features=None)
    n_edges = len(graph.senders)
    layer = TypedMessages(hidden=4, n_edge_types=2, skip_first=True, activation=jnp.tanh)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=rf"edge_types must be \[\.\.\., {n_edges}, 2\]"):
        layer.init(key, graph.nodes, np.ones((n_edges, 3)), graph.senders, graph.receivers)
    with pytest.raises(ValueError, match="senders and receivers"):
        layer.init(key, graph.nodes, np.ones((n_edges, 2)), graph.senders)
