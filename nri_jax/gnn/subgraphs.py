"""Mini-batches of induced subgraphs for graphs too large for one step (Cluster-GCN).

Cluster-GCN (Chiang et al. 2019) partitions the nodes into clusters and trains
on the subgraph induced by a few clusters at a time: a GCN layer on a batch
costs its nodes and its edges, never the whole graph. Here

    adjacency = csr_adjacency(pairs, n_nodes)          neighbour lists (host, NumPy)
    clusters  = partition_nodes(key, adjacency, C)     cluster of each node [N]
    for batch in cluster_batches(key, adjacency, features, clusters, clusters_per_batch=q):
        ...                                            padded GraphsTuple + node ids

`partition_nodes` cuts a breadth-first order of the nodes into C runs of equal
size, so that a cluster is mostly one region of the graph and keeps more of its
edges than a random assignment ("random") does. Cluster-GCN uses METIS; a BFS
order is a cheap stand-in with the same purpose: on a long ring of cliques it
keeps nearly every edge inside a cluster, but on an expander (a random graph, an
SBM block) a set of a few hundred nodes keeps few of its edges whatever the
partition (the 200k-node SBM of benchmarks/gnn_subgraphs.py: 3.8% with BFS runs
of 1000 nodes, 0.5% at random). Each epoch draws a new random grouping of the
clusters into batches of q, and every batch is the subgraph
induced by its clusters' nodes: the edges between its clusters come back, only
edges to other batches are lost. Every node is in exactly one batch per epoch.

Neighbour sampling (GraphSAGE, Hamilton et al. 2017) is the other cut:
`neighbour_batches` takes B seed nodes per batch and, hop by hop, keeps at most
`fanouts[h]` random in-neighbours of every node reached, so an L-layer GCN on
the sampled graph computes the seeds' outputs from a tree of at most
B * f_1 * ... * f_L leaves, whatever the degrees. The edges point from the
sampled neighbour to the node it was drawn for; the GCN normalisation then
counts sampled in-degrees.

Batches are padded (`jraph.pad_with_graphs`) to a fixed node count and to the
epoch's largest edge count rounded up to a coarse bucket (or to a given
`max_edges`, e.g. `edge_capacity`), so that one compiled train step serves every
batch of an epoch and usually every epoch. The GCN normalisation of a batch uses
the degrees inside it, as in Cluster-GCN.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jraph
import numpy as np

from nri_jax.gnn.datasets import numpy_rng

PARTITIONS = ("bfs", "random")


class Adjacency(NamedTuple):
    """Neighbour lists of an undirected graph in CSR form (host arrays).

    Attributes:
      offsets: int64 [N + 1]; the neighbours of i are targets[offsets[i]:offsets[i+1]].
      targets: int32 [2M], every edge listed from both ends.
    """

    offsets: np.ndarray
    targets: np.ndarray

    @property
    def n_nodes(self) -> int:
        return len(self.offsets) - 1


class SubgraphBatch(NamedTuple):
    """One padded batch.

    Attributes:
      graph: the induced subgraph, padded: nodes [N_pad, F], both edge directions,
        a padding graph last.
      node_ids: int32 [N_pad], each row's node in the full graph (0 for padding).
      mask: bool [N_pad], the rows whose outputs the loss reads: every real node of
        a cluster batch, the seed nodes (rows 0 ... B-1) of a neighbour sample.
    """

    graph: jraph.GraphsTuple
    node_ids: np.ndarray
    mask: np.ndarray


def csr_adjacency(pairs: np.ndarray, n_nodes: int) -> Adjacency:
    """Adjacency of the undirected edge list pairs [M, 2], each edge seen from both ends."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    sources = np.concatenate([pairs[:, 0], pairs[:, 1]])
    targets = np.concatenate([pairs[:, 1], pairs[:, 0]])
    order = np.argsort(sources, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(sources, minlength=n_nodes))])
    return Adjacency(offsets.astype(np.int64), targets[order].astype(np.int32))


