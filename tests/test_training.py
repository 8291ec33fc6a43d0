"""Tests of the jitted train / eval / test steps and of metric summaries."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax import configs, sampling, training
from nri_jax import data as data_lib
from nri_jax.model import NRI, decoder_protocol
from nri_jax.rollouts import ONE_STEP, Teaching

B, N, T, D = 8, 4, 12, 4


@pytest.fixture(autouse=True)
def full_float32_products():
    """The steps are compared with separately compiled forward passes to float32 round-off:
    full float32 matrix products keep a GPU's TF32 (~2^-11 relative) out of that."""
    with jax.default_matmul_precision("highest"):
        yield


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
                         rngs={"gumbel": gumbel_key, "dropout": dropout_key},
                         teaching=Teaching(period=5))
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


def test_eval_step_confusion_is_the_argmax_against_the_labels(setup):
    config, split, model, _, state = setup
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = model.apply(variables, split.features[:B], train=False, method=NRI.encode)
    sums = training.make_eval_step(model, config)(
        state, split, jnp.arange(B), jnp.ones(B), jax.random.key(5))
    np.testing.assert_array_equal(sums["confusion"],
                                  _numpy_confusion(logits, split.labels[:B], 2))


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


def test_compile_ahead_leaves_nothing_to_compile_at_the_first_step(setup):
    config, split, model, tx, state = setup
    step = training.make_train_step(model, tx, config)
    args = (state, split, jnp.arange(B), jax.random.key(0))
    compiled = []

    def listener(name, secs, **kwargs):
        if "compile" in name:
            compiled.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        training.compile_ahead(step, *args)
        assert compiled  # the listener sees compilations
        compiled.clear()
        jax.block_until_ready(step(*args))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiled == []
    assert step._cache_size() == 1


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
    assert sums["mse_by_horizon"].shape == (decoder_protocol(config.model).horizon(2 * T + 1, T),)
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


def test_optimizer_follows_the_decay_schedule():
    """Adam on a constant gradient g steps by lr_t * g / (|g| + eps): the schedule, step by step.

    (Both bias-corrected moments equal g and g^2 exactly for a constant gradient.)
    """
    cfg = configs.TrainConfig(learning_rate=4e-3, lr_decay_every=2, lr_decay_factor=0.5)
    steps_per_epoch, n_steps = 3, 14
    tx = training.make_optimizer(cfg, steps_per_epoch)
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    update = jax.jit(tx.update)
    opt_state, steps = tx.init(params), []
    for _ in range(n_steps):
        updates, opt_state = update(grads, opt_state, params)
        steps.append(np.asarray(updates["w"], np.float64))
    g = np.asarray(grads["w"], np.float64)
    lr = 4e-3 * 0.5 ** (np.arange(n_steps) // (2 * steps_per_epoch))
    expected = -lr[:, None] * g / (np.abs(g) + 1e-8)
    # Adam's float32 bias correction 1 - b2^t (b2 = 0.999) cancels: relative error up to
    # eps / (1 - b2), halved by the square root; the moments add a few ulps.
    np.testing.assert_allclose(np.stack(steps), expected,
                               rtol=np.finfo(np.float32).eps / (1 - 0.999))


def test_clipped_adam_is_adam_on_the_clipped_gradient():
    """With clip_grad_norm c, each gradient g becomes g * min(1, c / |g|) before Adam:
    against Adam written out in NumPy float64 over gradients above and below c (Adam is
    scale invariant in one step only: an unclipped 1e4 outlier changes every later one)."""
    lr, c, b1, b2, eps = 1e-2, 2.0, 0.9, 0.999, 1e-8
    cfg = configs.TrainConfig(learning_rate=lr, clip_grad_norm=c)
    tx = training.make_optimizer(cfg, steps_per_epoch=1)
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(2, 3)) * scale for scale in (1e4, 0.3, 1.0, 50.0, 0.1)]
    params = {"w": jnp.zeros((2, 3))}
    opt_state, got = tx.init(params), []
    for g in grads:
        updates, opt_state = tx.update({"w": jnp.asarray(g, jnp.float32)}, opt_state, params)
        got.append(np.asarray(updates["w"], np.float64))
    m = v = np.zeros((2, 3))
    expected = []
    for t, g in enumerate(grads, start=1):
        g = g * min(1.0, c / np.linalg.norm(g))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
        expected.append(-lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps))
    np.testing.assert_allclose(np.stack(got), np.stack(expected), rtol=1e-4, atol=1e-9)


