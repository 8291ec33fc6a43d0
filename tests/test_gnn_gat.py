"""Graph attention (edge lists and dense sets) against NumPy float64 loops over nodes and heads."""

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest
from helpers import numpy_variables
from test_gnn_message_passing import check_padding, float64_params, permute, random_batch

from nri_jax.gnn.gat import GAT, DenseAttention


def leaky_relu(x, slope=0.2):
    return np.where(x > 0, x, slope * x)


def numpy_softmax_sum(logits, values):
    """sum_j softmax(logits)_j values[j] over the finite logits; 0 when none is finite."""
    keep = np.isfinite(logits)
    if not keep.any():
        return np.zeros(values.shape[1:])
    weights = np.exp(logits[keep] - logits[keep].max())
    return (weights / weights.sum()) @ values[keep]


def project(params, x, heads, features):
    return (x @ params["linear"]["kernel"]).reshape(x.shape[:-1] + (heads, features))


def combine(params, heads_out, concat):
    out = heads_out.reshape(heads_out.shape[:-2] + (-1,)) if concat else heads_out.mean(-2)
    return out + params["bias"]


def numpy_gat(params, graph, heads, features, concat, self_loops=True):
    """Node by node, head by head: each node's incoming edge list, then a softmax over it."""
    n = graph.nodes.shape[0]
    z = project(params, graph.nodes, heads, features)
    edges = list(zip(graph.senders, graph.receivers))
    edges += [(i, i) for i in range(n)] if self_loops else []
    out = np.zeros((n, heads, features))
    for i in range(n):
        neighbours = [s for s, r in edges if r == i]
        for h in range(heads):
            logits = np.array([leaky_relu(params["attention_receiver"][h] @ z[i, h]
                                          + params["attention_sender"][h] @ z[j, h])
                               for j in neighbours])
            out[i, h] = numpy_softmax_sum(logits, z[neighbours, h])
    return combine(params, out, concat)


def numpy_dense_attention(params, x, adjacency, heads, features, concat, mode):
    b, n, _ = x.shape
    z = project(params, x, heads, features)
    out = np.zeros((b, n, heads, features))
    for g in range(b):
        for i in range(n):
            for h in range(heads):
                logits = leaky_relu(params["attention_receiver"][h] @ z[g, i, h]
                                    + z[g, :, h] @ params["attention_sender"][h])
                if mode == "mask":
                    logits = np.where(adjacency[g, i] != 0, logits, -np.inf)
                else:
                    logits = logits + adjacency[g, i]
                out[g, i, h] = numpy_softmax_sum(logits, z[g, :, h])
    return combine(params, out, concat)


@pytest.mark.parametrize("heads, concat, self_loops",
                         [(1, True, True), (3, True, True), (3, False, True), (2, True, False)])
def test_gat_against_numpy_loops(heads, concat, self_loops, x64):
    graph = random_batch(0)  # duplicate edges, self-loop edges, nodes receiving nothing
    layer = GAT(features=4, num_heads=heads, concat=concat, add_self_loops=self_loops)
    variables = numpy_variables(layer, graph, seed=heads)
    got = jax.jit(layer.apply)(variables, graph).nodes
    expected = numpy_gat(float64_params(variables), graph, heads, 4, concat, self_loops)
    assert got.shape == (13, heads * 4 if concat else 4) and got.dtype == jnp.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_attention_weights_sum_to_one_per_receiver_and_gradients_are_finite():
    graph = random_batch(1, n_edge_features=None)
    layer = GAT(features=3, num_heads=2, add_self_loops=False)
    variables = layer.init(jax.random.key(1), graph)
    _, state = layer.apply(variables, graph, mutable=["intermediates"])
    (weights,) = state["intermediates"]["attention"]
    totals = jraph.segment_sum(weights, jnp.asarray(graph.receivers), 13)
    receives = np.isin(np.arange(13), graph.receivers)
    np.testing.assert_allclose(np.asarray(totals)[receives], 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(totals)[~receives], 0.0)
    grads = jax.grad(lambda v: jnp.sum(layer.apply(v, graph).nodes ** 2))(variables)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(grads))


def test_attention_dropout_only_when_not_deterministic():
    graph = random_batch(2, dtype=np.float32)
    layer = GAT(features=3, num_heads=2, attention_dropout=0.5)
    variables = layer.init(jax.random.key(2), graph)
    no_dropout = GAT(features=3, num_heads=2).apply(variables, graph).nodes
    apply = jax.jit(layer.apply, static_argnames="deterministic")
    np.testing.assert_array_equal(apply(variables, graph).nodes, no_dropout)
    dropped = [apply(variables, graph, deterministic=False,
                     rngs={"dropout": jax.random.key(k)}).nodes for k in (0, 0, 1)]
    np.testing.assert_array_equal(dropped[0], dropped[1])
    assert not np.allclose(dropped[0], no_dropout) and not np.allclose(dropped[0], dropped[2])
    assert np.all(np.isfinite(dropped[0]))


def test_gat_padding_does_not_change_real_nodes():
    graph = random_batch(3, dtype=np.float32)
    layer = GAT(features=3, num_heads=2, activation=jax.nn.elu)
    variables = layer.init(jax.random.key(3), graph)
    apply = jax.jit(layer.apply)
    check_padding(lambda g: apply(variables, g).nodes, graph)