def _neighbours(adjacency: Adjacency, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (node, neighbour) rows of `nodes`: (int64 [K] source, int32 [K] target)."""
    starts, stops = adjacency.offsets[nodes], adjacency.offsets[nodes + 1]
    counts = stops - starts
    sources = np.repeat(nodes, counts)
    # Index of each row within its node's run, then into targets.
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return sources, adjacency.targets[np.repeat(starts, counts) + within]


def bfs_order(adjacency: Adjacency, start: int) -> np.ndarray:
    """Every node once, breadth-first from `start`; each further component from its
    lowest unvisited node. int64 [N]."""
    n = adjacency.n_nodes
    visited, order = np.zeros(n, bool), []
    frontier, next_unvisited = np.array([start], np.int64), 0
    visited[start] = True
    while True:
        order.append(frontier)
        _, reached = _neighbours(adjacency, frontier)
        frontier = np.unique(reached[~visited[reached]]).astype(np.int64)
        if frontier.size == 0:
            while next_unvisited < n and visited[next_unvisited]:
                next_unvisited += 1
            if next_unvisited == n:
                return np.concatenate(order)
            frontier = np.array([next_unvisited], np.int64)
        visited[frontier] = True


def partition_nodes(key: jax.Array, adjacency: Adjacency, n_clusters: int, *,
                    method: str = "bfs") -> np.ndarray:
    """Assigns every node to one of `n_clusters` clusters of equal size (+-1).

    Args:
      key: PRNG key (the BFS start node, or the random assignment).
      adjacency: the graph.
      n_clusters: C, 1 <= C <= N.
      method: "bfs" (runs of a breadth-first order) or "random".

    Returns:
      int32 [N] cluster ids in [0, C).
    """
    n = adjacency.n_nodes
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [1, {n}], got {n_clusters}")
    if method not in PARTITIONS:
        raise ValueError(f"method must be one of {list(PARTITIONS)}, got {method!r}")
    rng = numpy_rng(key)
    order = bfs_order(adjacency, int(rng.integers(n))) if method == "bfs" \
        else rng.permutation(n)
    clusters = np.empty(n, np.int32)
    clusters[order] = (np.arange(n) * n_clusters // n).astype(np.int32)
    return clusters


def induced_edges(adjacency: Adjacency, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The edges among `nodes` (int [K], distinct), both directions, as positions in
    `nodes`: (senders int32 [E_b], receivers int32 [E_b])."""
    position = np.full(adjacency.n_nodes, -1, np.int64)
    position[nodes] = np.arange(len(nodes))
    sources, targets = _neighbours(adjacency, np.asarray(nodes, np.int64))
    inside = position[targets] >= 0
    return (position[sources[inside]].astype(np.int32),
            position[targets[inside]].astype(np.int32))


def edge_bucket(count: int) -> int:
    """`count` + 1 rounded up to a multiple of a quarter of its power of two: under 25%
    padding, and few distinct sizes across epochs, so few compilations."""
    step = max(1, 2 ** int(np.floor(np.log2(count + 1))) // 4)
    return int(-(-(count + 1) // step) * step)


def edge_capacity(adjacency: Adjacency, clusters: np.ndarray, clusters_per_batch: int) -> int:
    """Edge rows that hold any batch of `clusters_per_batch` clusters (their nodes' degrees
    summed over the largest such sum, plus one padding row): one shape for every epoch,
    at the price of padding the edges a batch loses to other batches."""
    degree = np.diff(adjacency.offsets)
    per_cluster = np.sort(np.bincount(clusters, weights=degree))[::-1]
    return int(per_cluster[:clusters_per_batch].sum()) + 1


def induced_subgraph(adjacency: Adjacency, features: np.ndarray, nodes: np.ndarray, *,
                     max_nodes: int, max_edges: int | None = None) -> SubgraphBatch:
    """The subgraph induced by `nodes`, padded.

    Args:
      adjacency: the full graph.
      features: [N, F] node features of the full graph.
      nodes: int [K] distinct node ids, K < max_nodes.
      max_nodes: N_pad, static node rows (one at least is padding).
      max_edges: edge rows, more than the batch's edges; None: `edge_bucket` of
        the batch's edge count.

    Returns:
      SubgraphBatch with the graph padded to max_nodes nodes, 2 graphs.
    """
    return _pad(features, nodes, induced_edges(adjacency, nodes), max_nodes, max_edges)


def _pad(features, nodes, edges, max_nodes, max_edges) -> SubgraphBatch:
    nodes = np.asarray(nodes, np.int64)
    senders, receivers = edges
    if len(nodes) >= max_nodes:
        raise ValueError(f"max_nodes must exceed the batch's {len(nodes)} nodes, "
                         f"got {max_nodes}")
    max_edges = edge_bucket(len(senders)) if max_edges is None else max_edges
    if len(senders) >= max_edges:
        raise ValueError(f"max_edges must exceed the batch's {len(senders)} edges, "
                         f"got {max_edges}")
    graph = jraph.GraphsTuple(nodes=features[nodes], edges=None, senders=senders,
                              receivers=receivers, globals=None,
                              n_node=np.array([len(nodes)], np.int32),
                              n_edge=np.array([len(senders)], np.int32))
    graph = jraph.pad_with_graphs(graph, n_node=max_nodes, n_edge=max_edges, n_graph=2)
    node_ids = np.zeros(max_nodes, np.int32)
    node_ids[:len(nodes)] = nodes
    return SubgraphBatch(graph, node_ids, np.arange(max_nodes) < len(nodes))


def batch_node_capacity(clusters: np.ndarray, clusters_per_batch: int) -> int:
    """Node rows that hold any batch of `clusters_per_batch` clusters, plus one padding row."""
    sizes = np.sort(np.bincount(clusters))[::-1]
    return int(sizes[:clusters_per_batch].sum()) + 1


def cluster_batches(key: jax.Array, adjacency: Adjacency, features: np.ndarray,
                    clusters: np.ndarray, *, clusters_per_batch: int,
                    max_edges: int | None = None) -> list[SubgraphBatch]:
    """One epoch of Cluster-GCN batches, the clusters grouped at random.

    Args:
      key: PRNG key for this epoch's grouping.
      adjacency: the full graph; features [N, F] its node features.
      clusters: int [N] cluster ids (`partition_nodes`), C clusters.
      clusters_per_batch: q; the epoch has ceil(C / q) batches.
      max_edges: edge rows of every batch (`edge_capacity` fits every epoch);
        None: `edge_bucket` of the epoch's largest batch, so that the epoch has
        one shape (and, the bucket being coarse, often the next epochs too).

    Returns:
      A SubgraphBatch per batch, all padded to `batch_node_capacity(clusters, q)`
      nodes and to the same number of edges.
    """
    n_clusters = int(clusters.max()) + 1
    if not 1 <= clusters_per_batch <= n_clusters:
        raise ValueError(f"clusters_per_batch must be in [1, {n_clusters}], "
                         f"got {clusters_per_batch}")
    max_nodes = batch_node_capacity(clusters, clusters_per_batch)
    by_cluster = np.argsort(clusters, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(clusters, minlength=n_clusters))])
    order = numpy_rng(key).permutation(n_clusters)
    node_sets = [np.concatenate([by_cluster[bounds[c]:bounds[c + 1]]
                                 for c in order[start:start + clusters_per_batch]])
                 for start in range(0, n_clusters, clusters_per_batch)]
    edges = [induced_edges(adjacency, nodes) for nodes in node_sets]
    if max_edges is None:
        max_edges = edge_bucket(max(len(senders) for senders, _ in edges))
    return [_pad(features, nodes, pair, max_nodes, max_edges)
            for nodes, pair in zip(node_sets, edges)]


def sample_in_neighbours(rng: np.random.Generator, adjacency: Adjacency, nodes: np.ndarray,
                         fanout: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `fanout` distinct random neighbours of each of `nodes` (all, when it has fewer).

    Returns:
      (neighbours int64 [K], nodes int64 [K]): edge k runs neighbours[k] -> nodes[k].
    """
    sources, targets = _neighbours(adjacency, np.asarray(nodes, np.int64))
    if len(sources) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((rng.random(len(sources)), sources))  # shuffled within each node
    sources, targets = sources[order], targets[order]
    run_start = np.flatnonzero(np.r_[True, sources[1:] != sources[:-1]])
    rank = np.arange(len(sources)) - np.repeat(run_start, np.diff(np.r_[run_start,
                                                                        len(sources)]))
    keep = rank < fanout
    return targets[keep].astype(np.int64), sources[keep]


def neighbour_sample(key: jax.Array, adjacency: Adjacency, features: np.ndarray,
                     seeds: np.ndarray, *, fanouts: tuple[int, ...],
                     capacity: tuple[int, int] | None = None) -> SubgraphBatch:
    """The sampled computation graph of `seeds` ([B] distinct node ids), padded.

    Args:
      key: PRNG key.
      adjacency: the full graph; features [N, F] its node features.
      seeds: int [B], the nodes whose outputs the batch trains (rows 0 ... B-1).
      fanouts: neighbours kept per node at each hop, outward from the seeds; one
        hop per GCN layer.
      capacity: (node rows, edge rows) to pad to; default `sample_capacity(B, fanouts)`.

    Returns:
      SubgraphBatch, padded; mask marks the seeds.
    """
    rng, seeds = numpy_rng(key), np.asarray(seeds, np.int64)
    nodes, frontier, edge_parts = seeds, seeds, []
    for fanout in fanouts:
        neighbours, targets = sample_in_neighbours(rng, adjacency, frontier, fanout)
        edge_parts.append((neighbours, targets))
        frontier = np.setdiff1d(np.unique(neighbours), nodes)
        nodes = np.concatenate([nodes, frontier])
    position = np.full(adjacency.n_nodes, -1, np.int64)
    position[nodes] = np.arange(len(nodes))
    senders = np.concatenate([position[a] for a, _ in edge_parts]).astype(np.int32)
    receivers = np.concatenate([position[b] for _, b in edge_parts]).astype(np.int32)
    max_nodes, max_edges = capacity or sample_capacity(len(seeds), fanouts)
    batch = _pad(features, nodes, (senders, receivers), max_nodes, max_edges)
    return batch._replace(mask=np.arange(max_nodes) < len(seeds))


def sample_capacity(n_seeds: int, fanouts: tuple[int, ...]) -> tuple[int, int]:
    """(node rows, edge rows) that hold any neighbour sample: B (1 + f1 + f1 f2 + ...) + 1
    and B (f1 + f1 f2 + ...) + 1."""
    reached, edges = n_seeds, 0
    for fanout in fanouts:
        reached *= fanout
        edges += reached
    return n_seeds + edges + 1, edges + 1


def neighbour_batches(key: jax.Array, adjacency: Adjacency, features: np.ndarray,
                      nodes: np.ndarray, *, batch_size: int,
                      fanouts: tuple[int, ...]) -> list[SubgraphBatch]:
    """One epoch of neighbour samples: `nodes` (e.g. the labelled ones) shuffled into
    batches of `batch_size` seeds (the last may be smaller), each `neighbour_sample`d."""
    if batch_size < 1 or not fanouts or min(fanouts) < 1:
        raise ValueError(f"batch_size and fanouts must be positive, got {batch_size}, "
                         f"{fanouts}")
    order_key, sample_key = jax.random.split(key)
    order = numpy_rng(order_key).permutation(np.asarray(nodes, np.int64))
    keys = jax.random.split(sample_key, -(-len(order) // batch_size))
    capacity = sample_capacity(batch_size, fanouts)  # one shape, the last batch too
    return [neighbour_sample(keys[i], adjacency, features, order[start:start + batch_size],
                             fanouts=fanouts, capacity=capacity)
            for i, start in enumerate(range(0, len(order), batch_size))]

