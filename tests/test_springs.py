"""Springs: against a float64 NumPy step-by-step reference, invariants, sampling, batching."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simulators import springs
from simulators.integrators import CHUNK_SIZE


def numpy_springs(x, v, stiffness, *, n_steps, sample_every, box_size=5.0, dt=1e-3,
                  max_force=100.0):
    """Independent float64 reference of the update rule; also counts bounces and clips."""
    x, v, stiffness = (np.array(a, dtype=np.float64) for a in (x, v, stiffness))
    frames_x, frames_v, bounces, clips = [], [], 0, 0
    for step in range(1, n_steps + 1):
        force = np.zeros_like(x)
        for i in range(len(x)):
            for j in range(len(x)):
                force[i] -= stiffness[i, j] * (x[i] - x[j])
        clips += int(np.sum(np.abs(force) > max_force))
        v = v + dt * np.clip(force, -max_force, max_force)
        x = x + dt * v
        over, under = x > box_size, x < -box_size
        bounces += int(over.sum() + under.sum())
        x[over], v[over] = 2 * box_size - x[over], -np.abs(v[over])
        x[under], v[under] = -2 * box_size - x[under], np.abs(v[under])
        if step % sample_every == 0:
            frames_x.append(x.copy())
            frames_v.append(v.copy())
    return np.array(frames_x), np.array(frames_v), bounces, clips


def constructed_case():
    """Object 0 flies into the right wall; objects 1-2 share a spring strong enough to clip."""
    x0 = np.array([[4.9, 0.0], [-3.0, -3.0], [3.0, 3.0], [0.0, 1.0]])
    v0 = np.array([[4.0, 0.5], [0.0, 0.0], [0.0, 0.0], [0.0, -0.5]])
    edges = np.zeros((4, 4), np.int32)
    edges[1, 2] = edges[2, 1] = 2   # k = 20 at distance ~8.5: force ~170 per component
    edges[0, 3] = edges[3, 0] = 1
    return x0, v0, edges


CONSTANTS = (0.0, 0.1, 20.0)


@pytest.mark.parametrize("case", ["constructed", "sampled"])
def test_matches_numpy_reference_in_float64(x64, case):
    if case == "constructed":
        x0, v0, edges = constructed_case()
    else:
        system = springs.sample(jax.random.key(3), n_objects=4, edge_probs=(0.4, 0.5, 0.1))
        x0, v0, edges = (np.asarray(a) for a in system)
    run = jax.jit(functools.partial(springs.simulate, n_steps=600, sample_every=50,
                                    spring_constants=CONSTANTS))
    x, v = run(jnp.asarray(x0), jnp.asarray(v0), jnp.asarray(edges))
    ref_x, ref_v, bounces, clips = numpy_springs(
        x0, v0, np.asarray(CONSTANTS)[edges], n_steps=600, sample_every=50)
    if case == "constructed":
        assert bounces > 0 and clips > 0  # the case exercises both walls and clipping
    assert x.dtype == jnp.float64 and x.shape == (12, len(x0), 2)
    np.testing.assert_allclose(x, ref_x, rtol=0, atol=1e-11)
    np.testing.assert_allclose(v, ref_v, rtol=0, atol=1e-11)


def test_float32_stays_close_to_float64_reference():
    x0, v0, edges = constructed_case()
    x, v = springs.simulate(x0.astype(np.float32), v0.astype(np.float32), edges, n_steps=1000,
                            sample_every=100, spring_constants=CONSTANTS)
    ref_x, ref_v, _, _ = numpy_springs(x0, v0, np.asarray(CONSTANTS)[edges], n_steps=1000,
                                       sample_every=100)
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(x, ref_x, atol=2e-4)
    np.testing.assert_allclose(v, ref_v, atol=2e-3)


def test_default_spring_constant_is_the_papers():
    x0, v0, _ = constructed_case()
    edges = np.ones((4, 4), np.int32) - np.eye(4, dtype=np.int32)
    x, _ = springs.simulate(x0, v0, edges, n_steps=200, sample_every=100)
    ref_x, _, _, _ = numpy_springs(x0, v0, 0.1 * edges, n_steps=200, sample_every=100)
    np.testing.assert_allclose(x, ref_x, atol=1e-5)


def test_energy_and_momentum_are_conserved_without_walls(x64):
    system = springs.sample(jax.random.key(7), n_objects=4)
    x, v = springs.simulate(system.position, system.velocity, system.edges, n_steps=20_000,
                            sample_every=100, box_size=1e6)
    k = 0.1 * np.asarray(system.edges)
    x, v = np.asarray(x), np.asarray(v)
    squared = np.sum((x[:, :, None] - x[:, None, :]) ** 2, axis=-1)   # [T, N, N]
    energy = 0.5 * np.sum(v ** 2, axis=(1, 2)) + 0.25 * np.sum(k * squared, axis=(1, 2))
    # Symplectic Euler: the energy oscillates by O(dt * omega) around a conserved value.
    assert np.max(np.abs(energy - energy[0])) <= 1e-3 * energy[0]
    momentum = v.sum(axis=1)
    np.testing.assert_allclose(momentum, np.broadcast_to(momentum[0], momentum.shape),
                               atol=1e-12)


def test_force_is_minus_gradient_of_potential(x64):
    system = springs.sample(jax.random.key(1), n_objects=6)
    stiffness = springs.stiffness(system.edges, (0.0, 0.3))
    force = jax.jit(springs.spring_forces)(system.position, stiffness)
    grad = jax.jit(jax.grad(springs.potential_energy))(system.position, stiffness)
    np.testing.assert_allclose(force, -grad, atol=1e-12)
    x = np.asarray(system.position)
    expected = -np.einsum("ij,ijd->id", np.asarray(stiffness), x[:, None] - x[None, :])
    np.testing.assert_allclose(force, expected, atol=1e-12)


# One small batch configuration shared by several tests, so that it compiles once.
BATCH = dict(n_objects=5, n_frames=4, sample_every=25)


run_batch = jax.jit(functools.partial(springs.trajectories, **BATCH))
# Many samples, for statistics; their first keys also seed the batch tests (one compile).
sample_many = jax.jit(jax.vmap(functools.partial(springs.sample, n_objects=BATCH["n_objects"])))
MANY = 2000
BATCH_SIZE = CHUNK_SIZE + 3  # the generator's last chunk is then padded
PICK = np.array([0, 1, CHUNK_SIZE, BATCH_SIZE - 1])  # compared with single runs


def batch_keys(seed=11, size=MANY):
    return jax.random.split(jax.random.key(seed), size)


def test_trajectories_match_vmapped_simulate():
    keys = batch_keys()
    out = jax.tree.map(lambda a: a[PICK], run_batch(keys[:BATCH_SIZE]))
    systems = jax.tree.map(lambda a: a[PICK], sample_many(keys))
    simulate = functools.partial(springs.simulate, n_steps=BATCH["n_frames"] * 25,
                                 sample_every=25)
    x, v = jax.jit(jax.vmap(simulate))(systems.position, systems.velocity, systems.edges)
    np.testing.assert_array_equal(out["edges"], systems.edges)
    np.testing.assert_allclose(out["loc"], x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["vel"], v, rtol=1e-6, atol=1e-6)


def test_same_key_same_trajectory_and_different_keys_differ():
    first, again = run_batch(batch_keys()[:BATCH_SIZE]), run_batch(batch_keys()[:BATCH_SIZE])
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.allclose(first["loc"][0], first["loc"][1])
    other = run_batch(batch_keys(seed=12)[:BATCH_SIZE])
    assert not np.allclose(first["loc"], other["loc"])


def test_sampling_statistics():
    n = BATCH["n_objects"]
    systems = sample_many(batch_keys())
    edges = np.asarray(systems.edges)
    np.testing.assert_array_equal(edges, np.swapaxes(edges, 1, 2))
    assert np.all(np.diagonal(edges, axis1=1, axis2=2) == 0)
    pairs = edges[:, np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]].ravel()
    assert abs(pairs.mean() - 0.5) < 5 * np.sqrt(0.25 / pairs.size)
    # Initial state: speed exactly 0.5, positions N(0, 0.5^2).
    np.testing.assert_allclose(np.linalg.norm(systems.velocity, axis=-1), 0.5, rtol=1e-5)
    positions = np.asarray(systems.position).ravel()
    assert abs(positions.std() - 0.5) < 5 * 0.5 / np.sqrt(2 * positions.size)
    assert abs(positions.mean()) < 5 * 0.5 / np.sqrt(positions.size)


def test_multi_type_edge_statistics():
    probs = (0.5, 0.3, 0.2)
    keys = jax.random.split(jax.random.key(4), 2000)
    edges = np.asarray(jax.vmap(lambda key: springs.sample_edges(key, 4, edge_probs=probs))(keys))
    pairs = edges[:, np.triu_indices(4, 1)[0], np.triu_indices(4, 1)[1]].ravel()
    for edge_type, p in enumerate(probs):
        frequency = np.mean(pairs == edge_type)
        assert abs(frequency - p) < 5 * np.sqrt(p * (1 - p) / pairs.size), (edge_type, frequency)
    assert set(np.unique(pairs)) == {0, 1, 2}


@pytest.mark.parametrize("n_objects", [5, 10])  # 3: under x64 below
def test_shapes_and_default_dtype(n_objects):
    keys = batch_keys()[:BATCH_SIZE]
    out = (run_batch(keys) if n_objects == BATCH["n_objects"] else
           springs.trajectories(keys, **{**BATCH, "n_objects": n_objects}))
    assert out["loc"].shape == out["vel"].shape == (BATCH_SIZE, BATCH["n_frames"], n_objects, 2)
    assert out["edges"].shape == (BATCH_SIZE, n_objects, n_objects)
    assert out["loc"].dtype == jnp.float32 and out["edges"].dtype == jnp.int32


def test_float64_under_x64_with_three_objects(x64):
    out = springs.trajectories(batch_keys()[:2], **{**BATCH, "n_objects": 3})
    assert out["loc"].shape == out["vel"].shape == (2, BATCH["n_frames"], 3, 2)
    assert out["loc"].dtype == out["vel"].dtype == jnp.float64


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_steps=10, sample_every=20), "sample_every=20"),
    (dict(n_steps=0, sample_every=1), "n_steps"),
    (dict(n_steps=10, sample_every=0), "sample_every"),
    (dict(n_steps=10, sample_every=5, box_size=-1.0), "box_size"),
    (dict(n_steps=10, sample_every=5, dt=0.0), "dt"),
    (dict(n_steps=10, sample_every=5, spring_constants=()), "spring_constants"),
])
def test_simulate_rejects_bad_settings(kwargs, name):
    x0, v0, edges = constructed_case()
    with pytest.raises(ValueError, match=name):
        springs.simulate(x0, v0, edges, **kwargs)


def test_simulate_rejects_bad_shapes():
    x0, v0, edges = constructed_case()
    with pytest.raises(ValueError, match=r"edges.*\(4, 4\).*\(3, 3\)"):
        springs.simulate(x0, v0, edges[:3, :3], n_steps=10, sample_every=5)
    with pytest.raises(ValueError, match="v0"):
        springs.simulate(x0, v0[:2], edges, n_steps=10, sample_every=5)
    with pytest.raises(ValueError, match="x0"):
        springs.simulate(x0[:, :1], v0, edges, n_steps=10, sample_every=5)


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_objects=1, n_frames=2), "n_objects"),
    (dict(n_objects=5, n_frames=0), "n_frames"),
    (dict(n_objects=5, n_frames=2, sample_every=-3), "sample_every"),
    (dict(n_objects=5, n_frames=2, edge_probs=(0.5, 0.6)), "edge_probs"),
    (dict(n_objects=5, n_frames=2, edge_probs=(0.5, 0.5, 0.0)), "edge_probs"),
])
def test_trajectories_rejects_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        springs.trajectories(jax.random.split(jax.random.key(0), 2), **kwargs)
    with pytest.raises(ValueError, match="keys"):
        springs.trajectories(jax.random.key(0), n_objects=3, n_frames=2)


def test_out_of_range_edge_type_gives_nan_not_a_silent_clamp():
    x0, v0, edges = constructed_case()
    edges[0, 3] = edges[3, 0] = 7
    x, _ = springs.simulate(x0, v0, edges, n_steps=10, sample_every=10)
    assert np.all(np.isnan(x[0, [0, 3]]))  # (and, through 0 * NaN, soon everything)