def test_gat_permuting_nodes_and_edges_permutes_the_output(x64):
    graph = random_batch(4, sizes=(10,), n_edge_features=None)
    permuted, node_perm = permute(graph, 4)
    layer = GAT(features=3, num_heads=2)
    variables = numpy_variables(layer, graph, seed=4)
    apply = jax.jit(layer.apply)
    np.testing.assert_allclose(apply(variables, permuted).nodes,
                               np.asarray(apply(variables, graph).nodes)[node_perm],
                               rtol=0, atol=1e-12)


def random_mask(rng, b, n):
    mask = rng.random((b, n, n)) < 0.4
    mask[0, 2] = False  # node 2 of set 0 attends to nothing
    return mask


@pytest.mark.parametrize("mode", ["mask", "bias"])
def test_dense_attention_against_numpy_loops(mode, x64):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 6, 3))
    mask = random_mask(rng, 2, 6)
    adjacency = (mask.astype(float) if mode == "mask"
                 else np.where(mask, np.log(rng.uniform(0.1, 1, mask.shape)), -np.inf))
    layer = DenseAttention(features=4, num_heads=2, adjacency_mode=mode)
    variables = numpy_variables(layer, x, adjacency, seed=5)
    got = jax.jit(layer.apply)(variables, x, adjacency)
    expected = numpy_dense_attention(float64_params(variables), x, adjacency, 2, 4, True, mode)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(got)[0, 2], float64_params(variables)["bias"],
                               atol=1e-12)  # no neighbour: 0 before the bias, not NaN
    grads = jax.grad(lambda v, z: jnp.sum(layer.apply(v, z, adjacency) ** 2), argnums=(0, 1))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(grads(variables, x)))


def test_dense_attention_without_adjacency_attends_to_every_node(x64):
    x = np.random.default_rng(6).normal(size=(2, 5, 3))
    layer = DenseAttention(features=2, num_heads=3, concat=False)
    variables = numpy_variables(layer, x, seed=6)
    got = jax.jit(layer.apply)(variables, x)
    expected = numpy_dense_attention(float64_params(variables), x, np.ones((2, 5, 5)), 3, 2,
                                     False, "mask")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_dense_attention_equals_gat_on_the_same_neighbourhoods(x64):
    rng = np.random.default_rng(7)
    b, n = 3, 5
    x = rng.normal(size=(b, n, 3))
    mask = random_mask(rng, b, n) & ~np.eye(n, dtype=bool)
    graph_id, receivers, senders = np.nonzero(mask)
    graph = jraph.GraphsTuple(
        nodes=x.reshape(b * n, 3), edges=None, globals=None,
        senders=(senders + n * graph_id).astype(np.int32),
        receivers=(receivers + n * graph_id).astype(np.int32),
        n_node=np.full(b, n, np.int32), n_edge=mask.sum(axis=(1, 2)).astype(np.int32))
    sparse, dense = GAT(features=2, num_heads=2), DenseAttention(features=2, num_heads=2)
    variables = numpy_variables(sparse, graph, seed=7)
    with_self = mask | np.eye(n, dtype=bool)  # GAT's self-loops
    np.testing.assert_allclose(jax.jit(dense.apply)(variables, x, with_self),
                               jax.jit(sparse.apply)(variables, graph).nodes.reshape(b, n, 4),
                               rtol=0, atol=1e-12)


def test_dense_attention_is_permutation_equivariant(x64):
    rng = np.random.default_rng(8)
    x, mask = rng.normal(size=(2, 7, 3)), random_mask(rng, 2, 7)
    perm = rng.permutation(7)
    layer = DenseAttention(features=2, num_heads=2)
    variables = numpy_variables(layer, x, mask, seed=8)
    apply = jax.jit(layer.apply)
    np.testing.assert_allclose(apply(variables, x[:, perm], mask[:, perm][:, :, perm]),
                               np.asarray(apply(variables, x, mask))[:, perm],
                               rtol=0, atol=1e-12)


def test_bad_arguments_raise_naming_them():
    graph = random_batch(9)
    with pytest.raises(ValueError, match="num_heads"):
        GAT(features=3, num_heads=0)
    with pytest.raises(ValueError, match="features"):
        DenseAttention(features=-1)
    with pytest.raises(ValueError, match="attention_dropout"):
        GAT(features=3, attention_dropout=1.0)
    with pytest.raises(ValueError, match="adjacency_mode"):
        DenseAttention(features=3, adjacency_mode="soft")
    with pytest.raises(ValueError, match="graph.nodes"):
        GAT(3).init(jax.random.key(0), graph._replace(nodes=graph.nodes[:, 0]))
    with pytest.raises(ValueError, match="nodes"):
        DenseAttention(3).init(jax.random.key(0), jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="adjacency"):
        DenseAttention(3).init(jax.random.key(0), jnp.ones((2, 4, 3)), jnp.ones((2, 4, 3)))
    with pytest.raises(ValueError, match="adjacency must be float"):
        DenseAttention(3, adjacency_mode="bias").init(jax.random.key(0), jnp.ones((2, 4, 3)),
                                                      jnp.ones((2, 4, 4), bool))
