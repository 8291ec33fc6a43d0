"""Decoders against step-by-step NumPy float64 references, plus structural invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax import decoders, graphs
from nri_jax.rollouts import ONE_STEP, Teaching
from helpers import numpy_variables as _numpy_variables


def _np(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _relu(x):
    return np.maximum(x, 0)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _messages(p, nodes, edges, act, skip_first):
    """Per-type message MLPs on concat[sender, receiver], weighted and summed over types."""
    n = nodes.shape[1]
    senders, receivers = graphs.fully_connected_index(n)
    pre = np.concatenate([nodes[:, senders], nodes[:, receivers]], -1)
    total = 0.0
    for k in range(1 if skip_first else 0, edges.shape[-1]):
        hidden = act(pre @ p["first_kernel"][k] + p["first_bias"][k])
        total = total + act(hidden @ p["second_kernel"][k] + p["second_bias"][k]) * edges[..., k:k + 1]
    incoming = np.zeros(nodes.shape[:2] + (total.shape[-1],))
    for e, r in enumerate(receivers):  # explicit loop over edges, not a segment op
        incoming[:, r] += total[:, e]
    return incoming


def _out_mlp(p, x):
    x = _relu(x @ p["out1"]["kernel"] + p["out1"]["bias"])
    x = _relu(x @ p["out2"]["kernel"] + p["out2"]["bias"])
    return x @ p["out3"]["kernel"] + p["out3"]["bias"]


def _mlp_decoder_reference(p, x, edges, prediction_steps, skip_first):
    """Ground truth at frames 0, P, 2P, ...; own predictions in between (a Python loop)."""
    p = p["step"]
    predictions, current = [], None
    for t in range(x.shape[2] - 1):
        if t % prediction_steps == 0:
            current = x[:, :, t]
        incoming = _messages(p["messages"], current, edges, _relu, skip_first)
        current = current + _out_mlp(p, np.concatenate([current, incoming], -1))
        predictions.append(current)
    return np.stack(predictions, axis=2)


def _rnn_decoder_reference(p, x, edges, burn_in, skip_first, hidden_size, divisor=None,
                           period=None):
    """Ground truth for steps s < burn_in and, given a period, s % period == 0; divisor of
    the summed incoming messages: N-1 by default."""
    p = p["step"]
    b, n, t, d = x.shape
    n_types = edges.shape[-1] - (1 if skip_first else 0)
    divisor = n - 1 if divisor is None else divisor
    hidden = np.zeros((b, n, hidden_size))
    predictions = []
    for s in range(t - 1):
        teach = s < burn_in or (period is not None and s % period == 0)
        inp = x[:, :, s] if teach else predictions[-1]
        msg = _messages(p["messages"], hidden, edges, np.tanh, skip_first) / n_types / divisor
        xi = inp @ p["gru"]["input"]["kernel"] + p["gru"]["input"]["bias"]
        mm = msg @ p["gru"]["message"]["kernel"]
        h = hidden_size
        r = _sigmoid(xi[..., :h] + mm[..., :h])
        z = _sigmoid(xi[..., h:2 * h] + mm[..., h:2 * h])
        cand = np.tanh(xi[..., 2 * h:] + r * mm[..., 2 * h:])
        hidden = (1 - z) * cand + z * hidden
        predictions.append(inp + _out_mlp(p, hidden))
    return np.stack(predictions, axis=2)


def _inputs(shape, n_types, dtype=np.float32, seed=0):
    """NumPy inputs [B, N, T, D] and softmax edge weights [B, E, K]."""
    rng = np.random.default_rng(seed)
    b, n = shape[:2]
    logits = rng.normal(size=(b, n * (n - 1), n_types)) * 2
    edges = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return rng.normal(size=shape).astype(dtype), edges.astype(dtype)


def _apply(decoder, train=False, **kwargs):
    return jax.jit(lambda v, x, e, key=jax.random.key(0): decoder.apply(
        v, x, e, train=train, rngs={"dropout": key}, **kwargs))


@pytest.mark.parametrize("shape, k, steps, skip_first", [
    ((2, 3, 8, 2), 2, 3, False),
    ((1, 4, 6, 3), 3, 10, True),   # prediction_steps > T - 1: a single block
])
def test_mlp_decoder_matches_reference(x64, shape, k, steps, skip_first):
    # Dropout 0.5 must be inactive in eval: the reference has no dropout.
    decoder = decoders.MLPDecoder(hidden=6, n_edge_types=k, skip_first=skip_first, dropout=0.5)
    x, edges = _inputs(shape, k, np.float64)
    variables = _numpy_variables(decoder, x, edges, train=False)
    out = _apply(decoder, teaching=Teaching(period=steps))(variables, x, edges)
    assert out.shape == shape[:2] + (shape[2] - 1, shape[3])
    expected = _mlp_decoder_reference(_np(variables["params"]), np.asarray(x),
                                      np.asarray(edges, np.float64), steps, skip_first)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape, k, burn_in, period, skip_first, scale", [
    ((2, 3, 7, 2), 2, 4, None, False, "incoming"),
    ((1, 4, 5, 3), 3, None, None, True, "incoming"),  # default: burn-in T - 10, at least 1
    ((2, 4, 6, 2), 2, 3, None, False, "state_dims"),  # the reference's divisor D = 2, not N-1 = 3
    ((1, 3, 9, 2), 2, 2, 3, True, "incoming"),  # a burn-in, then ground truth every 3 steps
])
def test_rnn_decoder_matches_reference(x64, shape, k, burn_in, period, skip_first, scale):
    decoder = decoders.RNNDecoder(hidden=5, n_edge_types=k, skip_first=skip_first, dropout=0.5,
                                  message_scale=scale)
    x, edges = _inputs(shape, k, np.float64)
    variables = _numpy_variables(decoder, x, edges, train=False)
    teaching = None if burn_in is None else Teaching(burn_in=burn_in, period=period)
    out = _apply(decoder, teaching=teaching)(variables, x, edges)
    expected_burn_in = burn_in if burn_in is not None else max(shape[2] - 10, 1)
    expected = _rnn_decoder_reference(_np(variables["params"]), np.asarray(x),
                                      np.asarray(edges, np.float64), expected_burn_in,
                                      skip_first, 5, None if scale == "incoming" else shape[3],
                                      period)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def test_mlp_decoder_burn_in_needs_ground_truth_every_step(x64):
    decoder = decoders.MLPDecoder(hidden=6, n_edge_types=2)
    x, edges = _inputs((1, 3, 7, 2), 2, np.float64)
    variables = _numpy_variables(decoder, x, edges, train=False)
    # A burn-in with period 1 is one-step prediction everywhere, as ONE_STEP.
    np.testing.assert_allclose(_apply(decoder, teaching=Teaching(burn_in=4, period=1))(
        variables, x, edges), _apply(decoder, teaching=ONE_STEP)(variables, x, edges))
    with pytest.raises(ValueError, match="evenly spaced.*burn_in=3, period=2"):
        _apply(decoder, teaching=Teaching(burn_in=3, period=2))(variables, x, edges)
    with pytest.raises(ValueError, match="burn_in must be an int >= 1, got 0"):
        _apply(decoder, teaching=Teaching(burn_in=0))(variables, x, edges)


@pytest.mark.parametrize("decoder_cls", [decoders.MLPDecoder, decoders.RNNDecoder])
def test_no_interaction_graph_decouples_objects(decoder_cls):
    decoder = decoder_cls(hidden=8, n_edge_types=2, skip_first=True)
    b, n, t, d = 2, 4, 6, 2
    x, edges = _inputs((b, n, t, d), 2, seed=3)
    variables = _numpy_variables(decoder, x, edges, train=False)
    run = _apply(decoder, teaching=decoder.protocol.training(t, prediction_steps=2,
                                                             burn_in_steps=3))

    def apply(x, edges):
        return run(variables, x, edges)

    changed = x.copy()
    changed[:, 0] += 1.0  # move object 0's whole trajectory
    none = decoders.fully_connected_edges(b, n * (n - 1), 2, edge_type=0)
    full = decoders.fully_connected_edges(b, n * (n - 1), 2, edge_type=1)
    np.testing.assert_array_equal(apply(x, none)[:, 1:], apply(changed, none)[:, 1:])
    # With interactions the same change does reach the other objects.
    assert not np.allclose(apply(x, full)[:, 1:], apply(changed, full)[:, 1:], atol=1e-4)


@pytest.mark.parametrize("decoder_cls, expected", [
    (decoders.MLPDecoder, 269_828), (decoders.RNNDecoder, 727_300)])
def test_reference_parameter_counts(decoder_cls, expected):
    x, edges = jnp.zeros((1, 5, 49, 4)), jnp.zeros((1, 20, 2))
    shapes = jax.eval_shape(lambda: decoder_cls(256, 2).init(jax.random.key(0), x, edges,
                                                              train=False))
    assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes)) == expected


def test_dropout_in_training_and_edge_helpers():
    decoder = decoders.MLPDecoder(hidden=16, n_edge_types=2, dropout=0.5)
    x, edges = _inputs((2, 3, 5, 2), 2, seed=5)
    variables = _numpy_variables(decoder, x, edges, train=False)
    train = _apply(decoder, train=True)  # (eval-mode dropout: see the reference tests)
    assert not np.allclose(train(variables, x, edges, jax.random.key(0)),
                           train(variables, x, edges, jax.random.key(1)))
    labels = jnp.array([[0, 1, 1, 0, 1, 0]])
    np.testing.assert_array_equal(decoders.one_hot_edges(labels, 2),
                                  np.eye(2)[np.asarray(labels)])
    with pytest.raises(ValueError, match="edges"):
        decoder.apply(variables, x, edges[:, :4], train=False)
    with pytest.raises(ValueError, match="edge_type"):
        decoders.fully_connected_edges(1, 6, 2, edge_type=2)


@pytest.mark.parametrize("decoder_cls", [decoders.MLPDecoder, decoders.RNNDecoder])
def test_bfloat16_predictions_agree_with_float32(decoder_cls):
    full, mixed = (decoder_cls(hidden=32, n_edge_types=2, compute_dtype=c)
                   for c in ("float32", "bfloat16"))
    x, edges = _inputs((2, 4, 7, 3), 2, seed=7)
    variables = _numpy_variables(full, x, edges, train=False)
    want, got = (np.asarray(_apply(m, teaching=m.protocol.training(7, 3, 3))(variables, x, edges))
                 for m in (full, mixed))
    assert got.dtype == np.float32
    # The residual x + delta is float32: only delta carries bfloat16 error, about
    # 2^-8 relative per product, a few products deep and over <= 3 rollout steps.
    delta = want - x[:, :, :-1]
    assert np.max(np.abs(got - want)) < 0.05 * np.max(np.abs(delta))
    assert not np.array_equal(got, want)


@pytest.mark.parametrize("decoder_cls, expected", [
    (decoders.MLPDecoder, 269_828), (decoders.RNNDecoder, 727_300)])
def test_bfloat16_keeps_the_parameters(decoder_cls, expected):
    x, edges = jnp.zeros((1, 5, 49, 4)), jnp.zeros((1, 20, 2))
    shapes = jax.eval_shape(lambda: decoder_cls(256, 2, compute_dtype="bfloat16").init(
        jax.random.key(0), x, edges, train=False))
    leaves = jax.tree_util.tree_leaves(shapes)
    assert sum(int(np.prod(a.shape)) for a in leaves) == expected
    assert all(a.dtype == jnp.float32 for a in leaves)


@pytest.mark.parametrize("decoder_cls", [decoders.MLPDecoder, decoders.RNNDecoder])
@pytest.mark.parametrize("keep_messages", [False, True])
def test_remat_changes_memory_not_results(decoder_cls, keep_messages):
    plain = decoder_cls(hidden=8, n_edge_types=2)
    remat = decoder_cls(hidden=8, n_edge_types=2, remat=True, remat_keeps_messages=keep_messages)
    x, edges = _inputs((2, 3, 5, 2), 2, seed=8)
    variables = _numpy_variables(plain, x, edges, train=False)

    def grads(decoder):
        loss = lambda v: jnp.sum(decoder.apply(v, x, edges, train=False,
                                               teaching=decoder.protocol.training(5, 2, 2)) ** 2)
        # Remat recomputes activations in another program, which may round them differently;
        # full float32 products (not a GPU's TF32) keep that at float32 round-off.
        with jax.default_matmul_precision("highest"):
            return jax.jit(jax.value_and_grad(loss))(variables)

    (want, want_grads), (got, got_grads) = grads(plain), grads(remat)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for g, w in zip(jax.tree_util.tree_leaves(got_grads), jax.tree_util.tree_leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("decoder_cls", [decoders.MLPDecoder, decoders.RNNDecoder])
def test_keeping_messages_without_remat_is_refused(decoder_cls):
    decoder = decoder_cls(hidden=8, n_edge_types=2, remat=False, remat_keeps_messages=True)
    x, edges = _inputs((2, 3, 5, 2), 2, seed=8)
    with pytest.raises(ValueError, match="remat_keeps_messages=True needs remat=True"):
        decoder.init(jax.random.key(0), x, edges, train=False)


@pytest.mark.parametrize("decoder_cls", [decoders.MLPDecoder, decoders.RNNDecoder])
@pytest.mark.parametrize("skip_first", [False, True])
def test_remat_keeping_messages_skips_their_products(decoder_cls, skip_first):
    """The backward pass recomputes every product of a decoder step under remat but
    the message MLPs' second layers (one per active edge type) when it keeps them."""
    x, edges = _inputs((2, 3, 5, 2), 3, seed=8)

    def products(**remat):
        decoder = decoder_cls(hidden=8, n_edge_types=3, skip_first=skip_first, **remat)
        variables = _numpy_variables(decoder, x, edges, train=False)
        loss = lambda v: jnp.sum(decoder.apply(v, x, edges, train=False) ** 2)
        return jax.jit(jax.grad(loss)).lower(variables).as_text().count("dot_general")

    recomputing, keeping = products(remat=True), products(remat=True, remat_keeps_messages=True)
    assert recomputing - keeping == (2 if skip_first else 3)
    assert keeping > products(remat=False)  # the rest is still recomputed


