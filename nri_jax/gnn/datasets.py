"""Synthetic graphs the examples and tests make without downloads.

    stochastic_block_model   SBM: node i in block b_i, edge {i, j} with probability P[b_i, b_j]
    erdos_renyi              G(n, p): the SBM with one block
    ring_of_cliques          c cliques of k nodes, consecutive cliques joined by one edge
    graph_families           a graph-classification set: rings of cliques (label 0) against
                             Erdos-Renyi graphs of the same size and mean degree (label 1)
    split_edges              held-out positive edges and sampled non-edges (link prediction)
    split_nodes              train / test node masks, balanced over the classes

Every generator is a pure function of an explicit PRNG key. Their output sizes
depend on the draws (the number of edges), so they run on the host: the key
seeds a NumPy `Generator` (`numpy_rng`) and the graph is drawn with it, in time
and memory proportional to the number of edges (no N x N matrix, so 10^5-10^6
nodes are fine). Each edge is drawn exactly with its probability: per block
pair, the number of edges is Binomial(number of pairs, p) and the edges are
that many distinct pairs drawn uniformly without replacement.

An undirected edge list is `pairs` [M, 2] int64 with i < j in each row, each
edge once; `undirected_graph` lists every edge in both directions (2M directed
edges, no self-loops), which is what `gcn.GCN` takes as an undirected graph.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jraph
import numpy as np


def numpy_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy Generator seeded by the JAX key (the same key gives the same stream)."""
    seed = np.asarray(jax.random.bits(key, (4,), np.uint32)).tolist()
    return np.random.default_rng(seed)


def _check_probability(name: str, value) -> None:
    value = np.asarray(value, np.float64)
    if not np.all((value >= 0) & (value <= 1)):
        raise ValueError(f"{name} must be probabilities in [0, 1], got {value!r}")


