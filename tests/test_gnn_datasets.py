"""The synthetic graph generators against their definitions; statistical bounds for fixed keys."""

import jax
import numpy as np
import pytest

from nri_jax.gnn import datasets


def edge_set(pairs):
    return {tuple(p) for p in np.asarray(pairs).tolist()}


def check_undirected(graph, n_nodes):
    """Both directions listed once each (edge k and k + M), no self-loops, no duplicates."""
    senders, receivers = np.asarray(graph.senders), np.asarray(graph.receivers)
    m = len(senders) // 2
    np.testing.assert_array_equal(senders[:m], receivers[m:])
    np.testing.assert_array_equal(receivers[:m], senders[m:])
    assert np.all(senders != receivers)
    assert len(set(zip(senders.tolist(), receivers.tolist()))) == len(senders)
    assert senders.min() >= 0 and senders.max() < n_nodes
    assert graph.n_node.tolist() == [n_nodes] and graph.n_edge.tolist() == [len(senders)]


def test_triangle_codes_enumerate_every_pair_once():
    n = 60
    pairs = datasets._triangle_pairs(np.arange(n * (n - 1) // 2))
    assert np.all(pairs[:, 0] < pairs[:, 1]) and pairs.max() == n - 1
    assert edge_set(pairs) == {(i, j) for j in range(n) for i in range(j)}


def test_sbm_blocks_symmetry_and_densities():
    sizes, p_in, p_out = (120, 80, 100), 0.15, 0.03
    graph, labels = datasets.stochastic_block_model(jax.random.key(0), sizes, p_in, p_out,
                                                    n_features=5, feature_signal=2.0)
    n = sum(sizes)
    np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], sizes))
    check_undirected(graph, n)
    assert graph.nodes.shape == (n, 5) and graph.nodes.dtype == np.float32
    m = len(graph.senders) // 2
    a, b = labels[graph.senders[:m]], labels[graph.receivers[:m]]
    for i in range(3):
        for j in range(i, 3):
            pairs = sizes[i] * (sizes[i] - 1) / 2 if i == j else sizes[i] * sizes[j]
            p = p_in if i == j else p_out
            count = np.sum(((a == i) & (b == j)) | ((a == j) & (b == i)))
            # Binomial(pairs, p): within 4 standard deviations for this fixed key.
            assert abs(count - pairs * p) < 4 * np.sqrt(pairs * p * (1 - p)), (i, j, count)
    # Features: mean 2 on the node's own block column, 0 elsewhere, unit variance.
    means = np.stack([graph.nodes[labels == i, :3].mean(axis=0) for i in range(3)])
    np.testing.assert_allclose(means, 2 * np.eye(3), atol=0.4)


def test_sbm_extremes_and_determinism():
    key = jax.random.key(3)
    pairs = datasets.sbm_edges(key, [4, 5], [[1.0, 0.0], [0.0, 1.0]])
    assert edge_set(pairs) == ({(i, j) for j in range(4) for i in range(j)}
                               | {(i, j) for j in range(4, 9) for i in range(4, j)})
    again = datasets.sbm_edges(key, [30, 30], [[0.3, 0.1], [0.1, 0.3]])
    np.testing.assert_array_equal(again, datasets.sbm_edges(key, [30, 30],
                                                            [[0.3, 0.1], [0.1, 0.3]]))
    other = datasets.sbm_edges(jax.random.key(4), [30, 30], [[0.3, 0.1], [0.1, 0.3]])
    assert edge_set(other) != edge_set(again)
    assert len(datasets.erdos_renyi(key, 50, 0.0)) == 0


def test_large_sparse_sbm_is_drawn_without_a_dense_matrix():
    sizes = (25_000, 25_000)
    pairs = datasets.sbm_edges(jax.random.key(5), sizes, [[4e-4, 1e-4], [1e-4, 4e-4]])
    expected = 2 * 25_000 * 24_999 / 2 * 4e-4 + 25_000 ** 2 * 1e-4
    assert abs(len(pairs) - expected) < 4 * np.sqrt(expected)
    assert np.all(pairs[:, 0] < pairs[:, 1]) and len(np.unique(pairs, axis=0)) == len(pairs)


def test_ring_of_cliques():
    c, k = 5, 4
    pairs = datasets.ring_of_cliques(c, k)
    assert len(pairs) == c * k * (k - 1) // 2 + c and len(edge_set(pairs)) == len(pairs)
    degree = datasets.degrees(pairs, c * k)
    assert sorted(set(degree.tolist())) == [k - 1, k] and np.sum(degree == k) == 2 * c
    assert (3, 4) in edge_set(pairs) and (0, 19) in edge_set(pairs)  # the ring closes


def test_graph_families_match_sizes_and_mean_degrees():
    graphs, labels = datasets.graph_families(jax.random.key(6), 200, max_degree=8)
    np.testing.assert_array_equal(labels, np.arange(200) % 2)
    n_node, n_edge = graphs.n_node, graphs.n_edge
    # Pairs of consecutive graphs: ER with the ring's size and expected edge count.
    np.testing.assert_array_equal(n_node[0::2], n_node[1::2])
    ring, er = n_edge[0::2].sum(), n_edge[1::2].sum()
    assert abs(er - ring) < 4 * np.sqrt(ring)
    offsets = np.concatenate([[0], np.cumsum(n_node)])
    degree = np.bincount(graphs.receivers, minlength=offsets[-1])
    np.testing.assert_array_equal(graphs.nodes.argmax(axis=1), np.minimum(degree, 8))
    # Rings: degrees k-1 and k only, ER: spread out.
    ring_nodes = np.concatenate([np.arange(offsets[g], offsets[g + 1]) for g in range(0, 200, 2)])
    assert degree[ring_nodes].std() < 1.0 < np.delete(degree, ring_nodes).std()


def test_split_edges_partitions_edges_and_samples_non_edges():
    pairs = datasets.erdos_renyi(jax.random.key(7), 100, 0.1)
    split = datasets.split_edges(jax.random.key(8), pairs, 100, test_fraction=0.2)
    train, test, negative = (edge_set(p) for p in split)
    assert not train & test and train | test == edge_set(pairs)
    assert len(test) == round(0.2 * len(pairs)) == len(negative) == len(split.test_negative)
    assert not negative & edge_set(pairs)
    assert np.all(split.test_negative[:, 0] < split.test_negative[:, 1])


def test_split_nodes_is_balanced():
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    mask = datasets.split_nodes(jax.random.key(9), labels, 4)
    assert [int(mask[labels == c].sum()) for c in range(3)] == [4, 4, 4]
    with pytest.raises(ValueError, match="n_train_per_class"):
        datasets.split_nodes(jax.random.key(9), labels, 10)


def test_bad_arguments_raise_naming_them():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="probabilities"):
        datasets.sbm_edges(key, [3, 3], [[0.5, 0.1], [0.2, 0.5]])
    with pytest.raises(ValueError, match="p_in"):
        datasets.stochastic_block_model(key, [3, 3], 1.5, 0.1)
    with pytest.raises(ValueError, match="block_sizes"):
        datasets.sbm_edges(key, [3, 0], np.eye(2))
    with pytest.raises(ValueError, match="test_fraction"):
        datasets.split_edges(key, np.array([[0, 1]]), 2, test_fraction=1.0)
