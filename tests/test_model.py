"""The NRI VAE: config validation, shapes, sampling modes, a train step, learning."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nri_jax import decoders, encoders, graphs, losses
from nri_jax.model import NRI, ModelConfig, NRIOutput, decoder_protocol
from nri_jax.rollouts import ONE_STEP, Teaching
from helpers import numpy_variables as _numpy_variables

TINY = dict(encoder_hidden=8, decoder_hidden=8)


@pytest.mark.parametrize("field, value", [
    ("n_edge_types", 1), ("encoder", "gnn"), ("decoder", "lstm"), ("encoder_hidden", 0),
    ("decoder_hidden", -1), ("encoder_dropout", 1.0), ("decoder_dropout", -0.1), ("tau", 0.0),
    ("rnn_message_scale", "edges"), ("decoder_chunk_size", 0),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field}.*{value}"):
        ModelConfig(**{field: value})


def test_keeping_messages_needs_remat():
    with pytest.raises(ValueError, match="remat_keeps_messages.*without remat.*True"):
        ModelConfig(remat=False, remat_keeps_messages=True)


@pytest.mark.parametrize("decoder", ["mlp", "rnn"])
def test_the_model_builds_its_decoder_with_the_remat_choice(decoder):
    """Fields that change no value (what remat keeps) must still reach the decoder."""
    for keep in (False, True):
        config = ModelConfig(decoder=decoder, remat_keeps_messages=keep, **TINY)
        assert NRI(config).bind({}).decoder.remat_keeps_messages is keep


@pytest.mark.parametrize("config, expected", [
    (ModelConfig(), 710_146 + 269_828),
    (ModelConfig(encoder="cnn", decoder="rnn"), 933_379 + 727_300),
])
def test_full_model_parameter_count(config, expected):
    x = jnp.zeros((1, 5, 49, 4))
    shapes = jax.eval_shape(lambda: NRI(config).init(
        {"params": jax.random.key(0), "gumbel": jax.random.key(1)}, x, train=False))
    assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes["params"])) == \
        expected


def _normal(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _eval_apply(model, **kwargs):
    return jax.jit(lambda v, x: model.apply(v, x, train=False, rngs={"gumbel": jax.random.key(1)},
                                            **kwargs))


@pytest.mark.parametrize("config, shape", [
    (ModelConfig(n_edge_types=3, **TINY), (2, 3, 6, 2)),
    (ModelConfig(encoder="cnn", decoder="rnn", skip_first=True, **TINY), (2, 4, 14, 3)),
])
def test_shapes_and_hard_samples_in_eval(config, shape):
    b, n, t, d = shape
    x = _normal(shape, 1)
    model = NRI(config)
    teaching = decoder_protocol(config).training(t, prediction_steps=2)
    out = _eval_apply(model, teaching=teaching)(_numpy_variables(model, x, train=False), x)
    assert isinstance(out, NRIOutput)
    k, e = config.n_edge_types, n * (n - 1)
    assert out.logits.shape == out.probs.shape == out.edges.shape == (b, e, k)
    assert out.predictions.shape == (b, n, t - 1, d)
    np.testing.assert_allclose(out.probs, jax.nn.softmax(out.logits), rtol=1e-6)
    assert set(np.unique(np.asarray(out.edges)).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("config", [ModelConfig(**TINY),
                                    ModelConfig(encoder="cnn", decoder="rnn", **TINY)],
                         ids=["mlp+mlp", "cnn+rnn"])
def test_float32_data_gives_a_float32_model_under_x64(x64, config):
    """Parameters are float32 whatever jax's default float is, so float32 data runs in float32."""
    x = _normal((2, 4, 14, 3), 3)
    model = NRI(config)
    variables = model.init({"params": jax.random.key(0), "gumbel": jax.random.key(1)}, x,
                           train=False)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = _eval_apply(model)(variables, x)
    assert out.predictions.dtype == jnp.float32


@pytest.mark.parametrize("hard, train, one_hot", [
    (False, True, False), (True, True, True), (False, False, True)])
def test_sample_edges_soft_in_training_unless_hard(hard, train, one_hot):
    model = NRI(ModelConfig(hard=hard, **TINY))
    logits = _normal((2, 6, 2), 2)
    edges = jax.jit(lambda l: model.apply({}, l, train=train, rngs={"gumbel": jax.random.key(3)},
                                          method=NRI.sample_edges))(logits)
    assert (set(np.unique(np.asarray(edges)).tolist()) <= {0.0, 1.0}) == one_hot


