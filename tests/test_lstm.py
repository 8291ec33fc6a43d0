"""The LSTM prediction baselines against a float64 NumPy forward pass, and their semantics."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax import configs, experiment, lstm
from nri_jax.model import DECODERS
from nri_jax.rollouts import ONE_STEP, Teaching

B, N, T, D, H = 2, 3, 7, 4, 8


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def numpy_cell(p, x, h, c):
    gates = x @ p["input"]["kernel"] + p["input"]["bias"] + h @ p["recurrent"]["kernel"]
    i, f, g, o = np.split(gates, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def numpy_decoder(params, x, ground_truth, joint, *, hidden=False):
    """The baseline's rollout written out: [B, N, T, D] -> [B, N, T-1, D]; with `hidden`,
    the top layer's states after each step instead ([B, N, T-1, H], single LSTM)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["step"])
    dense = lambda name, v: v @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
    width = N * H if joint else H
    shape = (B, width) if joint else (B, N, width)
    states = [(np.zeros(shape), np.zeros(shape)) for _ in range(lstm.N_LAYERS)]
    previous, out, states_out = None, [], []
    for s in range(T - 1):
        frame = x[:, :, s] if ground_truth[s] else previous
        h = np.maximum(dense("in2", np.maximum(dense("in1", frame), 0)), 0)
        h = h.reshape(B, N * H) if joint else h
        for layer in range(lstm.N_LAYERS):
            states[layer] = numpy_cell(p[f"lstm{layer}"], h, *states[layer])
            h = states[layer][0]
        states_out.append(h)
        delta = dense("out2", np.maximum(dense("out1", h), 0))
        previous = frame + delta.reshape(B, N, D)
        out.append(previous)
    return np.stack(states_out if hidden else out, axis=2)


def init(joint, x):
    decoder = (lstm.JointLSTMDecoder if joint else lstm.LSTMDecoder)(hidden=H)
    return decoder, decoder.init(jax.random.key(0), x, train=False)


@pytest.mark.parametrize("joint", [False, True])
@pytest.mark.parametrize("teaching", [ONE_STEP, Teaching(burn_in=3)])
def test_matches_a_numpy_rollout(joint, teaching, x64):
    x = np.random.default_rng(0).normal(size=(B, N, T, D))
    decoder, variables = init(joint, jnp.asarray(x))
    got = jax.jit(lambda v, x: decoder.apply(v, x, None, train=False, teaching=teaching))(
        variables, x)
    expected = numpy_decoder(variables["params"], x, teaching.ground_truth(T - 1), joint)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_hidden_states_are_the_top_layer_after_each_true_frame(x64):
    x = np.random.default_rng(3).normal(size=(B, N, T, D))
    decoder, variables = init(False, jnp.asarray(x))
    got = jax.jit(lambda v, x: decoder.apply(v, x, method=lstm.LSTMDecoder.hidden_states))(
        variables, x)
    expected = numpy_decoder(variables["params"], x, np.ones(T - 1, bool), False, hidden=True)
    assert got.shape == (B, N, T - 1, H)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    joint, joint_variables = init(True, jnp.asarray(x))
    with pytest.raises(ValueError, match="joint LSTM's hidden states mix all objects"):
        joint.apply(joint_variables, x, method=lstm.LSTMDecoder.hidden_states)


@pytest.mark.parametrize("joint", [False, True])
def test_objects_interact_only_in_the_joint_lstm(joint):
    x = np.random.default_rng(1).normal(size=(B, N, T, D)).astype(np.float32)
    decoder, variables = init(joint, jnp.asarray(x))
    other = x.copy()
    other[:, 0] += 1.0  # object 0 moves elsewhere
    a, b = (decoder.apply(variables, v, None, train=False, teaching=Teaching(burn_in=3))
            for v in (x, other))
    changed = np.abs(np.asarray(a) - np.asarray(b))[:, 1:].max()  # the other objects
    assert (changed > 1e-4) if joint else (changed == 0)


def test_frames_after_the_burn_in_are_never_read():
    x = np.random.default_rng(2).normal(size=(B, N, T, D)).astype(np.float32)
    decoder, variables = init(False, jnp.asarray(x))
    run = lambda v: np.asarray(decoder.apply(variables, v, None, train=False,  # noqa: E731
                                             teaching=Teaching(burn_in=3)))
    later, last_read = x.copy(), x.copy()
    later[:, :, 3:] = 0.0
    last_read[:, :, 2] += 1.0
    np.testing.assert_array_equal(run(later), run(x))
    assert np.abs(run(last_read) - run(x))[:, :, 2:].min() > 0


def test_parameter_counts_follow_the_original_layout():
    x = jnp.zeros((1, 5, T, D))
    h = 256
    mlps = (D * h + h) + (h * h + h)  # input MLP

    def count(width):
        cells = lstm.N_LAYERS * (2 * width * 4 * width + 4 * width)
        return mlps + cells + (width * width + width)

    for joint, width, out in ((False, h, D), (True, 5 * h, 5 * D)):
        decoder = (lstm.JointLSTMDecoder if joint else lstm.LSTMDecoder)(hidden=h)
        shapes = jax.eval_shape(lambda: decoder.init(jax.random.key(0), x, train=False))
        assert sum(a.size for a in jax.tree.leaves(shapes)) == count(width) + width * out + out


def test_graph_free_decoders_train_only_alone():
    assert not DECODERS["lstm-joint"].reads_graph and not DECODERS["lstm-single"].reads_graph
    with pytest.raises(ValueError, match="reads no graph.*method='full-graph'"):
        configs.override(configs.get_preset("tiny"), decoder="lstm-single")


@pytest.mark.e2e
def test_a_run_reports_its_prediction_error(tmp_path):
    config = configs.override(configs.get_preset("tiny"), decoder="lstm-joint",
                              method="full-graph", epochs=1, data_dir=str(tmp_path / "data"))
    report = experiment.train_and_evaluate(config, tmp_path / "run", log=lambda _: None)
    assert "edge_accuracy" not in report and len(report["mse_by_horizon"]) == 49
    again, _ = experiment.evaluate_run(tmp_path / "run", out=tmp_path / "again.json",
                                       log=lambda _: None)
    assert again["mse_by_horizon"] == json.loads((tmp_path / "run/report.json").read_text())[
        "mse_by_horizon"]


@pytest.mark.parametrize("joint", [False, True])
def test_bfloat16_predictions_and_gradients_agree_with_float32(joint):
    x = jnp.asarray(np.random.default_rng(3).normal(size=(B, N, T, D)), jnp.float32)
    full, mixed = (lstm.LSTMDecoder(hidden=H, joint=joint, compute_dtype=c)
                   for c in ("float32", "bfloat16"))
    variables = full.init(jax.random.key(3), x, train=False)

    def loss(module, variables):
        return jnp.mean((module.apply(variables, x, train=False) - x[:, :, 1:]) ** 2)

    (want, want_grads), (got, got_grads) = (jax.jit(jax.value_and_grad(
        lambda v, m=m: loss(m, v)))(variables) for m in (full, mixed))
    # bfloat16 products round to ~2^-8 relative, a few products deep over 6 steps.
    assert abs(got - want) < 0.05 * want and got != want
    for a, b in zip(jax.tree.leaves(want_grads), jax.tree.leaves(got_grads)):
        assert np.max(np.abs(b - a)) <= 0.1 * np.max(np.abs(a)) + 1e-6