def _triangle_pairs(codes: np.ndarray) -> np.ndarray:
    """Codes k in [0, n(n-1)/2) -> pairs (j, i), j < i, with k = i(i-1)/2 + j: [K, 2]."""
    i = np.floor((1 + np.sqrt(1 + 8 * codes.astype(np.float64))) / 2).astype(np.int64)
    i -= (i * (i - 1) // 2) > codes  # float rounding can overshoot by one
    i += ((i + 1) * i // 2) <= codes
    return np.stack([codes - i * (i - 1) // 2, i], axis=1)


def _block_pair_edges(rng, size_a: int, size_b: int, p: float, same: bool) -> np.ndarray:
    """Edges between two blocks (or within one when `same`), local indices: [M, 2]."""
    n_pairs = size_a * (size_a - 1) // 2 if same else size_a * size_b
    count = rng.binomial(n_pairs, p) if n_pairs else 0
    codes = rng.choice(n_pairs, size=count, replace=False) if count else np.zeros(0, np.int64)
    codes = np.sort(codes.astype(np.int64))
    if same:
        return _triangle_pairs(codes)
    return np.stack([codes // size_b, codes % size_b], axis=1)


def sbm_edges(key: jax.Array, block_sizes: Sequence[int], probabilities) -> np.ndarray:
    """The edges of a stochastic block model.

    Args:
      key: PRNG key.
      block_sizes: [K] number of nodes of each block; block b holds the nodes
        sum(block_sizes[:b]) ... sum(block_sizes[:b+1]) - 1.
      probabilities: [K, K] symmetric edge probabilities between blocks.

    Returns:
      pairs [M, 2] int64, i < j in each row, each edge once, sorted.
    """
    sizes = [int(s) for s in block_sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"block_sizes must be positive ints, got {block_sizes!r}")
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.shape != (len(sizes),) * 2 or not np.allclose(probabilities,
                                                                   probabilities.T):
        raise ValueError(f"probabilities must be a symmetric [{len(sizes)}, {len(sizes)}] "
                         f"matrix, got {probabilities.tolist()}")
    _check_probability("probabilities", probabilities)
    return _sbm_edges(numpy_rng(key), sizes, probabilities)


def _sbm_edges(rng: np.random.Generator, sizes: list[int], probabilities: np.ndarray):
    """`sbm_edges` drawn with a NumPy Generator."""
    offsets = np.cumsum([0] + sizes)
    parts = [np.zeros((0, 2), np.int64)]
    for a in range(len(sizes)):
        for b in range(a, len(sizes)):
            local = _block_pair_edges(rng, sizes[a], sizes[b], probabilities[a, b], a == b)
            parts.append(local + np.array([offsets[a], offsets[b]]))
    pairs = np.concatenate(parts)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def undirected_graph(pairs: np.ndarray, nodes: np.ndarray) -> jraph.GraphsTuple:
    """One graph with every edge of `pairs` [M, 2] in both directions.

    Args:
      pairs: [M, 2] undirected edges.
      nodes: [N, F] node features.

    Returns:
      GraphsTuple with nodes [N, F], senders and receivers int32 [2M] (edge k and
      k + M are the two directions of pairs[k]), edges and globals None.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    senders = np.concatenate([pairs[:, 0], pairs[:, 1]]).astype(np.int32)
    receivers = np.concatenate([pairs[:, 1], pairs[:, 0]]).astype(np.int32)
    return jraph.GraphsTuple(nodes=np.asarray(nodes), edges=None, senders=senders,
                             receivers=receivers, globals=None,
                             n_node=np.array([len(nodes)], np.int32),
                             n_edge=np.array([len(senders)], np.int32))


def block_features(key: jax.Array, labels: np.ndarray, n_features: int,
                   signal: float) -> np.ndarray:
    """Noisy node features: N(signal * e_{label}, I), float32 [N, n_features].

    With signal 0 the features are pure noise and only the edges carry the blocks.
    """
    n_blocks = int(labels.max()) + 1 if len(labels) else 0
    if n_features < n_blocks and signal != 0:
        raise ValueError(f"n_features must be >= the {n_blocks} blocks when signal != 0, "
                         f"got {n_features}")
    rng = numpy_rng(key)
    features = rng.normal(size=(len(labels), n_features))
    if signal:
        features[np.arange(len(labels)), labels] += signal
    return features.astype(np.float32)


def stochastic_block_model(key: jax.Array, block_sizes: Sequence[int], p_in: float,
                           p_out: float, *, n_features: int = 16,
                           feature_signal: float = 0.0) -> tuple[jraph.GraphsTuple, np.ndarray]:
    """A stochastic block model with p_in inside blocks and p_out between them.

    Args:
      key: PRNG key (split for the edges and the features).
      block_sizes: [K] nodes per block.
      p_in, p_out: edge probabilities within a block and between two blocks.
      n_features: F, node feature width.
      feature_signal: node features are N(feature_signal * e_block, I) (`block_features`).

    Returns:
      `(graph, labels)`: an undirected graph (`undirected_graph`, nodes [N, F]
      float32) and the block of each node, int32 [N].
    """
    _check_probability("p_in", p_in)
    _check_probability("p_out", p_out)
    edge_key, feature_key = jax.random.split(key)
    k = len(block_sizes)
    probabilities = np.full((k, k), float(p_out))
    np.fill_diagonal(probabilities, float(p_in))
    pairs = sbm_edges(edge_key, block_sizes, probabilities)
    labels = np.repeat(np.arange(k, dtype=np.int32), [int(s) for s in block_sizes])
    nodes = block_features(feature_key, labels, n_features, feature_signal)
    return undirected_graph(pairs, nodes), labels


def erdos_renyi(key: jax.Array, n_nodes: int, p: float) -> np.ndarray:
    """G(n, p): each of the n(n-1)/2 pairs an edge with probability p. Returns pairs [M, 2]."""
    return sbm_edges(key, [n_nodes], [[p]])


def ring_of_cliques(n_cliques: int, clique_size: int) -> np.ndarray:
    """`n_cliques` >= 3 complete graphs of `clique_size` >= 2 nodes in a ring: the last node
    of clique c joined to the first of clique c + 1 (mod n_cliques). Returns pairs [M, 2]."""
    if n_cliques < 3 or clique_size < 2:
        raise ValueError(f"n_cliques must be >= 3 and clique_size >= 2, got {n_cliques}, "
                         f"{clique_size}")
    local = np.array([(i, j) for i in range(clique_size) for j in range(i + 1, clique_size)])
    starts = np.arange(n_cliques) * clique_size
    inside = (local[None] + starts[:, None, None]).reshape(-1, 2)
    links = np.stack([starts + clique_size - 1, np.roll(starts, -1)], axis=1)
    pairs = np.concatenate([inside, np.sort(links, axis=1)]).astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def degrees(pairs: np.ndarray, n_nodes: int) -> np.ndarray:
    """Number of edges at each node of an undirected edge list: int64 [N]."""
    return np.bincount(np.asarray(pairs).reshape(-1), minlength=n_nodes)


def degree_one_hot(pairs: np.ndarray, n_nodes: int, max_degree: int) -> np.ndarray:
    """One-hot node degrees, degrees above `max_degree` in the last column: float32
    [N, max_degree + 1] (the usual features of graphs that have none)."""
    clipped = np.minimum(degrees(pairs, n_nodes), max_degree)
    return np.eye(max_degree + 1, dtype=np.float32)[clipped]


def _relabel(rng, pairs: np.ndarray, n_nodes: int) -> np.ndarray:
    """The same graph with its nodes in a random order (pairs stay i < j)."""
    new = rng.permutation(n_nodes)[pairs]
    return np.sort(new, axis=1)


def graph_families(key: jax.Array, n_graphs: int, *, n_cliques: Sequence[int] = (3, 4, 5, 6),
                   clique_sizes: Sequence[int] = (4, 5, 6),
                   max_degree: int = 8) -> tuple[jraph.GraphsTuple, np.ndarray]:
    """Rings of cliques (label 0) and Erdos-Renyi graphs of the same size and expected
    mean degree (label 1), alternating: graph 2i + 1 is drawn with the node count and
    edge density of ring 2i. Nodes are in random order.

    Args:
      key: PRNG key.
      n_graphs: G, the number of graphs (half of each family, rounded).
      n_cliques, clique_sizes: the ring of graph g has a random choice of each.
      max_degree: node features are `degree_one_hot(..., max_degree)`.

    Returns:
      `(graphs, labels)`: G graphs batched with `jraph.batch_np` (both edge
      directions, nodes [sum N, max_degree + 1]) and int32 [G] labels.
    """
    rng = numpy_rng(key)
    graphs, labels = [], np.arange(n_graphs, dtype=np.int32) % 2
    for label in labels:
        if label == 0:  # graph 2i + 1 is the ER counterpart of ring 2i
            c, k = int(rng.choice(n_cliques)), int(rng.choice(clique_sizes))
            n, ring = c * k, ring_of_cliques(c, k)
            pairs = _relabel(rng, ring, n)
        else:
            pairs = _sbm_edges(rng, [n], np.array([[len(ring) / (n * (n - 1) / 2)]]))
        graphs.append(undirected_graph(pairs, degree_one_hot(pairs, n, max_degree)))
    return jraph.batch_np(graphs), labels


class EdgeSplit(NamedTuple):
    """Edges of one undirected graph split for link prediction.

    Attributes:
      train: [M_train, 2] the edges the model sees.
      test_positive: [M_test, 2] held-out edges.
      test_negative: [M_test, 2] pairs that are no edge of the whole graph.
    """

    train: np.ndarray
    test_positive: np.ndarray
    test_negative: np.ndarray


def sample_non_edges(rng: np.random.Generator, pairs: np.ndarray, n_nodes: int,
                     count: int) -> np.ndarray:
    """`count` distinct pairs i < j, uniform over the pairs that are not in `pairs`: [count, 2]."""
    taken = np.unique(pairs[:, 0] * n_nodes + pairs[:, 1])
    if n_nodes * (n_nodes - 1) // 2 - len(taken) < count:
        raise ValueError(f"count must be at most the {n_nodes * (n_nodes - 1) // 2 - len(taken)}"
                         f" non-edges, got {count}")
    found = np.zeros(0, np.int64)
    while len(found) < count:
        draw = np.sort(rng.integers(0, n_nodes, size=(2 * count + 16, 2)), axis=1)
        draw = draw[draw[:, 0] < draw[:, 1]]
        codes = draw[:, 0] * n_nodes + draw[:, 1]
        codes = codes[~np.isin(codes, taken) & ~np.isin(codes, found)]
        _, first = np.unique(codes, return_index=True)  # keep the draw order: uniform
        found = np.concatenate([found, codes[np.sort(first)]])
    found = found[:count]
    return np.stack([found // n_nodes, found % n_nodes], axis=1)


def split_edges(key: jax.Array, pairs: np.ndarray, n_nodes: int, *,
                test_fraction: float = 0.1) -> EdgeSplit:
    """Holds out a random `test_fraction` of the edges and as many non-edges.

    Args:
      key: PRNG key.
      pairs: [M, 2] undirected edges, i < j.
      n_nodes: N.
      test_fraction: in (0, 1), the share of edges held out.

    Returns:
      EdgeSplit; the negatives are uniform over the non-edges of the whole graph.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = numpy_rng(key)
    order = rng.permutation(len(pairs))
    n_test = max(1, int(round(test_fraction * len(pairs))))
    test, train = pairs[order[:n_test]], pairs[order[n_test:]]
    return EdgeSplit(train, test, sample_non_edges(rng, pairs, n_nodes, n_test))


def split_nodes(key: jax.Array, labels: np.ndarray, n_train_per_class: int) -> np.ndarray:
    """A training mask with `n_train_per_class` random nodes of each class: bool [N].

    The test nodes are the others (`~mask`).
    """
    rng, mask = numpy_rng(key), np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) <= n_train_per_class:
            raise ValueError(f"n_train_per_class must leave test nodes in class {label} "
                             f"({len(members)} nodes), got {n_train_per_class}")
        mask[rng.choice(members, n_train_per_class, replace=False)] = True
    return mask
