"""Energy and per-edge confidence against float64 NumPy loops; the added plots draw what they say."""

import functools
import itertools

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

from nri_jax import analysis
from simulators import springs

matplotlib.use("Agg")

from nri_jax import plotting  # noqa: E402  (after choosing the headless backend)


def _energy_reference(position, velocity, edges, constants):
    """Kinetic and spring energy per frame by explicit loops over objects and pairs."""
    n_frames, n_objects, _ = position.shape
    kinetic, potential = np.zeros(n_frames), np.zeros(n_frames)
    for t in range(n_frames):
        for i in range(n_objects):
            kinetic[t] += 0.5 * float(velocity[t, i] @ velocity[t, i])
            for j in range(i + 1, n_objects):
                d = position[t, i] - position[t, j]
                potential[t] += 0.5 * constants[edges[i, j]] * float(d @ d)
    return kinetic, potential


def test_springs_energy_against_loops(x64):
    rng = np.random.default_rng(0)
    n_frames, n_objects, constants = 6, 4, (0.0, 0.1, 0.7)
    position = rng.normal(size=(n_frames, n_objects, 2))
    velocity = rng.normal(size=(n_frames, n_objects, 2))
    upper = np.triu(rng.integers(0, 3, size=(n_objects, n_objects)), k=1)
    edges = upper + upper.T
    energy = jax.jit(functools.partial(analysis.springs_energy, spring_constants=constants))(
        position, velocity, edges)
    kinetic, potential = _energy_reference(position, velocity, edges, constants)
    np.testing.assert_allclose(energy.kinetic, kinetic, rtol=1e-12)
    np.testing.assert_allclose(energy.potential, potential, rtol=1e-12)
    np.testing.assert_allclose(energy.total, kinetic + potential, rtol=1e-12)


def test_springs_energy_is_conserved_away_from_walls(x64):
    # A box far larger than the motion: semi-implicit Euler keeps the energy within O(dt).
    system = springs.sample(jax.random.key(3), n_objects=5)
    edges = jnp.ones((5, 5), jnp.int32) - jnp.eye(5, dtype=jnp.int32)  # every pair coupled
    x, v = springs.simulate(system.position.astype(jnp.float64),
                            system.velocity.astype(jnp.float64), edges, n_steps=5000,
                            sample_every=50, box_size=1e3)
    total = np.asarray(analysis.springs_energy(x, v, edges).total)
    assert np.ptp(total) < 2e-3 * total.mean()  # dt = 1e-3
    assert np.ptp(analysis.springs_energy(x, v, edges).kinetic) > 0.1 * total.mean()


def test_springs_energy_rejects_bad_shapes():
    x = np.zeros((3, 4, 2))
    with pytest.raises(ValueError, match="position"):
        analysis.springs_energy(np.zeros((3, 4)), x, np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="velocity"):
        analysis.springs_energy(x, np.zeros((3, 5, 2)), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="edges"):
        analysis.springs_energy(x, x, np.zeros((5, 5), int))


def _random_probs(rng, b, e, k):
    logits = 3 * rng.normal(size=(b, e, k))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return probs.astype(np.float32), rng.integers(0, k, size=(b, e))


@pytest.mark.parametrize("k,permutation", [(2, None), (2, (1, 0)), (3, (2, 0, 1))])
def test_accuracy_by_confidence_against_loop(k, permutation):
    rng = np.random.default_rng(k)
    probs, labels = _random_probs(rng, 6, 12, k)
    n_bins = 4
    # float32 sums of <= 72 confidences: within (72 + 1) 2^-24 < 1e-5 of the float64 mean.
    out = jax.jit(functools.partial(analysis.accuracy_by_confidence, n_bins=n_bins,
                                    permutation=permutation))(probs, labels)
    relabel = np.arange(k) if permutation is None else np.asarray(permutation)
    bounds = np.linspace(1 / k, 1, n_bins + 1)
    members = [[] for _ in range(n_bins)]
    for b, e in itertools.product(range(6), range(12)):
        c = float(probs[b, e].max())
        index = min(max(int(np.searchsorted(bounds, c, side="right")) - 1, 0), n_bins - 1)
        members[index].append((c, relabel[probs[b, e].argmax()] == labels[b, e]))
    np.testing.assert_allclose(out.bin_edges, bounds, rtol=1e-6)
    np.testing.assert_array_equal(out.count, [len(m) for m in members])
    for i, m in enumerate(members):
        if m:
            np.testing.assert_allclose(out.confidence[i], np.mean([c for c, _ in m]), rtol=1e-5)
            np.testing.assert_allclose(out.accuracy[i], np.mean([ok for _, ok in m]), rtol=1e-6)
        else:
            assert np.isnan(out.confidence[i]) and np.isnan(out.accuracy[i])


