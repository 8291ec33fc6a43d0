"""The simulation decoder: the true simulator driven by edge-type weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax import configs, experiment, graphs, simulation
from nri_jax.model import NRI, ModelConfig
from nri_jax.rollouts import ONE_STEP, Teaching
from simulators import datasets, systems

N, T, S = 5, 12, 6


def trajectories(system: str, seed: int = 0):
    """Normalised features [S, N, T, 4] (in the default float), edge labels [S, E], Physics."""
    keys = jax.random.split(jax.random.key(seed), S)
    arrays = {k: np.asarray(v) for k, v in
              systems.get(system).trajectories(keys, n_objects=N, n_frames=T).items()}
    stats = datasets.compute_stats(arrays["loc"], arrays["vel"])
    physical = np.swapaxes(np.concatenate([arrays["loc"], arrays["vel"]], axis=-1), 1, 2)
    labels = graphs.edge_matrix_to_list(systems.edge_type_labels(system, arrays["edges"]))
    return (datasets.normalise(physical, stats), np.asarray(labels),
            simulation.Physics.of(system, None, stats))


def decode(physics, x, edges, teaching=ONE_STEP):
    decoder = simulation.SimulationDecoder(physics, n_edge_types=edges.shape[-1])
    return jax.jit(lambda x, e: decoder.apply({}, x, e, train=False, teaching=teaching))(x, edges)


@pytest.mark.parametrize("system", ["springs", "charged"])
def test_true_graph_continues_the_simulator_exactly(system, x64):
    x, labels, physics = trajectories(system)
    edges = jax.nn.one_hot(labels, 2, dtype=jnp.float64)
    # One step from every ground-truth frame: the same integrator from the same states
    # gives the generator's own frames.
    np.testing.assert_allclose(decode(physics, x, edges), x[:, :, 1:], rtol=0, atol=1e-12)
    if system == "springs":  # and the whole trajectory from frame 0 alone (charged
        # particles are chaotic: close encounters amplify the normalisation's round-off)
        np.testing.assert_allclose(decode(physics, x, edges, Teaching()), x[:, :, 1:],
                                   rtol=0, atol=1e-9)
    # The graph matters: the opposite types predict other frames.
    assert np.abs(decode(physics, x, 1 - edges, Teaching()) - x[:, :, 1:]).max() > 1e-3


def test_couplings_follow_the_edge_order_and_the_types(x64):
    rng = np.random.default_rng(0)
    weights = rng.dirichlet([1.0, 1.0, 1.0], size=(2, N * (N - 1)))
    physics = simulation.Physics.of("springs", {"spring_constants": (0.0, 0.1, 0.5),
                                                "edge_probs": (0.4, 0.3, 0.3)}, (0, 1, 0, 1))
    senders, receivers = graphs.fully_connected_index(N)
    expected = np.zeros((N, N, 2))
    for b in range(2):
        for e, (i, j) in enumerate(zip(receivers, senders)):
            expected[i, j, b] = weights[b, e] @ np.array([0.0, 0.1, 0.5])
    np.testing.assert_allclose(simulation.couplings(physics, jnp.asarray(weights)), expected,
                               rtol=1e-12)
    charged = simulation.Physics.of("charged", {"strength": 2.0}, (0, 1, 0, 1))
    got = simulation.couplings(charged, jnp.asarray(weights[..., :2]))
    expected = 2.0 * (weights[..., 1] - weights[..., 0])  # [B, E]
    np.testing.assert_allclose(got[receivers, senders].T, expected, rtol=1e-12)
    np.testing.assert_array_equal(np.diagonal(got, axis1=0, axis2=1), 0)


def test_teaching_restarts_from_ground_truth_as_the_rule_says(x64):
    x, labels, physics = trajectories("springs", seed=1)
    edges = jax.nn.one_hot(1 - labels, 2, dtype=jnp.float64)  # wrong: predictions drift
    teaching = Teaching(burn_in=2, period=4)
    couplings = simulation.couplings(physics, edges)
    expected, previous = [], None
    for s, truth in enumerate(teaching.ground_truth(T - 1)):
        frame = x[:, :, s] if truth else previous
        previous = simulation.advance(physics, couplings, frame)
        expected.append(previous)
    np.testing.assert_allclose(decode(physics, x, edges, teaching), np.stack(expected, axis=2),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("system", ["springs", "charged"])
def test_gradients_reach_the_edge_weights(system, x64):
    x, labels, physics = trajectories(system, seed=2)
    decoder = simulation.SimulationDecoder(physics, n_edge_types=2)

    def loss(logits):
        edges = jax.nn.softmax(logits, axis=-1)
        predictions = decoder.apply({}, x, edges, train=False, teaching=Teaching(period=5))
        return jnp.sum((predictions - x[:, :, 1:]) ** 2)

    logits = jnp.asarray(np.random.default_rng(3).normal(size=labels.shape + (2,)))
    grad = jax.jit(jax.grad(loss))(logits)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    # Against central differences along a random direction.
    direction = jnp.asarray(np.random.default_rng(4).normal(size=logits.shape))
    h = 1e-6
    numeric = (loss(logits + h * direction) - loss(logits - h * direction)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(grad, direction), numeric, rtol=1e-5)


def test_finite_cotangent_passes_values_and_drops_only_non_finite_gradients():
    x = jnp.array([1.0, 2.0, 3.0])
    scale = jnp.array([jnp.inf, 2.0, jnp.nan])  # an overflowed path, a good one, a NaN

    def f(x):
        return jnp.sum(simulation.finite_cotangent(x) * 1.0)

    np.testing.assert_array_equal(jax.jit(simulation.finite_cotangent)(x), x)
    _, pullback = jax.vjp(simulation.finite_cotangent, x)
    np.testing.assert_array_equal(pullback(scale)[0], [0.0, 2.0, 0.0])
    np.testing.assert_array_equal(jax.grad(f)(x), [1.0, 1.0, 1.0])


def test_what_it_cannot_simulate_is_refused():
    x = jnp.zeros((2, N, T, 4))
    edges = jnp.zeros((2, N * (N - 1), 2))
    kuramoto = simulation.Physics.of("kuramoto", None, None)
    with pytest.raises(ValueError, match="simulates.*not 'kuramoto'"):
        simulation.SimulationDecoder(kuramoto).apply({}, x, edges, train=False)
    with pytest.raises(ValueError, match="needs the data's physics"):
        simulation.SimulationDecoder(None).apply({}, x, edges, train=False)
    springs3 = simulation.Physics.of("springs", {"spring_constants": (0.0, 0.1, 1.0),
                                                 "edge_probs": (0.4, 0.3, 0.3)}, (0, 1, 0, 1))
    with pytest.raises(ValueError, match="n_edge_types=3.*got 2"):
        simulation.SimulationDecoder(springs3, n_edge_types=2).apply({}, x, edges, train=False)


def test_nri_with_the_simulation_decoder_has_only_encoder_parameters(x64):
    """Through the whole model, in float64, the true graph continues the data exactly.
    (In float32, with atol 1e-5, it failed on an Intel Xeon by 1.5e-5 at 4 of 1320
    values: float32 rounding over the simulator's substeps, which float64 removes.)"""
    x, labels, physics = trajectories("charged")
    model = NRI(ModelConfig(decoder="simulation", encoder_hidden=8), physics=physics)
    key = jax.random.key(0)
    variables = model.init({"params": key, "gumbel": key}, jnp.asarray(x), train=False)
    assert set(variables["params"]) == {"encoder"}
    out = model.apply(variables, jnp.asarray(x), train=False,
                      edges=jax.nn.one_hot(labels, 2), teaching=ONE_STEP,
                      rngs={"gumbel": key})
    assert out.predictions.dtype == np.float64
    np.testing.assert_allclose(out.predictions, x[:, :, 1:], atol=1e-10)


@pytest.mark.e2e
def test_a_run_with_the_simulation_decoder_learns_the_springs_graph(tmp_path):
    # A small encoder, 1k trajectories, 4 epochs (about 0.8 when measured): the known
    # dynamics leave the encoder nothing to learn but the graph. Decoding through a graph
    # that does not depend on the sample would leave it at chance (0.5, +-0.02 on 640 edges).
    config = configs.override(configs.get_preset("tiny"), decoder="simulation",
                              n_train=1024, n_valid=64, n_test=64, batch_size=64,
                              encoder_hidden=64, epochs=4, learning_rate=3e-3,
                              data_dir=str(tmp_path / "data"))
    report = experiment.train_and_evaluate(config, tmp_path / "run", log=lambda _: None)
    assert report["edge_accuracy"] >= 0.7, report["edge_accuracy"]
