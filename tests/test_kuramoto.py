"""Kuramoto: against SciPy's DOP853, the reference's features in NumPy, sampling, batching."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from simulators import kuramoto
from simulators.integrators import CHUNK_SIZE


def numpy_features(phase, rate, omega, coupling, omega_range=(1.0, 10.0)):
    """The reference's four features from ``[T, N]`` phase and rate, written independently."""
    def scale(values):  # per object, over all frames
        low, high = values.min(axis=0), values.max(axis=0)
        return 2 * (values - low) / (high - low) - 1

    with np.errstate(invalid="ignore"):  # an uncoupled object's rate is constant: 0 / 0
        rate_feature = scale(rate)
    rate_feature[:, coupling.sum(axis=1) == 0] = 0  # no incoming coupling
    low, high = omega_range
    omega_feature = np.broadcast_to(2 * (omega - low) / (high - low) - 1, phase.shape)
    features = np.stack([rate_feature, np.sin(phase), scale(phase), omega_feature], axis=-1)
    return features.transpose(1, 0, 2)  # [N, T, 4]


def dop853_grid(phase0, omega, coupling):
    """Tight-tolerance phases on the grid t = 0, 0.01, ..., 9.99: ``[1000, N]`` float64."""
    phase0, omega, coupling = (np.asarray(a, np.float64) for a in (phase0, omega, coupling))

    def rhs(t, phi):  # the ODE as written, receiver = row
        return omega + np.sum(coupling * np.sin(phi[None, :] - phi[:, None]), axis=1)

    return solve_ivp(rhs, (0.0, 10.0), phase0, method="DOP853", rtol=1e-10, atol=1e-10,
                     t_eval=np.arange(1000) * 0.01).y.T


def test_matches_scipy_dop853_over_the_full_span(x64):
    system = kuramoto.sample(jax.random.key(0), n_objects=5)
    exact = dop853_grid(*system)
    frames = jax.jit(functools.partial(kuramoto.simulate, n_steps=1000, sample_every=10))(
        system.phase, system.omega, system.coupling)
    assert frames.phase.shape == frames.rate.shape == (100, 5)
    assert frames.phase.dtype == jnp.float64
    np.testing.assert_allclose(frames.phase, exact[::10], rtol=0, atol=1e-5)
    forward_difference = (exact[1::10] - exact[:-1:10]) / 0.01
    np.testing.assert_allclose(frames.rate, forward_difference, rtol=0, atol=1e-5)
    assert np.ptp(frames.phase[:, 0]) > 2 * np.pi  # unwrapped: it grows past 2 pi


def test_float32_phase_stays_accurate_over_the_span():
    # The phase reaches ~100 rad: plain float32 summation drifted by 5e-4 rad here.
    system = kuramoto.sample(jax.random.key(2), n_objects=5)
    exact = dop853_grid(*system)
    frames = kuramoto.simulate(*system, n_steps=1000, sample_every=10)
    assert frames.phase.dtype == jnp.float32
    np.testing.assert_allclose(frames.phase, exact[::10], rtol=0, atol=5e-5)
    forward_difference = (exact[1::10] - exact[:-1:10]) / 0.01
    np.testing.assert_allclose(frames.rate, forward_difference, rtol=0, atol=5e-5)


def test_phase_velocity_matches_the_pairwise_sum(x64):
    key_phase, key_coupling = jax.random.split(jax.random.key(3))
    phase = jax.random.uniform(key_phase, (6,), maxval=50.0)
    coupling = jax.random.bernoulli(key_coupling, 0.5, (6, 6)).astype(jnp.float64)
    omega = jnp.linspace(1.0, 9.0, 6)
    p, k = np.asarray(phase), np.asarray(coupling)
    expected = np.asarray(omega) + np.sum(k * np.sin(p[None, :] - p[:, None]), axis=1)
    np.testing.assert_allclose(jax.jit(kuramoto.phase_velocity)(phase, omega, coupling),
                               expected, atol=1e-12)


def test_features_match_numpy(x64):
    system = kuramoto.sample(jax.random.key(1), n_objects=4)
    coupling = np.asarray(system.coupling).copy()
    coupling[2] = 0  # object 2 has no incoming coupling
    coupling[0, 1] = 1
    frames = kuramoto.simulate(system.phase, system.omega, coupling, n_steps=1000,
                               sample_every=10)
    features = jax.jit(kuramoto.features)(frames, system.omega, jnp.asarray(coupling))
    expected = numpy_features(np.asarray(frames.phase), np.asarray(frames.rate),
                              np.asarray(system.omega), coupling)
    assert features.shape == (4, 100, 4)
    np.testing.assert_allclose(features, expected, atol=1e-12)
    assert np.all(features[2, :, 0] == 0)


BATCH = dict(n_objects=5, n_frames=49)
run_batch = jax.jit(functools.partial(kuramoto.trajectories, **BATCH))
# Many samples, for statistics; their first keys also seed the batch tests (one compile).
sample_many = jax.jit(jax.vmap(functools.partial(kuramoto.sample, n_objects=BATCH["n_objects"])))
MANY = 2000
BATCH_SIZE = CHUNK_SIZE + 3  # the generator's last chunk is then padded
PICK = np.array([0, 1, CHUNK_SIZE, BATCH_SIZE - 1])  # compared with single runs


