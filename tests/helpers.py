"""Helpers shared by the model and graph-layer tests."""

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from nri_jax import configs, experiment
from nri_jax import data as data_lib


def numpy_variables(module, *args, seed=0, **kwargs):
    """Random variables for `module` drawn with NumPy (no compiled initialisers: fast tests).

    Kernels N(0, 1/fan_in), biases N(0, 0.01), BatchNorm scale ~1, running mean 0, var 1.
    """
    rng = np.random.default_rng(seed)
    key = jax.random.key(0)
    shapes = jax.eval_shape(lambda: module.init(
        {"params": key, "gumbel": key, "dropout": key}, *args, **kwargs))

    def draw(path, leaf):
        name = path[-1].key
        if name in ("mean", "var"):
            return np.full(leaf.shape, float(name == "var"), leaf.dtype)
        if name == "scale":
            return (1 + 0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)
        if name.endswith("bias"):
            return (0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)
        return (rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[-2])).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def small_springs_splits(data_dir) -> tuple:
    """(train, valid) `data.Split`s of a 1024/256/256 springs-5 dataset in `data_dir`: the
    size the supervised learning checks share (the same simulator programs, compiled once
    per session through the tests' compilation cache)."""
    data = configs.DataConfig(n_train=1024, n_valid=256, n_test=256, data_dir=str(data_dir))
    dataset, _ = experiment.load_data(data)
    split = lambda s: data_lib.Split(jnp.asarray(np.asarray(s.features[:])),  # noqa: E731
                                     jnp.asarray(np.asarray(s.labels[:])))
    return split(dataset.train), split(dataset.valid)


# The default batch of `random_multigraphs`: a one-node graph without edges in the middle.
SIZES, N_EDGES = (4, 1, 6), (6, 0, 9)


def random_multigraphs(seed, sizes=SIZES, n_edges=N_EDGES, f_node=3, f_edge=2,
                       f_global=None) -> jraph.GraphsTuple:
    """A batch of random float64 multigraphs (self-loops, repeated edges) in which node 0
    of each graph has no incoming edge.

    f_edge / f_global None: no edge features / globals. A graph of 0 nodes must have 0 edges.
    """
    rng = np.random.default_rng(seed)
    first = np.cumsum((0,) + tuple(sizes[:-1]))
    senders = np.concatenate([o + rng.integers(0, max(n, 1), e)
                              for o, n, e in zip(first, sizes, n_edges)])
    receivers = np.concatenate([o + rng.integers(1, max(n, 2), e)
                                for o, n, e in zip(first, sizes, n_edges)])
    nodes = rng.normal(size=(sum(sizes), f_node))
    edges = None if f_edge is None else rng.normal(size=(sum(n_edges), f_edge))
    globals_ = None if f_global is None else rng.normal(size=(len(sizes), f_global))
    return jraph.GraphsTuple(
        nodes=nodes, edges=edges, globals=globals_,
        senders=senders.astype(np.int32), receivers=receivers.astype(np.int32),
        n_node=np.array(sizes, np.int32), n_edge=np.array(n_edges, np.int32))


def padded_with_junk(graph, seed=9) -> jraph.GraphsTuple:
    """`jraph.pad_with_graphs` (a padding graph and an empty one), padding rows then
    overwritten with large random values that would show if they leaked."""
    n, e, g = len(graph.nodes), len(graph.senders), len(graph.n_node)
    padded = jraph.pad_with_graphs(graph, n_node=n + 3, n_edge=e + 4, n_graph=g + 2)
    rng = np.random.default_rng(seed)

    def junk(x, real):
        return None if x is None else np.concatenate(
            [x[:real], 100 * rng.normal(size=(len(x) - real,) + x.shape[1:])])
    return padded._replace(nodes=junk(padded.nodes, n), edges=junk(padded.edges, e),
                           globals=junk(padded.globals, g))
