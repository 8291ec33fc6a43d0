"""Link-prediction metrics against NumPy float64 pair counts; the graph autoencoder learns
held-out edges of an SBM better than the degree baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax.gnn import autoencoder as ae
from nri_jax.gnn import datasets, fit


def numpy_auc(positive, negative):
    """P(s+ > s-) + P(s+ = s-) / 2 by counting all pairs."""
    p, q = np.asarray(positive, np.float64)[:, None], np.asarray(negative, np.float64)[None, :]
    return np.mean((p > q) + 0.5 * (p == q))


def numpy_average_precision(positive, negative):
    """sum over distinct thresholds t (high to low) of (recall(t) - recall(prev)) precision(t)."""
    scores = np.concatenate([positive, negative]).astype(np.float64)
    labels = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    total, recall_before = 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        chosen = scores >= t
        recall = labels[chosen].sum() / labels.sum()
        total += (recall - recall_before) * labels[chosen].mean()
        recall_before = recall
    return total


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_match_numpy(x64, ties):
    rng = np.random.default_rng(int(ties))
    positive, negative = rng.normal(0.7, 1, 37), rng.normal(0, 1, 53)
    if ties:  # few distinct values: many ties within and across the classes
        positive, negative = np.round(positive), np.round(negative)
    auc, ap = ae.roc_auc(positive, negative), ae.average_precision(positive, negative)
    assert auc.dtype == jnp.float64
    np.testing.assert_allclose(auc, numpy_auc(positive, negative), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ap, numpy_average_precision(positive, negative), rtol=0,
                               atol=1e-12)


def test_metric_extremes():
    assert ae.roc_auc(jnp.array([2.0, 3.0]), jnp.array([0.0, 1.0])) == 1.0
    assert ae.roc_auc(jnp.array([0.0]), jnp.array([1.0, 2.0])) == 0.0
    assert ae.roc_auc(jnp.ones(3), jnp.ones(4)) == 0.5
    assert ae.average_precision(jnp.array([2.0, 3.0]), jnp.array([0.0, 1.0])) == 1.0
    # Everything tied: precision is the positive share.
    np.testing.assert_allclose(ae.average_precision(jnp.ones(3), jnp.ones(6)), 1 / 3)
    with pytest.raises(ValueError, match="positive and negative"):
        ae.roc_auc(jnp.ones(3), jnp.ones((2, 2)))


def test_decoder_degrees_and_negative_pairs(x64):
    pairs = datasets.erdos_renyi(jax.random.key(0), 30, 0.2)
    graph = datasets.undirected_graph(pairs, np.zeros((30, 1)))
    query = np.array([[0, 1], [5, 7], [29, 3]])
    degree = np.bincount(pairs.reshape(-1), minlength=30).astype(np.float64)
    np.testing.assert_allclose(jax.jit(ae.degree_scores)(graph, query),
                               degree[query[:, 0]] * degree[query[:, 1]])
    z = np.random.default_rng(0).normal(size=(30, 4))
    np.testing.assert_allclose(jax.jit(ae.pair_logits)(z, query),
                               np.einsum("md,md->m", z[query[:, 0]], z[query[:, 1]]),
                               rtol=1e-12)
    drawn = np.asarray(jax.jit(ae.uniform_pairs, static_argnums=(1, 2))(jax.random.key(1), 30,
                                                                        5000))
    assert drawn.min() == 0 and drawn.max() == 29 and np.all(drawn[:, 0] != drawn[:, 1])
    counts = np.bincount(drawn[:, 1], minlength=30)  # uniform: 5000/30 each
    assert abs(counts - 5000 / 30).max() < 4 * np.sqrt(5000 / 30)


def sbm_link_task():
    graph, _ = datasets.stochastic_block_model(jax.random.key(0), [75] * 4, 0.2, 0.02,
                                               n_features=64, feature_signal=1.0)
    m = len(graph.senders) // 2
    pairs = np.stack([graph.senders[:m], graph.receivers[:m]], axis=1).astype(np.int64)
    split = datasets.split_edges(jax.random.key(1), pairs, 300, test_fraction=0.15)
    train_graph = jax.tree.map(jnp.asarray, datasets.undirected_graph(split.train, graph.nodes))
    return train_graph, *(jnp.asarray(p, jnp.int32) for p in split)


def test_autoencoder_beats_the_degree_baseline_on_held_out_edges():
    train_graph, train, positive, negative = sbm_link_task()
    model = ae.GraphAutoencoder((32, 16))
    params = jax.jit(model.init)(jax.random.key(2), train_graph)

    def loss_fn(p, key):
        z = model.apply(p, train_graph)
        sampled = ae.uniform_pairs(key, 300, train.shape[0])
        on_edges, off_edges = ae.link_losses(ae.pair_logits(z, train), ae.pair_logits(z, sampled))
        return jnp.mean(on_edges) + jnp.mean(off_edges)

    @jax.jit
    def held_out_auc(p):
        z = model.apply(p, train_graph)
        return ae.roc_auc(ae.pair_logits(z, positive), ae.pair_logits(z, negative))

    before = held_out_auc(params)
    params, losses = fit.fit(jax.random.key(3), params, loss_fn, steps=150, learning_rate=1e-2)
    baseline = ae.roc_auc(ae.degree_scores(train_graph, positive),
                          ae.degree_scores(train_graph, negative))
    auc = held_out_auc(params)
    # Measured: untrained 0.56, degree baseline 0.46, trained 0.79. Knowing the blocks
    # exactly gives at most ~0.82 here (positives 83% within a block, negatives 25%).
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.2
    assert before < 0.65 and baseline < 0.6
    assert auc > 0.72 and auc > baseline + 0.15