def test_train_step_reports_the_gradient_norm(setup, train_step):
    """sums["grad_norm"] / count is the global norm of the loss's gradient, the loss
    written out here from a separate forward pass with the step's random streams."""
    config, split, model, tx, state = setup
    key = jax.random.key(6)
    _, sums = train_step(state, split, jnp.arange(B), key)
    x = split.features[:B]

    def loss(params):
        out = _train_forward(model, state.replace(params=params), x, key)
        nll = jnp.sum((out.predictions - x[:, :, 1:]) ** 2, axis=(1, 2, 3)) / (2 * 1e-2) / N
        p = out.probs
        kl = jnp.sum(p * (jnp.log(p + 1e-16) - jnp.log(0.5)), axis=(1, 2)) / N
        return jnp.mean(nll + kl)

    grads = jax.grad(loss)(state.params)
    norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree.leaves(grads)))
    np.testing.assert_allclose(float(sums["grad_norm"]) / float(sums["count"]), norm, rtol=1e-3)


@pytest.mark.parametrize("schedule, warmup", [("cosine", 0), ("cosine", 2), ("step", 1)])
def test_learning_rate_schedules_with_warm_up(schedule, warmup):
    cfg = configs.TrainConfig(epochs=6, learning_rate=4e-3, lr_schedule=schedule,
                              warmup_epochs=warmup, lr_decay_every=2, lr_decay_factor=0.5)
    steps_per_epoch = 5
    t = np.arange(cfg.epochs * steps_per_epoch + 1)
    after = np.maximum(t - warmup * steps_per_epoch, 0)  # steps since the warm-up ended
    if schedule == "cosine":
        total = (cfg.epochs - warmup) * steps_per_epoch
        expected = 4e-3 * 0.5 * (1 + np.cos(np.pi * after / total))
    else:
        expected = 4e-3 * 0.5 ** (after // (2 * steps_per_epoch))
    if warmup:
        ramp = t < warmup * steps_per_epoch
        expected[ramp] = 4e-3 * t[ramp] / (warmup * steps_per_epoch)
    got = jax.vmap(training.learning_rate_schedule(cfg, steps_per_epoch))(jnp.asarray(t))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_validation_nll_is_of_one_step_predictions(setup):
    """The eval step scores each frame predicted from the ground-truth frame before it,
    whatever prediction_steps training uses (5 here)."""
    config, split, model, _, state = setup
    key = jax.random.key(7)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x = split.features[:B]
    sums = training.make_eval_step(model, config)(state, split, jnp.arange(B), jnp.ones(B), key)
    edges = jax.jit(lambda x: model.apply(variables, x, train=False,
                                          rngs={"gumbel": key}).edges)(x)
    decode_pair = jax.jit(lambda pair: model.apply(variables, pair, edges, train=False,
                                                   teaching=ONE_STEP, method=NRI.decode))
    one_step = np.stack([np.asarray(decode_pair(x[:, :, t:t + 2]), np.float64)[:, :, 0]
                         for t in range(T - 1)], axis=2)
    assert set(np.unique(np.asarray(edges)).tolist()) <= {0.0, 1.0}  # hard samples
    x = np.asarray(x, np.float64)
    nll = ((one_step - x[:, :, 1:]) ** 2).sum(axis=(1, 2, 3)) / (2 * config.train.variance) / N
    # Same float32 arithmetic in another program: a few ulps per squared error.
    np.testing.assert_allclose(float(sums["nll"]) / B, nll.mean(),
                               rtol=64 * np.finfo(np.float32).eps)


def test_burn_in_steps_reach_the_train_step(setup):
    """The RNN decoder's burn-in in training is the config's, else T - prediction_steps."""
    config, split, _, tx, _ = setup
    seen = []

    class Recording(NRI):
        def __call__(self, inputs, **kwargs):
            seen.append(kwargs.get("teaching"))
            return super().__call__(inputs, **kwargs)

    for burn_in, expected in ((3, 3), (None, T - config.train.prediction_steps)):
        expected = Teaching(burn_in=expected)
        cfg = configs.override(config, decoder="rnn", burn_in_steps=burn_in)
        model = Recording(cfg.model)
        state = jax.eval_shape(functools.partial(training.init_state, model=model, tx=tx),
                               jax.random.key(0), example=split.features[:B])
        seen.clear()
        # Tracing is enough to see the static burn-in the decoder is given.
        jax.eval_shape(training.make_train_step(model, tx, cfg), state, split, jnp.arange(B),
                       jax.random.key(1))
        assert seen == [expected]


def test_test_step_encodes_the_first_frames_and_rolls_out_from_the_last_one(setup):
    """Edges from frames 0..t_enc-1 only; open loop from ground-truth frame t_enc."""
    config, _, model, _, state = setup
    rng = np.random.default_rng(2)
    long = data_lib.Split(jnp.asarray(rng.normal(size=(B, N, 2 * T + 1, D)), jnp.float32),
                          jnp.asarray(rng.integers(0, 2, size=(B, N * (N - 1))), jnp.int32))
    key = jax.random.key(4)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x = long.features
    horizon = decoder_protocol(config.model).horizon(2 * T + 1, T)
    sums = training.make_test_step(model, config, n_encoder_frames=T)(
        state, long, jnp.arange(B), jnp.ones(B), key)
    logits = model.apply(variables, x[:, :, :T], train=False, method=NRI.encode)
    edges = sampling.gumbel_softmax(key, logits, tau=config.model.tau, hard=True)
    step = jax.jit(lambda frame: model.apply(variables, jnp.stack([frame, frame], 2), edges,
                                             train=False, teaching=ONE_STEP,
                                             method=NRI.decode)[:, :, 0])
    frame, errors = x[:, :, T], []
    for h in range(horizon):  # feed back its own prediction, frame by frame
        frame = step(frame)
        errors.append(np.mean((np.asarray(frame, np.float64)
                               - np.asarray(x[:, :, T + h + 1], np.float64)) ** 2, axis=(1, 2)))
    np.testing.assert_array_equal(sums["confusion"], _numpy_confusion(logits, long.labels, 2))
    np.testing.assert_allclose(sums["mse_by_horizon"], np.sum(errors, axis=1),
                               rtol=64 * horizon * np.finfo(np.float32).eps)


def test_test_step_reports_the_static_baseline(setup):
    """Frame t_enc repeated, against each of the next H frames: from the data alone."""
    config, _, model, _, state = setup
    rng = np.random.default_rng(3)
    long = data_lib.Split(jnp.asarray(rng.normal(size=(B, N, 2 * T + 1, D)), jnp.float32),
                          jnp.zeros((B, N * (N - 1)), jnp.int32))
    weights = jnp.asarray(rng.integers(0, 2, size=B), jnp.float32)  # padding rows count 0
    sums = training.make_test_step(model, config, n_encoder_frames=T)(
        state, long, jnp.arange(B), weights, jax.random.key(0))
    x = np.asarray(long.features, np.float64)
    horizon = decoder_protocol(config.model).horizon(2 * T + 1, T)
    want = [np.asarray(weights) @ np.mean((x[:, :, T + h] - x[:, :, T]) ** 2, axis=(1, 2))
            for h in range(1, horizon + 1)]
    np.testing.assert_allclose(sums["static_mse_by_horizon"], want, rtol=1e-5)