def test_training_samples_use_the_configured_temperature():
    """Soft samples are softmax((logits + g) / tau) with tau from the config.

    So tau * log(s_k / s_0) - (logits_k - logits_0) is g_k - g_0, the same
    Gumbel noise for every tau under the same key: recovered from two
    temperatures it must agree (a temperature ignored by the model does not).
    """
    logits = _normal((2, 6, 3), 13)
    eps = np.finfo(np.float32).eps
    noise, tol = {}, 0.0
    for tau in (0.25, 2.0):
        model = NRI(ModelConfig(n_edge_types=3, tau=tau, **TINY))
        sample = jax.jit(lambda l: model.apply({}, l, train=True, method=NRI.sample_edges,
                                               rngs={"gumbel": jax.random.key(4)}))
        log_s = np.log(np.asarray(sample(logits), np.float64))
        scaled = tau * (log_s[..., 1:] - log_s[..., :1])
        noise[tau] = scaled - (logits[..., 1:] - logits[..., :1])
        # float32 softmax and log: a few ulps relative to |(logits + g) / tau| and |log s|,
        # times tau, plus the rounding of logits + g itself.
        tol += 32 * eps * (1 + np.max(np.abs(scaled)) + np.max(np.abs(tau * log_s)))
    np.testing.assert_allclose(noise[0.25], noise[2.0], rtol=0, atol=tol)
    assert np.std(noise[2.0]) > 0.5  # real Gumbel noise (difference std pi / sqrt(3))


@pytest.mark.parametrize("config", [
    ModelConfig(n_edge_types=3, factor=False, skip_first=True, compute_dtype="bfloat16", **TINY),
    ModelConfig(encoder="cnn", decoder="rnn", skip_first=True, compute_dtype="bfloat16", **TINY),
    ModelConfig(decoder="rnn", rnn_message_scale="state_dims", decoder_chunk_size=1, **TINY),
    ModelConfig(decoder_chunk_size=1, remat_keeps_messages=True, **TINY),
])
def test_config_fields_reach_the_encoder_and_decoder(config):
    """NRI(config) computes what an encoder and a decoder built from the config's fields compute.

    Each field is passed by keyword here, so a field that NRI drops or passes
    to the wrong slot (skip_first, factor, compute_dtype, ...) shows up as a
    different parameter tree or different numbers.
    """
    c = config
    encoder = {"mlp": encoders.MLPEncoder, "cnn": encoders.CNNEncoder}[c.encoder](
        hidden=c.encoder_hidden, n_edge_types=c.n_edge_types, dropout=c.encoder_dropout,
        factor=c.factor, compute_dtype=c.compute_dtype)
    rnn_only = {"message_scale": c.rnn_message_scale} if c.decoder == "rnn" else {}
    decoder = {"mlp": decoders.MLPDecoder, "rnn": decoders.RNNDecoder}[c.decoder](
        hidden=c.decoder_hidden, n_edge_types=c.n_edge_types, skip_first=c.skip_first,
        dropout=c.decoder_dropout, compute_dtype=c.compute_dtype, remat=c.remat,
        remat_keeps_messages=c.remat_keeps_messages, chunk_size=c.decoder_chunk_size, **rnn_only)
    x = _normal((2, 4, 14, 2), 11)  # N-1 != D: the two RNN message scales differ
    edges = jax.nn.softmax(_normal((2, 12, c.n_edge_types), 12))  # every type carries weight
    model = NRI(config)
    variables = _numpy_variables(model, x, train=False)
    part = lambda name: {col: tree[name] for col, tree in variables.items() if name in tree}
    assert jax.tree.structure(part("encoder")) == jax.tree.structure(
        jax.eval_shape(lambda: encoder.init(jax.random.key(0), x, train=False)))
    assert jax.tree.structure(part("decoder")) == jax.tree.structure(
        jax.eval_shape(lambda: decoder.init(jax.random.key(0), x, edges, train=False)))
    steps = dict(teaching=decoder_protocol(c).training(x.shape[2], 3, 5))
    with jax.default_matmul_precision("highest"):  # float32 products on GPUs too (not TF32)
        logits, predictions = jax.jit(lambda v: (
            model.apply(v, x, train=False, method=NRI.encode),
            model.apply(v, x, edges, train=False, method=NRI.decode, **steps)))(variables)
        expected_logits, expected_predictions = jax.jit(lambda e, d: (
            encoder.apply(e, x, train=False), decoder.apply(d, x, edges, train=False, **steps)))(
                part("encoder"), part("decoder"))
    # The same products in one program or two: only XLA's fusion may differ, a few
    # float32 ulps of the largest value. A float32 product instead of a bfloat16 one
    # differs by about 2^-8 relative, far outside this.
    for got, want in ((logits, expected_logits), (predictions, expected_predictions)):
        scale = float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, rtol=0, atol=64 * np.finfo(np.float32).eps * scale)


