"""The runs besides NRI: the supervised encoder and the decoders with a given graph."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nri_jax import configs, decoders, experiment, training
from nri_jax import data as data_lib
from nri_jax.model import NRI
from nri_jax.rollouts import Teaching

from helpers import small_springs_splits

B, N, T, D = 8, 4, 12, 4


@pytest.fixture(autouse=True)
def full_float32_products():
    with jax.default_matmul_precision("highest"):
        yield


def _setup(method):
    config = configs.override(configs.get_preset("tiny"), n_objects=N, batch_size=B,
                              eval_batch_size=B, prediction_steps=5, variance=1e-2,
                              method=method)
    rng = np.random.default_rng(0)
    split = data_lib.Split(jnp.asarray(rng.normal(size=(B, N, T, D)), jnp.float32),
                           jnp.asarray(rng.integers(0, 2, size=(B, N * (N - 1))), jnp.int32))
    model = NRI(config.model)
    tx = training.make_optimizer(config.train, steps_per_epoch=2)
    state = training.init_state(jax.random.key(0), model, tx, split.features)
    return config, split, model, tx, state


def _unchanged(before, after):
    return all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(before),
                                                     jax.tree.leaves(after)))


@pytest.mark.parametrize("method, graph", [
    ("true-graph", lambda labels: np.eye(2)[labels]),
    ("full-graph", lambda labels: np.eye(2)[np.ones_like(labels)]),
])
def test_decoder_only_methods_train_the_decoder_through_the_given_graph(method, graph):
    config, split, model, tx, state = _setup(method)
    new_state, sums = training.make_train_step(model, tx, config)(
        state, split, jnp.arange(B), jax.random.key(1))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    edges = jnp.asarray(graph(np.asarray(split.labels)), jnp.float32)
    predictions = model.apply(variables, split.features, edges, train=True,
                              teaching=Teaching(period=5), method=NRI.decode)
    x = np.asarray(split.features, np.float64)
    nll = ((np.asarray(predictions, np.float64) - x[:, :, 1:]) ** 2).sum(axis=(1, 2, 3))
    nll = nll / (2 * config.train.variance) / N
    np.testing.assert_allclose(float(sums["nll"]), nll.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(sums["loss"]), nll.sum(), rtol=1e-5)  # no KL term
    assert "confusion" not in sums and "kl" not in sums  # no edges are inferred
    assert _unchanged(state.params["encoder"], new_state.params["encoder"])
    assert _unchanged(state.batch_stats, new_state.batch_stats)
    assert not _unchanged(state.params["decoder"], new_state.params["decoder"])


def test_supervised_method_trains_the_encoder_on_the_labels():
    config, split, model, tx, state = _setup("supervised")
    new_state, sums = training.make_train_step(model, tx, config)(
        state, split, jnp.arange(B), jax.random.key(1))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits, _ = model.apply(variables, split.features, train=True, mutable=["batch_stats"],
                            method=NRI.encode)
    logits = np.asarray(logits, np.float64)
    log_q = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels = np.asarray(split.labels)
    ce = -np.take_along_axis(log_q, labels[..., None], -1)[..., 0].mean(-1)  # [B]
    np.testing.assert_allclose(float(sums["cross_entropy"]), ce.sum(), rtol=1e-5)
    assert "nll" not in sums and sums["confusion"].sum() == B * N * (N - 1)
    assert _unchanged(state.params["decoder"], new_state.params["decoder"])
    assert not _unchanged(state.params["encoder"], new_state.params["encoder"])
    assert not _unchanged(state.batch_stats, new_state.batch_stats)
    assert training.selection_metric(config) == "cross_entropy"


@pytest.fixture(scope="module")
def springs(tmp_path_factory):
    return small_springs_splits(tmp_path_factory.mktemp("springs") / "data")


def _supervised_accuracy(train, valid, labels):
    """Valid edge accuracy of the supervised encoder trained 8 epochs on `labels`."""
    config = configs.override(configs.get_preset("tiny"), method="supervised", batch_size=64,
                              encoder_hidden=64, learning_rate=3e-3)
    model = NRI(config.model)
    tx = optax.adam(config.train.learning_rate)
    state = training.init_state(jax.random.key(0), model, tx, train.features[:2])
    train = data_lib.Split(train.features, labels)
    step = training.make_train_step(model, tx, config)
    for epoch in range(8):
        order = jax.random.permutation(jax.random.key(epoch), len(labels))
        for i in range(len(labels) // 64):
            state, _ = step(state, train, order[i * 64:(i + 1) * 64], jax.random.key(i))
    sums = training.make_eval_step(model, config)(state, valid, jnp.arange(len(valid.labels)),
                                                  jnp.ones(len(valid.labels)), jax.random.key(0))
    return training.summarise(sums)["edge_accuracy"]


@pytest.mark.e2e
def test_supervised_encoder_learns_springs_and_shuffled_labels_do_not(springs):
    train, valid = springs
    learned = _supervised_accuracy(train, valid, train.labels)
    # Labels of other trajectories: as many edges, no relation to these trajectories.
    shuffled = _supervised_accuracy(train, valid, jax.random.permutation(
        jax.random.key(5), train.labels, axis=0))
    chance = max(float(jnp.mean(valid.labels)), 1 - float(jnp.mean(valid.labels)))
    assert learned > 0.85, learned  # 0.90 measured; the shuffled control ~0.5
    assert shuffled < chance + 0.05, (shuffled, chance)


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["supervised", "true-graph"])
def test_a_method_runs_end_to_end_and_reports_what_it_trains(method, tmp_path):
    config = configs.override(configs.get_preset("tiny"), method=method, epochs=1,
                              data_dir=str(tmp_path / "data"))
    lines = []
    report = experiment.train_and_evaluate(config, tmp_path / "run", log=lines.append)
    text = "\n".join(lines)
    if method == "supervised":  # edge recovery only: no decoder is trained
        assert 0 <= report["edge_accuracy"] <= 1 and "mse_by_horizon" not in report
        assert "xent" in text and "nll" not in text
    else:  # prediction only: the graph is given
        assert len(report["mse_by_horizon"]) == 20 and "edge_accuracy" not in report
        assert "valid nll" in text and "acc" not in text
    again, _ = experiment.evaluate_run(tmp_path / "run", log=lambda _: None)
    assert again == report