@pytest.mark.parametrize("decoder_cls", [decoders.MLPDecoder, decoders.RNNDecoder])
@pytest.mark.parametrize("chunk_size", [1, 2, 3])
def test_batch_chunks_change_the_order_of_work_not_results(x64, decoder_cls, chunk_size):
    """Decoding the batch in chunks one after the other (strided examples, states reset
    per chunk) gives the unchunked predictions and gradients, in float64 to round-off."""
    whole = decoder_cls(hidden=6, n_edge_types=2, remat=True)
    chunked = decoder_cls(hidden=6, n_edge_types=2, remat=True, chunk_size=chunk_size)
    x, edges = _inputs((6, 3, 7, 2), 2, np.float64, seed=9)
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64),
                             _numpy_variables(whole, x, edges, train=False))

    def value_and_grads(decoder):
        loss = lambda v, e: jnp.sum(jnp.sin(decoder.apply(
            v, x, e, train=False, teaching=decoder.protocol.training(7, 3, 4))))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables, edges)

    assert decoders.batch_chunks(6, chunk_size) == {1: 6, 2: 3, 3: 2}[chunk_size]
    (want, want_grads), (got, got_grads) = value_and_grads(whole), value_and_grads(chunked)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    for g, w in zip(jax.tree_util.tree_leaves(got_grads), jax.tree_util.tree_leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_batch_chunks_divide_the_batch():
    assert [decoders.batch_chunks(128, s) for s in (None, 128, 64, 32, 48, 200)] == \
        [1, 1, 2, 4, 2, 1]
    assert decoders.batch_chunks(10, 3) == 2 and decoders.batch_chunks(7, 2) == 1
    with pytest.raises(ValueError, match="chunk_size"):
        decoders.batch_chunks(8, 0)