def test_accuracy_by_confidence_edge_cases():
    # Confidence exactly 1/K and exactly 1 land in the first and last bin; empty bins are NaN.
    probs = np.array([[[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]]], np.float32)
    labels = np.array([[0, 0, 0]])
    out = analysis.accuracy_by_confidence(probs, labels, n_bins=3)
    np.testing.assert_array_equal(out.count, [1, 0, 2])
    np.testing.assert_allclose(np.asarray(out.accuracy)[[0, 2]], [1.0, 0.5])
    assert np.isnan(out.accuracy[1])
    with pytest.raises(ValueError, match="labels"):
        analysis.accuracy_by_confidence(probs, labels[:, :2])
    with pytest.raises(ValueError, match="permutation"):
        analysis.accuracy_by_confidence(probs, labels, permutation=(0, 0))


@pytest.mark.parametrize("permutation", [(1, 0), (2, 0, 1), (1, 2, 0)])
def test_probabilities_as_labels_follow_the_permutation(permutation):
    k = len(permutation)
    probs, _ = _random_probs(np.random.default_rng(k), 3, 6, k)
    relabelled = jax.jit(functools.partial(analysis.probabilities_as_labels,
                                           permutation=permutation))(probs)
    expected = np.zeros_like(probs)
    for p in range(k):  # predicted type p is label permutation[p]
        expected[..., permutation[p]] = probs[..., p]
    np.testing.assert_array_equal(relabelled, expected)
    np.testing.assert_array_equal(
        np.argmax(relabelled, -1), analysis.predicted_labels(probs, permutation=permutation))
    np.testing.assert_array_equal(analysis.probabilities_as_labels(probs), probs)


def test_least_confident_edges_against_sort():
    rng = np.random.default_rng(7)
    n_objects, k = 4, 3
    probs, labels = _random_probs(rng, 5, n_objects * (n_objects - 1), k)
    out = jax.jit(functools.partial(analysis.least_confident_edges, n_edges=6,
                                    permutation=(1, 2, 0)))(probs, labels)
    confidence = probs.max(-1)
    order = np.argsort(confidence.ravel(), kind="stable")[:6]
    example, edge = np.unravel_index(order, confidence.shape)
    np.testing.assert_array_equal(out.example, example)
    np.testing.assert_array_equal(out.edge, edge)
    np.testing.assert_allclose(out.confidence, confidence[example, edge])
    np.testing.assert_array_equal(out.label, labels[example, edge])
    np.testing.assert_array_equal(out.predicted,
                                  np.array([1, 2, 0])[probs[example, edge].argmax(-1)])
    # Receiver = row, sender = column of the off-diagonal entries in row-major order.
    rows, cols = np.nonzero(~np.eye(n_objects, dtype=bool))
    np.testing.assert_array_equal(out.receiver, rows[edge])
    np.testing.assert_array_equal(out.sender, cols[edge])
    with pytest.raises(ValueError, match="n_edges"):
        analysis.least_confident_edges(probs, labels, n_edges=probs.shape[0] * 12 + 1)


def test_graph_on_positions_draws_one_arrow_per_present_edge():
    n_objects = 4
    values = np.zeros(n_objects * (n_objects - 1))
    values[[0, 5, 7]] = [1.0, 0.6, 0.02]  # the last is below the drawing threshold
    positions = np.random.default_rng(0).normal(size=(n_objects, 2))
    fig = plotting.graph_on_positions(positions, values, title="test")
    ax = fig.axes[0]
    arrows = [p for p in ax.patches if isinstance(p, matplotlib.patches.FancyArrowPatch)]
    rows, cols = np.nonzero(~np.eye(n_objects, dtype=bool))
    # Edge e goes from sender cols[e] to receiver rows[e]; gids name "sender->receiver".
    assert sorted(a.get_gid() for a in arrows) == sorted(f"{cols[e]}->{rows[e]}" for e in (0, 5))
    alphas = {a.get_gid(): a.get_alpha() for a in arrows}
    assert alphas[f"{cols[5]}->{rows[5]}"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="edge_values"):
        plotting.graph_on_positions(positions, values[:-1])
    plotting.plt.close(fig)


def test_added_figures_build():
    rng = np.random.default_rng(1)
    probs, labels = _random_probs(rng, 2, 20, 2)
    calibration = analysis.accuracy_by_confidence(probs, labels, n_bins=4)
    figures = [
        plotting.energy_over_time(np.arange(5.0), rng.random(5), rng.random(5)),
        plotting.phases(np.arange(7.0), rng.normal(size=(7, 3))),
        plotting.edge_type_probabilities(probs[0], labels[0]),
        plotting.accuracy_by_confidence(calibration),
    ]
    for fig in figures:
        assert all(ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>")
        plotting.plt.close(fig)
