"""DiffPool and the dense conversion against NumPy float64 graph-by-graph references."""

import functools

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from nri_jax.gnn import diffpool
from helpers import numpy_variables, random_multigraphs

REAL = (5, 3, 1)  # real nodes of each graph, padded to N = 6
N = 6


def dense_batch(seed, real=REAL, n=N, f=3):
    """Random weighted directed adjacency (node 0 of each graph receives nothing) and
    features; padding positions hold junk that must be ignored."""
    rng = np.random.default_rng(seed)
    mask = np.arange(n)[None, :] < np.array(real)[:, None]
    adjacency = rng.uniform(0.5, 2.0, size=(len(real), n, n)) * (rng.uniform(size=(len(real), n, n))
                                                                  < 0.5)
    adjacency[:, 0, :] = 0.0
    adjacency = np.where(mask[:, :, None] & mask[:, None, :], adjacency, 50.0)
    nodes = np.where(mask[:, :, None], rng.normal(size=(len(real), n, f)), -70.0)
    return nodes, adjacency, mask


def np_gnn(params, x, a, activation_last=False):
    """DenseGCN layers gcn_0, gcn_1, ... on one graph's real nodes: (A + I) / rowsum."""
    p = (a + np.eye(len(a))) / (a + np.eye(len(a))).sum(axis=1, keepdims=True)
    for i in range(len(params)):
        layer = params[f"gcn_{i}"]["dense"]
        x = p @ x @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        if i < len(params) - 1 or activation_last:
            x = np.maximum(x, 0)
    return x


def np_diffpool(params, nodes, adjacency, mask):
    outputs = []
    for x, a, m in zip(nodes, adjacency, mask):
        n = int(m.sum())
        x, a = x[:n], a[:n, :n]
        logits = np_gnn(params["pool_gnn"], x, a)
        s = np.exp(logits - logits.max(axis=1, keepdims=True))
        s /= s.sum(axis=1, keepdims=True)
        z = np_gnn(params["embed_gnn"], x, a)
        entropy = -np.sum(s * np.log(s), axis=1).mean() if n else 0.0
        outputs.append((s.T @ z, s.T @ a @ s, s, np.linalg.norm(a - s @ s.T), entropy))
    return outputs


def _check_against_numpy(out, expected, mask, atol):
    for b, (x, a, s, link, entropy) in enumerate(expected):
        n = int(mask[b].sum())
        np.testing.assert_allclose(out.nodes[b], x, rtol=atol, atol=atol)
        np.testing.assert_allclose(out.adjacency[b], a, rtol=atol, atol=atol)
        np.testing.assert_allclose(out.assignment[b, :n], s, rtol=atol, atol=atol)
        np.testing.assert_array_equal(out.assignment[b, n:], 0.0)
        np.testing.assert_allclose(out.link_loss[b], link, rtol=atol, atol=atol)
        np.testing.assert_allclose(out.entropy_loss[b], entropy, rtol=atol, atol=atol)


@pytest.mark.parametrize("pool_widths, embed_widths", [((), (4,)), ((5,), (6, 4))])
def test_diffpool_matches_numpy(x64, pool_widths, embed_widths):
    nodes, adjacency, mask = dense_batch(0)
    module = diffpool.DiffPool(clusters=3, embed_widths=embed_widths, pool_widths=pool_widths)
    variables = numpy_variables(module, nodes, adjacency, mask)
    out = jax.jit(module.apply)(variables, nodes, adjacency, mask)
    assert out.nodes.shape == (3, 3, 4) and out.adjacency.shape == (3, 3, 3)
    assert out.link_loss.shape == out.entropy_loss.shape == (3,)
    expected = np_diffpool(variables["params"], nodes, adjacency, mask)
    _check_against_numpy(out, expected, mask, 1e-10)
    # Each real node's assignment sums to 1, so each graph's pooled mass is its node count.
    np.testing.assert_allclose(out.assignment.sum(axis=(1, 2)), REAL, rtol=1e-12)


def test_padding_positions_are_ignored(x64):
    nodes, adjacency, mask = dense_batch(1)
    module = diffpool.DiffPool(clusters=2, embed_widths=(4,), pool_widths=(5,))
    variables = numpy_variables(module, nodes, adjacency, mask)
    apply = jax.jit(module.apply)
    out = apply(variables, nodes, adjacency, mask)
    other = apply(variables, np.where(mask[:, :, None], nodes, 3.0),
                  np.where(mask[:, :, None] & mask[:, None, :], adjacency, -9.0), mask)
    for a, b in zip(out, other):
        np.testing.assert_array_equal(a, b)


def test_node_permutation_leaves_pooled_graph_and_losses_unchanged(x64):
    nodes, adjacency, mask = dense_batch(2)
    perm = np.array([3, 0, 4, 2, 1, 5])  # moves the real nodes of graph 0 only
    nodes_p, adjacency_p = nodes.copy(), adjacency.copy()
    nodes_p[0] = nodes[0, perm]
    adjacency_p[0] = adjacency[0][np.ix_(perm, perm)]
    module = diffpool.DiffPool(clusters=3, embed_widths=(4,), pool_widths=(5,))
    variables = numpy_variables(module, nodes, adjacency, mask)
    apply = jax.jit(module.apply)
    out, out_p = apply(variables, nodes, adjacency, mask), apply(variables, nodes_p, adjacency_p,
                                                                 mask)
    for name in ("nodes", "adjacency", "link_loss", "entropy_loss"):
        np.testing.assert_allclose(getattr(out_p, name), getattr(out, name), rtol=1e-10,
                                   atol=1e-12)
    np.testing.assert_allclose(out_p.assignment[0], out.assignment[0, perm], rtol=1e-10)
    # Can fail: assignments differ between nodes.
    assert not np.allclose(out_p.assignment[0], out.assignment[0], atol=1e-3)


