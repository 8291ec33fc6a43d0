"""Cluster-GCN batches: neighbour lists, BFS order and induced subgraphs against NumPy sets;
every node in one batch per epoch; a GCN trained through the batches learns the blocks."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax.gnn import datasets, fit, models, probes, subgraphs
from nri_jax.gnn.gcn import MultiLayerGCN


def two_components():
    """A ring of cliques (20 nodes) and an Erdos-Renyi graph beside it, plus an isolated node."""
    ring = datasets.ring_of_cliques(5, 4)
    er = datasets.erdos_renyi(jax.random.key(0), 30, 0.15) + 20
    return np.concatenate([ring, er]), 51


def numpy_bfs_distances(pairs, n, start):
    neighbours = collections.defaultdict(set)
    for i, j in pairs.tolist():
        neighbours[i].add(j)
        neighbours[j].add(i)
    distance, queue = {start: 0}, collections.deque([start])
    while queue:
        i = queue.popleft()
        for j in neighbours[i]:
            if j not in distance:
                distance[j] = distance[i] + 1
                queue.append(j)
    return distance


def test_csr_adjacency_lists_every_neighbour():
    pairs, n = two_components()
    adjacency = subgraphs.csr_adjacency(pairs, n)
    for i in range(n):
        got = adjacency.targets[adjacency.offsets[i]:adjacency.offsets[i + 1]]
        expected = [b for a, b in pairs.tolist() if a == i] + [a for a, b in pairs.tolist()
                                                              if b == i]
        assert sorted(got.tolist()) == sorted(expected)


def test_bfs_order_visits_by_distance_then_the_other_components():
    pairs, n = two_components()
    order = subgraphs.bfs_order(subgraphs.csr_adjacency(pairs, n), 7)
    assert sorted(order.tolist()) == list(range(n))
    distance = numpy_bfs_distances(pairs, n, 7)
    first = order[:len(distance)]
    assert set(first.tolist()) == set(distance)  # the start's component comes first
    assert np.all(np.diff([distance[i] for i in first.tolist()]) >= 0)


@pytest.mark.parametrize("method", subgraphs.PARTITIONS)
def test_partitions_are_balanced(method):
    pairs, n = two_components()
    clusters = subgraphs.partition_nodes(jax.random.key(1), subgraphs.csr_adjacency(pairs, n),
                                         6, method=method)
    sizes = np.bincount(clusters, minlength=6)
    assert len(sizes) == 6 and sizes.max() - sizes.min() <= 1


def test_bfs_clusters_keep_more_edges_than_random_ones():
    pairs = datasets.ring_of_cliques(40, 5)  # 200 nodes, a long ring
    adjacency = subgraphs.csr_adjacency(pairs, 200)
    kept = {}
    for method in subgraphs.PARTITIONS:
        clusters = subgraphs.partition_nodes(jax.random.key(2), adjacency, 10, method=method)
        kept[method] = np.mean(clusters[pairs[:, 0]] == clusters[pairs[:, 1]])
    assert kept["bfs"] > 0.8 and kept["random"] < 0.2


def test_an_epoch_of_batches_covers_every_node_once_with_induced_edges():
    pairs, n = two_components()
    adjacency = subgraphs.csr_adjacency(pairs, n)
    features = np.arange(n, dtype=np.float32)[:, None]
    clusters = subgraphs.partition_nodes(jax.random.key(3), adjacency, 7)
    batches = list(subgraphs.cluster_batches(jax.random.key(4), adjacency, features, clusters,
                                             clusters_per_batch=3))
    assert len(batches) == 3
    seen = np.concatenate([b.node_ids[b.mask] for b in batches])
    assert sorted(seen.tolist()) == list(range(n))
    edges = {tuple(p) for p in pairs.tolist()} | {tuple(p[::-1]) for p in pairs.tolist()}
    capacity = subgraphs.batch_node_capacity(clusters, 3)
    largest = max(int(b.graph.n_edge[0]) for b in batches)
    for batch in batches:
        graph, ids = batch.graph, batch.node_ids
        assert graph.nodes.shape == (capacity, 1) and not batch.mask[-1]
        np.testing.assert_array_equal(graph.nodes[batch.mask, 0], ids[batch.mask])
        real = int(graph.n_edge[0])
        got = {(int(ids[s]), int(ids[r])) for s, r in zip(graph.senders[:real],
                                                          graph.receivers[:real])}
        members = set(ids[batch.mask].tolist())
        assert got == {(s, r) for s, r in edges if s in members and r in members}
        assert len(graph.senders) == subgraphs.edge_bucket(largest) > largest


@pytest.fixture(scope="module")
def four_blocks():
    """A 4 x 150-node SBM with weakly informative features: (graph, labels, adjacency)."""
    graph, labels = datasets.stochastic_block_model(jax.random.key(5), [150] * 4, 0.1, 0.005,
                                                    n_features=32, feature_signal=0.7)
    m = len(graph.senders) // 2
    adjacency = subgraphs.csr_adjacency(np.stack([graph.senders[:m], graph.receivers[:m]], 1),
                                        600)
    return graph, labels, adjacency


def test_gcn_trained_through_cluster_batches_learns_the_blocks(four_blocks):
    graph, labels, adjacency = four_blocks
    clusters = subgraphs.partition_nodes(jax.random.key(6), adjacency, 12)
    train = datasets.split_nodes(jax.random.key(7), labels, 30)
    model = MultiLayerGCN((32, 4))

    def loss_fn(params, batch, key):
        sub, ids, mask = batch
        per_node = models.cross_entropy(model.apply(params, sub).nodes, jnp.asarray(labels)[ids])
        return models.masked_mean(per_node, mask & jnp.asarray(train)[ids])

    full = jax.tree.map(jnp.asarray, graph)
    predict = jax.jit(lambda p: jnp.argmax(model.apply(p, full).nodes, -1))
    params = jax.jit(model.init)(jax.random.key(8), full)
    before = probes.masked_accuracy(predict(params), labels, ~train)
    init, step = fit.make_train_step(loss_fn, 1e-2)
    opt_state, keys = init(params), jax.random.split(jax.random.key(9), 30)
    for epoch in range(15):
        for batch in subgraphs.cluster_batches(keys[epoch], adjacency, graph.nodes, clusters,
                                               clusters_per_batch=3, max_edges=4096):
            params, opt_state, loss = step(params, opt_state, tuple(batch), keys[epoch + 15])
            assert np.isfinite(loss)
    assert step._cache_size() == 1  # one compiled step for every batch
    after = probes.masked_accuracy(predict(params), labels, ~train)
    assert before < 0.4 and after > 0.85


def test_neighbour_samples_keep_at_most_fanout_real_in_neighbours():
    pairs, n = two_components()
    adjacency = subgraphs.csr_adjacency(pairs, n)
    edges = {tuple(p) for p in pairs.tolist()} | {tuple(p[::-1]) for p in pairs.tolist()}
    degree = np.diff(adjacency.offsets)
    features = np.arange(n, dtype=np.float32)[:, None]
    batches = subgraphs.neighbour_batches(jax.random.key(10), adjacency, features,
                                          np.arange(n), batch_size=8, fanouts=(3, 2))
    seeds = np.concatenate([b.node_ids[b.mask] for b in batches])
    assert sorted(seeds.tolist()) == list(range(n)) and len(batches) == 7
    capacity = subgraphs.sample_capacity(8, (3, 2))
    assert capacity == (8 + 24 + 48 + 1, 24 + 48 + 1)
    for batch in batches:
        graph, ids = batch.graph, batch.node_ids
        assert (graph.nodes.shape[0], len(graph.senders)) == capacity
        n_real, e_real = int(graph.n_node[0]), int(graph.n_edge[0])
        assert len(set(ids[:n_real].tolist())) == n_real  # each node once
        np.testing.assert_array_equal(graph.nodes[:n_real, 0], ids[:n_real])
        sampled = list(zip(ids[graph.senders[:e_real]].tolist(),
                           ids[graph.receivers[:e_real]].tolist()))
        assert set(sampled) <= edges and len(set(sampled)) == len(sampled)
        hop1 = [(s, r) for s, r in sampled if r in set(ids[batch.mask].tolist())]
        for seed in ids[batch.mask].tolist():  # min(degree, fanout) neighbours per seed
            assert sum(r == seed for _, r in hop1) == min(degree[seed], 3)


def test_gcn_trained_through_neighbour_samples_learns_the_blocks(four_blocks):
    graph, labels, adjacency = four_blocks
    train = datasets.split_nodes(jax.random.key(7), labels, 30)
    model = MultiLayerGCN((32, 4))

    def loss_fn(params, batch, key):
        sub, ids, seeds = batch
        per_node = models.cross_entropy(model.apply(params, sub).nodes, jnp.asarray(labels)[ids])
        return models.masked_mean(per_node, seeds)

    full = jax.tree.map(jnp.asarray, graph)
    predict = jax.jit(lambda p: jnp.argmax(model.apply(p, full).nodes, -1))
    params = jax.jit(model.init)(jax.random.key(8), full)
    init, step = fit.make_train_step(loss_fn, 1e-2)
    opt_state = init(params)
    for epoch in range(20):
        for batch in subgraphs.neighbour_batches(jax.random.key(epoch), adjacency, graph.nodes,
                                                 np.flatnonzero(train), batch_size=40,
                                                 fanouts=(5, 5)):
            params, opt_state, loss = step(params, opt_state, tuple(batch), jax.random.key(0))
    assert step._cache_size() == 1
    # Whole-graph inference after training on sampled neighbourhoods of the 120 labelled nodes.
    assert probes.masked_accuracy(predict(params), labels, ~train) > 0.85
