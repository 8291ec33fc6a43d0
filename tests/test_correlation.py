"""The correlation baselines: pair correlations against NumPy, a classifier that learns,
and Corr. (LSTM) as a second stage on a trained LSTM."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nri_jax import configs, correlation, experiment, graphs, tables
from nri_jax.model import NRI

B, N, T, D = 3, 4, 20, 4


def test_pair_correlations_match_numpy(x64):
    x = np.random.default_rng(0).normal(size=(B, N, T, D))
    got = jax.jit(correlation.pair_correlations)(x)
    senders, receivers = graphs.fully_connected_index(N)
    for b in range(B):
        for e, (j, i) in enumerate(zip(senders, receivers)):
            for d in range(D):
                np.testing.assert_allclose(got[b, e, d], np.corrcoef(x[b, j, :, d],
                                                                     x[b, i, :, d])[0, 1],
                                           rtol=1e-6)


def test_two_objects_with_known_answers(x64):
    first = np.random.default_rng(1).normal(size=(T, D))
    cases = {"scaled copy": (3 * first + 1, 1.0), "mirror": (-first, -1.0),
             "at rest": (np.ones((T, D)), 0.0)}
    for name, (second, expected) in cases.items():
        x = np.stack([first, second])[None]  # [1, 2, T, D]
        np.testing.assert_allclose(correlation.pair_correlations(x), expected, atol=1e-6,
                                   err_msg=name)


def two_object_data(key, n, *, by_amplitude=False):
    """Pairs labelled 1 when the second object copies the first with noise, else 0; or,
    `by_amplitude`, labelled 1 when the (independent) second object moves 3x as far:
    information that is in the trajectories but in no correlation."""
    k_label, k_first, k_noise = jax.random.split(key, 3)
    labels = jax.random.bernoulli(k_label, 0.5, (n,)).astype(jnp.int32)
    first = jax.random.normal(k_first, (n, T, D))
    noise = jax.random.normal(k_noise, (n, T, D))
    one = labels[:, None, None] == 1
    second = jnp.where(one, 3 * noise, noise) if by_amplitude else jnp.where(
        one, first + 0.5 * noise, noise)
    return jnp.stack([first, second], axis=1), jnp.stack([labels, labels], axis=1)  # E = 2


@pytest.mark.parametrize("by_amplitude", [False, True])
def test_the_classifier_sees_correlations_and_nothing_else(by_amplitude):
    x, labels = two_object_data(jax.random.key(0), 512, by_amplitude=by_amplitude)
    encoder = correlation.CorrelationEncoder(hidden=16)
    params = encoder.init(jax.random.key(2), x, train=False)
    tx = optax.adam(1e-2)

    def loss(params):
        logits = encoder.apply(params, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for _ in range(200):
        params, opt_state = step(params, opt_state)
    test_x, test_labels = two_object_data(jax.random.key(3), 512, by_amplitude=by_amplitude)
    accuracy = float(jnp.mean(encoder.apply(params, test_x, train=False).argmax(-1)
                              == test_labels))
    # Chance is 0.5 +- 0.022 over 512 test pairs.
    assert accuracy < 0.6 if by_amplitude else accuracy > 0.97, accuracy


def corr_lstm_config(tmp_path, lstm_run):
    return configs.override(configs.get_preset("tiny"), encoder="correlation-lstm",
                            decoder="lstm-single", method="supervised", init_from=str(lstm_run),
                            init_parts="decoder", data_dir=str(tmp_path / "data"))


def test_corr_lstm_correlates_the_lstm_states_and_never_trains_them(tmp_path):
    config = corr_lstm_config(tmp_path, tmp_path / "lstm")
    model = NRI(config.model)
    x = jax.random.normal(jax.random.key(0), (B, N, T, D))
    variables = model.init({"params": jax.random.key(1), "gumbel": jax.random.key(2)}, x,
                           train=False)
    assert set(variables["params"]) == {"encoder", "decoder"}  # the LSTM once, as the decoder
    states = model.apply(variables, x, method=lambda m, x: m.decoder.hidden_states(x))
    got = model.apply(variables, x, method=lambda m, x: m.encoder.correlations(x))
    np.testing.assert_array_equal(got, correlation.pair_correlations(states))
    assert got.shape == (B, N * (N - 1), config.model.decoder_hidden)
    labels = jnp.zeros((B, N * (N - 1)), jnp.int32)

    def loss(params):
        logits = model.apply({**variables, "params": params}, x, train=True, method=NRI.encode)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.grad(loss)(variables["params"])
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads["decoder"]))
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads["encoder"]))


@pytest.mark.parametrize("change, named", [
    ({"decoder": "lstm-joint", "method": "full-graph"}, "decoder='lstm-joint'"),
    ({"method": "nri", "decoder": "mlp"}, "decoder='mlp'"),
    ({"init_from": None}, "init_from=None"),
    ({"init_parts": "all"}, "init_parts='all'"),
])
def test_corr_lstm_is_refused_without_its_trained_lstm(tmp_path, change, named):
    with pytest.raises(ValueError, match=f"correlation-lstm.*{named}"):
        configs.override(corr_lstm_config(tmp_path, tmp_path / "lstm"), **change)


@pytest.mark.e2e
def test_corr_lstm_is_a_second_stage_on_a_trained_lstm_run(tmp_path):
    lstm_config = configs.override(configs.get_preset("tiny"), decoder="lstm-single",
                                   method="full-graph", epochs=1,
                                   data_dir=str(tmp_path / "data"))
    experiment.train_and_evaluate(lstm_config, tmp_path / "lstm", log=lambda _: None)
    config = corr_lstm_config(tmp_path, tmp_path / "lstm")
    report = experiment.train_and_evaluate(config, tmp_path / "corr", log=lambda _: None)
    assert 0 <= report["edge_accuracy"] <= 1 and "mse_by_horizon" not in report
    trained_lstm = experiment.load_model(tmp_path / "lstm")[2]["params"]["decoder"]
    after = experiment.load_model(tmp_path / "corr")[2]["params"]["decoder"]
    for want, got in zip(jax.tree.leaves(trained_lstm), jax.tree.leaves(after)):
        np.testing.assert_array_equal(got, want)  # loaded exactly, and never trained
    rows = tables.tables([tmp_path / "corr"])["table1"]
    assert [(r["method"], r["paper"]) for r in rows] == [("Corr. (LSTM)", None)]