@pytest.mark.parametrize("encoder_dropout, decoder_dropout", [(0.5, 0.0), (0.0, 0.5)])
def test_dropout_rates_reach_the_encoder_and_decoder(encoder_dropout, decoder_dropout):
    """In training, a part's output depends on the dropout key exactly when its rate is > 0."""
    model = NRI(ModelConfig(encoder_dropout=encoder_dropout, decoder_dropout=decoder_dropout,
                            **TINY))
    x = _normal((2, 3, 6, 2), 14)
    edges = decoders.fully_connected_edges(2, 6, 2)
    variables = _numpy_variables(model, x, train=False)

    @jax.jit
    def train_outputs(key):
        logits, _ = model.apply(variables, x, train=True, rngs={"dropout": key},
                                mutable=["batch_stats"], method=NRI.encode)
        return logits, model.apply(variables, x, edges, train=True, rngs={"dropout": key},
                                   teaching=Teaching(period=2), method=NRI.decode)

    (logits0, predictions0), (logits1, predictions1) = (train_outputs(jax.random.key(s))
                                                        for s in (0, 1))
    assert (not np.array_equal(logits0, logits1)) == (encoder_dropout > 0)
    assert (not np.array_equal(predictions0, predictions1)) == (decoder_dropout > 0)


def test_given_edges_decoder_inputs_and_methods_agree_with_call():
    config = ModelConfig(**TINY)
    x, longer = _normal((2, 3, 6, 2), 4), _normal((2, 3, 8, 2), 5)
    given = decoders.fully_connected_edges(2, 6, 2)
    model = NRI(config)
    variables = _numpy_variables(model, x, train=False)
    # One program (the call) against two (the methods): the same float32 products, so only
    # XLA's fusion may differ, by a few ulps of the largest value (hence the absolute floor);
    # full float32 products keep a GPU's TF32 rounding (~2^-11) out of the comparison.
    with jax.default_matmul_precision("highest"):
        out = jax.jit(lambda v, x, longer, e: model.apply(
            v, x, train=False, teaching=Teaching(period=3), edges=e, decoder_inputs=longer))(
                variables, x, longer, given)
        logits = jax.jit(lambda v, x: model.apply(v, x, train=False, method=NRI.encode))(
            variables, x)
        predictions = jax.jit(lambda v, x, e: model.apply(
            v, x, e, train=False, teaching=Teaching(period=3), method=NRI.decode))(
                variables, longer, given)
    np.testing.assert_array_equal(out.edges, given)
    assert out.predictions.shape == (2, 3, 7, 2)
    for got, want in ((logits, out.logits), (predictions, out.predictions)):
        floor = 8 * np.finfo(np.float32).eps * float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=floor)


def test_train_step_is_finite_and_does_not_recompile():
    config = ModelConfig(**TINY)  # (dropout doubles the compile time; tested elsewhere)
    model, tx, traces = NRI(config), optax.adam(1e-3), []
    x = _normal((4, 3, 6, 2), 6)
    variables = _numpy_variables(model, x, train=False)

    def loss_fn(params, batch_stats, x, key):
        gumbel_key, dropout_key = jax.random.split(key)
        out, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                   rngs={"gumbel": gumbel_key, "dropout": dropout_key},
                                   mutable=["batch_stats"], teaching=Teaching(period=2))
        nll = losses.gaussian_nll(out.predictions, x[:, :, 1:], variance=5e-5)
        kl = losses.kl_categorical_uniform(out.probs)
        return jnp.mean(nll + kl) / x.shape[1], (updates["batch_stats"], out.edges)

    @jax.jit
    def train_step(params, batch_stats, opt_state, x, key):
        traces.append(1)  # runs once per trace, not per call
        (loss, (batch_stats, edges)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss, grads, edges

    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    for i in range(2):
        *state, loss, grads, edges = train_step(*state, x + i, jax.random.key(10 + i))
        assert np.isfinite(loss)
        assert all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(state))
    assert len(traces) == 1
    # Training: soft edge samples, and BatchNorm running statistics move.
    assert not set(np.unique(np.asarray(edges)).tolist()) <= {0.0, 1.0}
    moved = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), state[1],
                                   variables["batch_stats"])
    assert all(jax.tree_util.tree_leaves(moved))
    # Every parameter receives a gradient (nothing is disconnected).
    assert all(np.abs(g).sum() > 0 for g in jax.tree_util.tree_leaves(grads))


