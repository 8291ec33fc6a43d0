"""PairNorm per graph and the residual wrapper against NumPy float64 loops over graphs."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from nri_jax.gnn import norm
from helpers import numpy_variables

SIZES = (4, 1, 6, 3)  # a one-node graph among them


def random_graphs(seed, sizes=SIZES, f_node=3, shift=2.0):
    """Graphs of random nodes (offset from 0, so that centring matters) and a few edges."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    return jraph.GraphsTuple(
        nodes=shift + rng.normal(size=(n, f_node)), edges=rng.normal(size=(5, 2)),
        senders=rng.integers(0, sizes[0], 5).astype(np.int32),
        receivers=rng.integers(1, sizes[0], 5).astype(np.int32), globals=None,
        n_node=np.array(sizes, np.int32), n_edge=np.array([5] + [0] * (len(sizes) - 1), np.int32))


def padded_with_junk(graph, seed=9):
    """`jraph.pad_with_graphs` (a padding graph and an empty one), padding nodes then
    overwritten with large random values that would show if they leaked."""
    n, e, g = len(graph.nodes), len(graph.senders), len(graph.n_node)
    padded = jraph.pad_with_graphs(graph, n_node=n + 3, n_edge=e + 4, n_graph=g + 2)
    junk = 100 * np.random.default_rng(seed).normal(size=(3, graph.nodes.shape[1]))
    return padded._replace(nodes=np.concatenate([padded.nodes[:n], junk]))


def np_pair_norm(nodes, sizes, scale, mode, epsilon):
    """Graph by graph, row by row."""
    out, start = [], 0
    for n in sizes:
        x = np.asarray(nodes[start:start + n], np.float64)
        start += n
        mean = x.mean(axis=0)
        for row in x:
            if mode == "PN":
                spread = np.mean([np.sum((y - mean) ** 2) for y in x])
                out.append(scale * (row - mean) / np.sqrt(epsilon + spread))
            elif mode == "PN-SI":
                out.append(scale * (row - mean) / np.sqrt(epsilon + np.sum((row - mean) ** 2)))
            else:
                out.append(scale * row / np.sqrt(epsilon + np.sum(row ** 2)) - mean)
    return np.stack(out)


@pytest.mark.parametrize("mode", norm.PAIR_NORM_MODES)
@pytest.mark.parametrize("scale, epsilon", [(1.0, 1e-5), (2.5, 0.3)])
def test_pair_norm_matches_numpy(x64, mode, scale, epsilon):
    graph = random_graphs(0)
    module = norm.PairNorm(scale, mode, epsilon)
    out = jax.jit(module.apply)({}, graph)
    assert out.nodes.dtype == jnp.float64
    np.testing.assert_allclose(out.nodes, np_pair_norm(graph.nodes, SIZES, scale, mode, epsilon),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_pair_norm_statistics(x64, scale):
    """PN: per graph mean 0, mean squared row norm s^2; PN-SI: every row norm s;
    PN-SCS: every row of out + mean has norm s. Graphs of >= 2 nodes, eps = 0."""
    sizes = (4, 2, 6)
    graph = random_graphs(1, sizes)
    bounds = np.cumsum((0,) + sizes)
    run = jax.jit(functools.partial(norm.pair_norm, scale=scale, epsilon=0.0),
                  static_argnames="mode")
    pn, si, scs = (run(graph, mode=m).nodes for m in norm.PAIR_NORM_MODES)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        block = slice(start, stop)
        np.testing.assert_allclose(pn[block].mean(axis=0), 0.0, atol=1e-12)
        np.testing.assert_allclose(np.mean(np.sum(pn[block] ** 2, axis=1)), scale ** 2, rtol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(si[block], axis=1), scale, rtol=1e-12)
        shifted = scs[block] + graph.nodes[block].mean(axis=0, keepdims=True)
        np.testing.assert_allclose(np.linalg.norm(shifted, axis=1), scale, rtol=1e-12)
    # Can fail: the statistics are per graph, not of the whole batch.
    whole = np.asarray(graph.nodes) - np.asarray(graph.nodes).mean(axis=0)
    whole = scale * whole / np.sqrt(np.mean(np.sum(whole ** 2, axis=1)))
    assert not np.allclose(pn, whole, atol=1e-3)


@pytest.mark.parametrize("mode", norm.PAIR_NORM_MODES)
def test_pair_norm_ignores_padding(mode):
    graph = random_graphs(2)
    run = jax.jit(functools.partial(norm.pair_norm, mode=mode))
    out, out_padded = run(graph), run(padded_with_junk(graph))
    np.testing.assert_allclose(out_padded.nodes[:len(graph.nodes)], out.nodes, rtol=1e-6,
                               atol=1e-6)
    assert np.all(np.isfinite(out_padded.nodes))


def test_pair_norm_is_permutation_equivariant(x64):
    graph = random_graphs(3)
    rng = np.random.default_rng(4)
    first = np.cumsum((0,) + SIZES[:-1])
    node_map = np.concatenate([o + rng.permutation(n) for o, n in zip(first, SIZES)])
    out = norm.pair_norm(graph).nodes
    permuted = norm.pair_norm(graph._replace(nodes=graph.nodes[node_map])).nodes
    np.testing.assert_allclose(permuted, out[node_map], rtol=1e-10, atol=1e-10)


class NodeDense(nn.Module):
    """A test layer: Dense on the node features."""

    features: int

    @nn.compact
    def __call__(self, graph):
        return graph._replace(nodes=nn.Dense(self.features, name="dense")(graph.nodes))


@pytest.mark.parametrize("features", [3, 5])
def test_residual_matches_numpy(x64, features):
    graph = random_graphs(5)
    module = norm.Residual(NodeDense(features))
    variables = numpy_variables(module, graph)
    out = jax.jit(module.apply)(variables, graph)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    assert ("projection" in p) == (features != graph.nodes.shape[1])
    skip = graph.nodes @ p["projection"]["kernel"] if "projection" in p else graph.nodes
    expected = graph.nodes @ p["layer"]["dense"]["kernel"] + p["layer"]["dense"]["bias"] + skip
    np.testing.assert_allclose(out.nodes, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(out.edges, graph.edges)


def test_residual_pair_norm_ignores_padding():
    graph = random_graphs(6)
    module = norm.Residual(norm.PairNorm(mode="PN-SI"))
    apply = jax.jit(module.apply)
    out, out_padded = apply({}, graph), apply({}, padded_with_junk(graph))
    np.testing.assert_allclose(out.nodes, graph.nodes + norm.pair_norm(graph, mode="PN-SI").nodes,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out_padded.nodes[:len(graph.nodes)], out.nodes, rtol=1e-6,
                               atol=1e-6)
    assert np.all(np.isfinite(out_padded.nodes))


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="LN"), "mode must be one of"),
    (dict(scale=0.0), "scale must be > 0"),
    (dict(epsilon=-1e-3), "epsilon must be >= 0"),
])
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        norm.PairNorm(**kwargs)
    with pytest.raises(ValueError, match=match):
        norm.pair_norm(random_graphs(7), **kwargs)


def test_residual_rejects_a_layer_that_changes_the_node_count():
    class DropNode(nn.Module):
        def __call__(self, graph):
            return graph._replace(nodes=graph.nodes[1:])

    with pytest.raises(ValueError, match="layer must return nodes"):
        norm.Residual(DropNode()).init(jax.random.key(0), random_graphs(8))
