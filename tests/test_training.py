"""Tests of the jitted train / eval / test steps and of metric summaries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax import configs, training
from nri_jax import data as data_lib
from nri_jax.model import NRI

B, N, T, D = 8, 4, 12, 4


@pytest.fixture(scope="module")
def setup():
    config = configs.override(configs.get_preset("tiny"), n_objects=N, batch_size=B,
                              eval_batch_size=B, prediction_steps=5, variance=1e-2)
    rng = np.random.default_rng(0)
    split = data_lib.Split(jnp.asarray(rng.normal(size=(2 * B, N, T, D)), jnp.float32),
                           jnp.asarray(rng.integers(0, 2, size=(2 * B, N * (N - 1))), jnp.int32))
    model = NRI(config.model)
    tx = training.make_optimizer(config.train, steps_per_epoch=2)
    state = training.init_state(jax.random.key(0), model, tx, split.features[:B])
    return config, split, model, tx, state


@pytest.fixture(scope="module")
def train_step(setup):
    config, _, model, tx, _ = setup
    return training.make_train_step(model, tx, config)


def _train_forward(model, state, features, key):
    """The train step's forward pass, run separately with the step's RNG streams."""
    gumbel_key, dropout_key = jax.random.split(key)
    out, _ = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         features, train=True, mutable=["batch_stats"],
                         rngs={"gumbel": gumbel_key, "dropout": dropout_key}, prediction_steps=5)
    return out


def _numpy_confusion(logits, labels, n_types):
    """Counts of (label, argmax type) over all edges, by an explicit loop."""
    logits = np.asarray(logits, np.float64)
    top2 = np.sort(logits, axis=-1)[..., -2:]
    # The step and this test run different programs: their O(1) float32 logits
    # agree to round-off only (~1e-6), so the argmax must not hinge on a near tie.
    assert np.min(top2[..., 1] - top2[..., 0]) > 1e-5
    confusion = np.zeros((n_types, n_types))
    for label, predicted in zip(np.asarray(labels).ravel(), logits.argmax(-1).ravel()):
        confusion[label, predicted] += 1
    return confusion


@pytest.mark.parametrize("prior", ["uniform", "sparse"])
def test_loss_is_the_reference_normalisation(setup, prior):
    """loss = batch mean of (sum of squared errors / (2 var) + KL) / N, from NumPy float64.

    The KL is to the configured prior: uniform (1/K each) or sparse
    (`no_edge_prob` on type 0, the rest spread evenly over the other types).
    """
    config, split, model, tx, state = setup
    config = configs.override(config, prior=prior, no_edge_prob=0.8)
    train_step = training.make_train_step(model, tx, config)
    key = jax.random.key(3)
    _, sums = train_step(state, split, jnp.arange(B), key)
    out = _train_forward(model, state, split.features[:B], key)
    x = np.asarray(split.features[:B], np.float64)
    sq = (np.asarray(out.predictions, np.float64) - x[:, :, 1:]) ** 2
    nll = sq.sum(axis=(1, 2, 3)) / (2 * 1e-2) / N
    p = np.asarray(out.probs, np.float64)
    prior_probs = np.array([0.8, 0.2]) if prior == "sparse" else np.array([0.5, 0.5])
    kl = (p * (np.log(p + 1e-16) - np.log(prior_probs))).sum(axis=(1, 2)) / N
    # float32 sums of O(1e3) terms, each computed by a separately compiled program.
    np.testing.assert_allclose(float(sums["nll"]) / B, nll.mean(), rtol=1e-4)
    np.testing.assert_allclose(float(sums["kl"]) / B, kl.mean(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(sums["loss"]) / B, (nll + kl).mean(), rtol=1e-4)
    assert float(sums["count"]) == B


def test_train_step_confusion_is_the_encoders_argmax_against_the_labels(setup, train_step):
    """No relabelling inside the step: plain counts of (label, argmax of the logits)."""
    config, split, model, tx, state = setup
    key = jax.random.key(4)
    _, sums = train_step(state, split, jnp.arange(B), key)
    logits = _train_forward(model, state, split.features[:B], key).logits
    np.testing.assert_array_equal(sums["confusion"],
                                  _numpy_confusion(logits, split.labels[:B], 2))


def test_eval_and_test_step_confusions_are_the_argmax_against_the_labels(setup):
    """Eval: the encoder on the whole window; test: on the first n_encoder_frames."""
    config, split, model, _, state = setup
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    encode = jax.jit(lambda x: model.apply(variables, x, train=False, method=NRI.encode))
    eval_sums = training.make_eval_step(model, config)(
        state, split, jnp.arange(B), jnp.ones(B), jax.random.key(5))
    np.testing.assert_array_equal(
        eval_sums["confusion"], _numpy_confusion(encode(split.features[:B]), split.labels[:B], 2))
    rng = np.random.default_rng(2)
    long = data_lib.Split(jnp.asarray(rng.normal(size=(B, N, 2 * T + 1, D)), jnp.float32),
                          split.labels[:B])
    test_sums = training.make_test_step(model, config, n_encoder_frames=T)(
        state, long, jnp.arange(B), jnp.ones(B), jax.random.key(6))
    np.testing.assert_array_equal(
        test_sums["confusion"], _numpy_confusion(encode(long.features[:, :, :T]), long.labels, 2))


def test_train_step_updates_finitely_and_compiles_once(setup, train_step):
    config, split, model, tx, state = setup
    step = train_step
    new, _ = step(state, split, jnp.arange(B), jax.random.key(0))
    new, sums = step(new, split, jnp.arange(B, 2 * B), jax.random.key(1))
    assert step._cache_size() == 1
    assert int(new.step) == 2 and int(sums["nonfinite_steps"]) == 0
    leaves = jax.tree.leaves(new.params)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new.params, state.params)
    assert max(jax.tree.leaves(moved)) > 0


def test_nonfinite_loss_is_flagged_with_its_step(setup, train_step):
    config, split, model, tx, state = setup
    bad = data_lib.Split(split.features.at[0, 0, 0, 0].set(jnp.nan), split.labels)
    _, sums = train_step(state, bad, jnp.arange(B), jax.random.key(0))
    assert int(sums["nonfinite_steps"]) == 1 and int(sums["first_nonfinite_step"]) == 0


def test_padded_rows_do_not_count_in_evaluation(setup):
    config, split, model, _, state = setup
    step = training.make_eval_step(model, config)
    key = jax.random.key(5)
    idx = jnp.arange(B)
    full = step(state, split, idx, jnp.ones(B), key)
    weights = jnp.asarray([1.0] * 5 + [0.0] * 3)
    padded = step(state, split, idx.at[5:].set(0), weights, key)
    assert float(padded["count"]) == 5
    # Evaluation is per example (running BatchNorm statistics), so the real rows'
    # sums do not depend on what fills the padding.
    per_example = step(state, split, idx.at[5:].set(1), weights, key)
    for k in ("nll", "kl", "mse", "confusion"):
        np.testing.assert_allclose(padded[k], per_example[k], rtol=1e-6)
    assert float(full["count"]) == B


def test_test_step_reports_every_horizon(setup):
    config, _, model, _, state = setup
    rng = np.random.default_rng(1)
    long = data_lib.Split(jnp.asarray(rng.normal(size=(B, N, 2 * T + 1, D)), jnp.float32),
                          jnp.zeros((B, N * (N - 1)), jnp.int32))
    step = training.make_test_step(model, config, n_encoder_frames=T)
    sums = step(state, long, jnp.arange(B), jnp.ones(B), jax.random.key(0))
    assert sums["mse_by_horizon"].shape == (training.test_horizon(config, 2 * T + 1, T),)
    report = training.summarise(sums)
    assert len(report["mse_by_horizon"]) == T
    assert np.all(np.isfinite(report["mse_by_horizon"]))


def test_summarise_reports_plain_and_best_permutation_accuracy():
    confusion = jnp.asarray([[0.0, 30.0], [10.0, 0.0]])  # every edge type swapped
    report = training.summarise({"count": jnp.asarray(4.0), "nll": jnp.asarray(8.0),
                                 "confusion": confusion})
    assert report["nll"] == 2.0
    assert report["edge_accuracy"] == 0.0
    assert report["edge_accuracy_best_permutation"] == 1.0
    assert report["best_permutation"] == [1, 0]


def test_learning_rate_halves_every_decay_period():
    cfg = configs.TrainConfig(learning_rate=4e-3, lr_decay_every=2, lr_decay_factor=0.5)
    schedule = training.learning_rate_schedule(cfg, steps_per_epoch=10)
    values = [float(schedule(s)) for s in (0, 19, 20, 39, 40)]
    np.testing.assert_allclose(values, [4e-3, 4e-3, 2e-3, 2e-3, 1e-3], rtol=1e-6)