def batch_keys(seed=11):
    return jax.random.split(jax.random.key(seed), MANY)


def test_trajectories_match_simulate_and_numpy_features():
    keys = batch_keys()
    out = jax.tree.map(lambda a: a[PICK], run_batch(keys[:BATCH_SIZE]))
    systems = jax.tree.map(lambda a: a[PICK], sample_many(keys))
    np.testing.assert_array_equal(out["edges"], systems.coupling)
    assert out["feat"].shape == (4, 5, 49, 4) and out["feat"].dtype == jnp.float32
    simulate = jax.jit(functools.partial(kuramoto.simulate, n_steps=1000, sample_every=10))
    for s in range(4):
        frames = simulate(systems.phase[s], systems.omega[s], systems.coupling[s])
        # Scaled over the whole 100-frame span, then cut to the first 49 frames.
        expected = numpy_features(np.asarray(frames.phase, np.float64),
                                  np.asarray(frames.rate, np.float64),
                                  np.asarray(systems.omega[s], np.float64),
                                  np.asarray(systems.coupling[s]))[:, :49]
        np.testing.assert_allclose(out["feat"][s], expected, atol=2e-5)


def test_feature_ranges():
    feat = np.asarray(run_batch(batch_keys()[:BATCH_SIZE])["feat"])
    assert np.all(np.abs(feat) <= 1 + 1e-6)
    np.testing.assert_array_equal(feat[..., 3], feat[..., :1, 3].repeat(49, axis=-1))


def test_same_key_same_trajectory_and_different_keys_differ():
    first, again = run_batch(batch_keys()[:BATCH_SIZE]), run_batch(batch_keys()[:BATCH_SIZE])
    np.testing.assert_array_equal(first["feat"], again["feat"])
    assert not np.allclose(first["feat"][0], first["feat"][1])
    assert not np.allclose(first["feat"], run_batch(batch_keys(seed=12)[:BATCH_SIZE])["feat"])


def test_sampling_statistics():
    systems = sample_many(batch_keys())
    coupling = np.asarray(systems.coupling)
    assert np.all(np.diagonal(coupling, axis1=1, axis2=2) == 0)
    assert np.any(coupling != np.swapaxes(coupling, 1, 2))  # directed
    off = coupling[:, ~np.eye(5, dtype=bool)]
    assert set(np.unique(off)) == {0, 1}
    assert abs(off.mean() - 0.5) < 5 * np.sqrt(0.25 / off.size)
    # K_ij and K_ji are drawn independently: P(both) = 1/4.
    both = coupling[:, 0, 1] * coupling[:, 1, 0]
    assert abs(both.mean() - 0.25) < 5 * np.sqrt(0.25 * 0.75 / both.size)
    omega, phase = np.asarray(systems.omega), np.asarray(systems.phase)
    assert omega.min() >= 1 and omega.max() < 10 and abs(omega.mean() - 5.5) < 0.1
    assert phase.min() >= 0 and phase.max() < 2 * np.pi


@pytest.mark.parametrize("n_objects", [5, 10])  # 3: under x64 below
def test_shapes_and_default_dtype(n_objects):
    keys = batch_keys()[:BATCH_SIZE]
    out = (run_batch(keys) if n_objects == BATCH["n_objects"] else
           kuramoto.trajectories(keys, **{**BATCH, "n_objects": n_objects}))
    assert out["feat"].shape == (BATCH_SIZE, n_objects, BATCH["n_frames"], 4)
    assert out["edges"].shape == (BATCH_SIZE, n_objects, n_objects)
    assert out["feat"].dtype == jnp.float32 and out["edges"].dtype == jnp.int32


def test_float64_under_x64_with_three_objects(x64):
    out = kuramoto.trajectories(batch_keys()[:2], **{**BATCH, "n_objects": 3})
    assert out["feat"].shape == (2, 3, BATCH["n_frames"], 4)
    assert out["feat"].dtype == jnp.float64


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_objects=5, n_frames=101), "n_frames=101"),
    (dict(n_objects=1, n_frames=10), "n_objects"),
    (dict(n_objects=5, n_frames=10, omega_range=(10.0, 1.0)), "omega_range"),
    (dict(n_objects=5, n_frames=10, coupling_prob=-0.1), "coupling_prob"),
    (dict(n_objects=5, n_frames=10, dt=0.0), "dt"),
])
def test_trajectories_rejects_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        kuramoto.trajectories(jax.random.split(jax.random.key(0), 2), **kwargs)


def test_simulate_rejects_bad_input():
    phase, omega, coupling = np.zeros(3), np.ones(3), np.zeros((3, 3))
    with pytest.raises(ValueError, match="sample_every=20"):
        kuramoto.simulate(phase, omega, coupling, n_steps=10, sample_every=20)
    with pytest.raises(ValueError, match="coupling"):
        kuramoto.simulate(phase, omega, coupling[:2], n_steps=10, sample_every=2)
    with pytest.raises(ValueError, match="omega"):
        kuramoto.simulate(phase, omega[:2], coupling, n_steps=10, sample_every=2)