def _springs(rng, n_sims, n_objects, n_frames, *, k=1.0, dt=0.01, every=10):
    """Hooke springs on a random symmetric graph, symplectic Euler; [S, N, T, 4], adjacency."""
    upper = np.triu(rng.random((n_sims, n_objects, n_objects)) < 0.5, 1)
    adjacency = (upper | upper.transpose(0, 2, 1)).astype(np.float64)
    x = rng.normal(0, 0.5, (n_sims, n_objects, 2))
    angle = rng.uniform(0, 2 * np.pi, (n_sims, n_objects))
    v = 0.5 * np.stack([np.cos(angle), np.sin(angle)], -1)
    frames = []
    for step in range(n_frames * every):
        v = v - dt * k * np.einsum("bij,bijd->bid", adjacency, x[:, :, None] - x[:, None, :])
        x = x + dt * v
        if (step + 1) % every == 0:
            frames.append(np.concatenate([x, v], -1))
    trajectories = np.stack(frames, axis=2)
    return trajectories / trajectories.std(axis=(0, 1, 2)), adjacency


def test_mlp_decoder_learns_springs_with_the_true_graph_not_the_wrong_one():
    trajectories, adjacency = _springs(np.random.default_rng(0), 128, 4, 6)
    x = jnp.asarray(trajectories, jnp.float32)
    labels = graphs.edge_matrix_to_list(jnp.asarray(adjacency)).astype(jnp.int32)
    true_graph = decoders.one_hot_edges(labels, 2)
    wrong_graph = decoders.one_hot_edges(1 - labels, 2)  # the complement
    decoder = decoders.MLPDecoder(hidden=32, n_edge_types=2, skip_first=True)
    # The decoder's own (PyTorch-default) initialisation, as in training.
    params = jax.jit(lambda x, e: decoder.init(jax.random.key(0), x, e, train=False))(
        x, true_graph)["params"]
    tx = optax.adam(3e-3)

    @jax.jit
    def loss_fn(params, edges):
        predictions = decoder.apply({"params": params}, x, edges, train=False, teaching=ONE_STEP)
        return jnp.mean(jnp.square(predictions - x[:, :, 1:]))

    @jax.jit
    def step(params, opt_state, edges):
        loss, grads = jax.value_and_grad(loss_fn)(params, edges)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    final = {}
    for name, edges in (("true", true_graph), ("wrong", wrong_graph)):
        p, opt_state = params, tx.init(params)
        p, opt_state, initial = step(p, opt_state, edges)
        for _ in range(200):
            p, opt_state, _ = step(p, opt_state, edges)
        final[name] = float(loss_fn(p, edges))
        if name == "true":
            # Measured: 400-550x over seeds 0-2. The one-step MSE must fall by at least 50x.
            assert final["true"] < float(initial) / 50
    # Measured: 33-41x. Without the right neighbours the forces cannot be predicted.
    assert final["wrong"] > 5 * final["true"]


def test_compute_dtype_is_validated():
    with pytest.raises(ValueError, match="compute_dtype.*float16"):
        ModelConfig(compute_dtype="float16")


@pytest.mark.parametrize("config", [ModelConfig(**TINY),
                                    ModelConfig(encoder="cnn", decoder="rnn", **TINY)])
def test_bfloat16_train_step_agrees_with_float32(config):
    x = _normal((4, 3, 14, 2), 8)
    models = [NRI(dataclasses.replace(config, compute_dtype=c)) for c in ("float32", "bfloat16")]
    variables = _numpy_variables(models[0], x, train=False)

    def loss_and_grads(model):
        def loss_fn(params):
            out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                 train=True, rngs={"gumbel": jax.random.key(2)},
                                 mutable=["batch_stats"],
                                 teaching=decoder_protocol(config).training(x.shape[2], 2))
            nll = losses.gaussian_nll(out.predictions, x[:, :, 1:], variance=5e-5)
            return jnp.mean(nll + losses.kl_categorical_uniform(out.probs)), out.logits
        return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])

    (loss32, logits32), grads32 = loss_and_grads(models[0])
    (loss16, logits16), grads16 = loss_and_grads(models[1])
    leaves16 = jax.tree_util.tree_leaves(grads16)
    assert all(g.dtype == jnp.float32 and np.all(np.isfinite(g)) for g in leaves16)
    assert jax.tree_util.tree_structure(grads16) == jax.tree_util.tree_structure(grads32)
    # The loss is dominated by the NLL of the residual predictions (float32), so
    # it moves by well under 1%; logits carry a few 2^-8 units of error.
    np.testing.assert_allclose(loss16, loss32, rtol=1e-2)
    assert np.max(np.abs(logits16 - logits32)) < 0.05 * max(1.0, np.max(np.abs(logits32)))
    # Gradients point the same way (cosine similarity per parameter tensor; the
    # attention conv's bias has an exactly zero gradient, softmax being shift
    # invariant, hence the tiny absolute slack).
    for g16, g32 in zip(leaves16, jax.tree_util.tree_leaves(grads32)):
        g16, g32 = np.ravel(g16), np.ravel(g32)
        assert g16 @ g32 >= 0.9 * np.linalg.norm(g16) * np.linalg.norm(g32) - 1e-12