def two_graphs():
    """A triangle 0->1->2->0 with a repeated edge 0->1, and a pair 1->0 (nodes 3, 4)."""
    return jraph.GraphsTuple(
        nodes=np.arange(10.0).reshape(5, 2), edges=None,
        senders=np.array([0, 1, 2, 0, 4], np.int32), receivers=np.array([1, 2, 0, 1, 3], np.int32),
        globals=None, n_node=np.array([3, 2], np.int32), n_edge=np.array([4, 1], np.int32))


def test_to_dense_matches_hand_built_tensors():
    expected_nodes = np.zeros((2, 4, 2))
    expected_nodes[0, :3] = np.arange(6.0).reshape(3, 2)
    expected_nodes[1, :2] = np.arange(6.0, 10.0).reshape(2, 2)
    expected_adjacency = np.zeros((2, 4, 4))  # receiver row, sender column
    expected_adjacency[0, 1, 0], expected_adjacency[0, 2, 1], expected_adjacency[0, 0, 2] = 2, 1, 1
    expected_adjacency[1, 0, 1] = 1
    expected_mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    dense = jax.jit(functools.partial(diffpool.to_dense, max_nodes=4, padded=False))(two_graphs())
    np.testing.assert_array_equal(dense.nodes, expected_nodes)
    np.testing.assert_array_equal(dense.adjacency, expected_adjacency)
    np.testing.assert_array_equal(dense.mask, expected_mask)
    # Padded: the same real graphs, then two empty (all masked) padding graphs.
    padded = jraph.pad_with_graphs(two_graphs(), n_node=9, n_edge=8, n_graph=4)
    padded = padded._replace(nodes=np.concatenate([padded.nodes[:5], np.full((4, 2), 99.0)]))
    dense_padded = jax.jit(functools.partial(diffpool.to_dense, max_nodes=4))(padded)
    for got, want in zip(dense_padded, (expected_nodes, expected_adjacency, expected_mask)):
        np.testing.assert_array_equal(got[:2], want)
        np.testing.assert_array_equal(got[2:], 0)


def test_to_dense_with_edge_weights():
    weights = np.array([0.5, 2.0, 3.0, 0.25, 4.0])
    dense = diffpool.to_dense(two_graphs(), max_nodes=3, padded=False, edge_weights=weights)
    np.testing.assert_array_equal(dense.adjacency[0], [[0, 0, 3.0], [0.75, 0, 0], [0, 2.0, 0]])
    np.testing.assert_array_equal(dense.adjacency[1], [[0, 4.0, 0], [0, 0, 0], [0, 0, 0]])


def random_graphs(seed):
    return random_multigraphs(seed, sizes=(5, 1, 4), n_edges=(7, 0, 5), f_edge=None)


def test_padded_graphs_pool_like_unpadded_ones_and_stay_finite():
    graph = random_graphs(3)
    padded = jraph.pad_with_graphs(graph, n_node=14, n_edge=16, n_graph=5)
    rng = np.random.default_rng(4)
    padded = padded._replace(nodes=np.concatenate([padded.nodes[:10],
                                                   100 * rng.normal(size=(4, 3))]))
    module = diffpool.DiffPool(clusters=2, embed_widths=(4,), pool_widths=(5,))

    @functools.partial(jax.jit, static_argnames="padded")
    def pool(variables, graph, padded):
        return module.apply(variables, *diffpool.to_dense(graph, max_nodes=5, padded=padded))
    dense = diffpool.to_dense(graph, max_nodes=5, padded=False)
    variables = numpy_variables(module, *dense)
    out = pool(variables, graph, padded=False)
    out_padded = pool(variables, padded, padded=True)
    for a, b in zip(out, out_padded):
        np.testing.assert_allclose(b[:3], a, rtol=1e-6, atol=1e-6)
        assert np.all(np.isfinite(b))
    np.testing.assert_array_equal(out_padded.link_loss[3:], 0.0)
    np.testing.assert_array_equal(out_padded.entropy_loss[3:], 0.0)

    def loss(variables):
        result = pool(variables, padded, padded=True)
        return jnp.sum(result.link_loss + result.entropy_loss + result.nodes.sum(axis=(1, 2)))
    gradients = jax.jit(jax.grad(loss))(variables)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(gradients))


def test_bad_arguments_are_rejected():
    nodes, adjacency, mask = dense_batch(5)
    module = diffpool.DiffPool(clusters=2, embed_widths=(4,))
    with pytest.raises(ValueError, match="adjacency must be"):
        module.init(jax.random.key(0), nodes, adjacency[:, :5], mask)
    with pytest.raises(ValueError, match="mask must be"):
        module.init(jax.random.key(0), nodes, adjacency, mask[:2])
    with pytest.raises(ValueError, match="nodes must be"):
        module.init(jax.random.key(0), nodes[0], adjacency, mask)
    with pytest.raises(ValueError, match="clusters must be a positive int"):
        diffpool.DiffPool(clusters=0, embed_widths=(4,))
    with pytest.raises(ValueError, match="embed_widths must name at least one"):
        diffpool.DiffPool(clusters=2, embed_widths=())
    with pytest.raises(ValueError, match="max_nodes must be at least the largest graph's 3"):
        diffpool.to_dense(two_graphs(), max_nodes=2, padded=False)
    with pytest.raises(ValueError, match="edge_weights must be"):
        diffpool.to_dense(two_graphs(), max_nodes=3, padded=False, edge_weights=np.ones(4))
