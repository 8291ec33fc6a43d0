"""Charged particles: float64 NumPy reference, Coulomb's signs, guards, sampling, batching."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simulators import charged
from simulators.integrators import CHUNK_SIZE


def numpy_charged(x, v, interaction, *, n_steps, sample_every, strength=1.0, box_size=5.0,
                  dt=1e-3, max_force=100.0):
    """Independent float64 reference of the update rule; also counts bounces and clips."""
    x, v, interaction = (np.array(a, dtype=np.float64) for a in (x, v, interaction))
    frames_x, frames_v, bounces, clips = [], [], 0, 0
    for step in range(1, n_steps + 1):
        force = np.zeros_like(x)
        for i in range(len(x)):
            for j in range(len(x)):
                if i != j:
                    d = x[i] - x[j]
                    force[i] += strength * interaction[i, j] * d / np.linalg.norm(d) ** 3
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
    """An opposite pair 0.05 apart (force ~400: clipped) and a fast object hitting the left wall."""
    x0 = np.array([[0.0, 0.0], [0.05, 0.0], [-4.9, 2.0], [2.0, -3.0]])
    v0 = np.array([[0.0, 0.1], [0.0, -0.1], [-3.0, 0.0], [0.3, 0.4]])
    q = np.array([1, -1, 1, 1])
    return x0, v0, np.outer(q, q)


@pytest.mark.parametrize("case", ["constructed", "sampled"])
def test_matches_numpy_reference_in_float64(x64, case):
    if case == "constructed":
        x0, v0, edges = constructed_case()
    else:
        x0, v0, edges = (np.asarray(a) for a in charged.sample(jax.random.key(3), n_objects=4))
    run = jax.jit(functools.partial(charged.simulate, n_steps=400, sample_every=40))
    x, v = run(jnp.asarray(x0), jnp.asarray(v0), jnp.asarray(edges))
    ref_x, ref_v, bounces, clips = numpy_charged(x0, v0, edges, n_steps=400, sample_every=40)
    if case == "constructed":
        assert bounces > 0 and clips > 0  # the case exercises both walls and clipping
    assert x.dtype == jnp.float64 and x.shape == (10, 4, 2)
    np.testing.assert_allclose(x, ref_x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(v, ref_v, rtol=0, atol=1e-9)


def test_float32_stays_close_to_float64_reference():
    # A typical trajectory: close encounters (as in `constructed_case`) amplify round-off.
    x0, v0, edges = (np.asarray(a) for a in charged.sample(jax.random.key(4), n_objects=4))
    x, v = charged.simulate(x0, v0, edges, n_steps=1000, sample_every=100)
    ref_x, ref_v, _, _ = numpy_charged(x0, v0, edges, n_steps=1000, sample_every=100)
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(x, ref_x, atol=1e-4)
    np.testing.assert_allclose(v, ref_v, atol=1e-3)


@pytest.mark.parametrize("sign", [1, -1])
def test_like_charges_repel_and_opposite_attract(sign):
    x0 = np.array([[-0.5, 0.0], [0.5, 0.0]])
    edges = np.array([[1, sign], [sign, 1]])
    x, _ = charged.simulate(x0, np.zeros_like(x0), edges, n_steps=300, sample_every=100)
    distance = np.linalg.norm(x[:, 0] - x[:, 1], axis=-1)
    steps = np.diff(np.concatenate([[1.0], distance]))
    assert np.all(np.sign(steps) == sign), distance
    # Newton's third law: the pair's centre stays put.
    np.testing.assert_allclose(x.sum(axis=1), 0, atol=1e-6)


def test_walls_keep_every_coordinate_inside():
    out = charged.trajectories(jax.random.split(jax.random.key(0), 16), n_objects=5,
                               n_frames=30, init_position_std=3.0, init_speed=3.0)
    assert np.max(np.abs(out["loc"])) <= 5.0
    assert np.max(np.abs(out["loc"])) > 4.5  # trajectories did reach the walls


def test_coincident_particles_give_finite_forces_and_gradients(x64):
    position = jnp.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    couplings = jnp.array([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    force = jax.jit(charged.coulomb_forces)(position, couplings)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(charged.coulomb_forces(p, couplings) ** 2)))(
        position)
    assert np.all(np.isfinite(force)) and np.all(np.isfinite(grad))
    x, v = charged.simulate(position, jnp.zeros_like(position), couplings, n_steps=20,
                            sample_every=10)
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(v))


def test_force_is_minus_gradient_of_potential(x64):
    system = charged.sample(jax.random.key(1), n_objects=6)
    couplings = 2.0 * system.edges.astype(jnp.float64)
    force = jax.jit(charged.coulomb_forces)(system.position, couplings)
    grad = jax.jit(jax.grad(charged.potential_energy))(system.position, couplings)
    np.testing.assert_allclose(force, -grad, rtol=1e-10, atol=1e-12)


BATCH = dict(n_objects=5, n_frames=4, sample_every=25)
run_batch = jax.jit(functools.partial(charged.trajectories, **BATCH))
# Many samples, for statistics; their first keys also seed the batch tests (one compile).
sample_many = jax.jit(jax.vmap(functools.partial(charged.sample, n_objects=BATCH["n_objects"])))
MANY = 2000
BATCH_SIZE = CHUNK_SIZE + 3  # the generator's last chunk is then padded
PICK = np.array([0, 1, CHUNK_SIZE, BATCH_SIZE - 1])  # compared with single runs


def batch_keys(seed=11):
    return jax.random.split(jax.random.key(seed), MANY)


def test_trajectories_match_vmapped_simulate():
    keys = batch_keys()
    out = jax.tree.map(lambda a: a[PICK], run_batch(keys[:BATCH_SIZE]))
    systems = jax.tree.map(lambda a: a[PICK], sample_many(keys))
    simulate = functools.partial(charged.simulate, n_steps=100, sample_every=25)
    x, v = jax.jit(jax.vmap(simulate))(systems.position, systems.velocity, systems.edges)
    np.testing.assert_array_equal(out["edges"], systems.edges)
    np.testing.assert_allclose(out["loc"], x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["vel"], v, rtol=1e-5, atol=1e-5)


def test_same_key_same_trajectory_and_different_keys_differ():
    first, again = run_batch(batch_keys()[:BATCH_SIZE]), run_batch(batch_keys()[:BATCH_SIZE])
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.allclose(first["loc"][0], first["loc"][1])
    assert not np.allclose(first["loc"], run_batch(batch_keys(seed=12)[:BATCH_SIZE])["loc"])


def test_sampling_statistics():
    systems = sample_many(batch_keys())
    edges = np.asarray(systems.edges)
    np.testing.assert_array_equal(edges, np.swapaxes(edges, 1, 2))
    assert set(np.unique(edges)) == {-1, 1}
    assert np.all(np.diagonal(edges, axis1=1, axis2=2) == 1)  # q_i^2, ignored by the force
    like = edges[:, 0, 1] == 1  # one pair per sample: independent draws, P = 1/4 + 1/4
    assert abs(np.mean(like) - 0.5) < 5 * np.sqrt(0.25 / like.size)
    np.testing.assert_allclose(np.linalg.norm(systems.velocity, axis=-1), 0.5, rtol=1e-5)
    positions = np.asarray(systems.position).ravel()
    assert abs(positions.std() - 1.0) < 5 / np.sqrt(2 * positions.size)


def test_charge_probability():
    keys = batch_keys()
    charges = np.asarray(jax.jit(jax.vmap(
        lambda key: charged.sample_charges(key, 5, charge_prob=0.8)))(keys))
    assert set(np.unique(charges)) == {-1, 1}
    assert abs(np.mean(charges == 1) - 0.8) < 5 * np.sqrt(0.8 * 0.2 / charges.size)


@pytest.mark.parametrize("n_objects", [5, 10])  # 3: under x64 below
def test_shapes_and_default_dtype(n_objects):
    keys = batch_keys()[:BATCH_SIZE]
    out = (run_batch(keys) if n_objects == BATCH["n_objects"] else
           charged.trajectories(keys, **{**BATCH, "n_objects": n_objects}))
    assert out["loc"].shape == out["vel"].shape == (BATCH_SIZE, BATCH["n_frames"], n_objects, 2)
    assert out["edges"].shape == (BATCH_SIZE, n_objects, n_objects)
    assert out["loc"].dtype == jnp.float32 and out["edges"].dtype == jnp.int32


def test_float64_under_x64_with_three_objects(x64):
    out = charged.trajectories(batch_keys()[:2], **{**BATCH, "n_objects": 3})
    assert out["loc"].shape == out["vel"].shape == (2, BATCH["n_frames"], 3, 2)
    assert out["loc"].dtype == out["vel"].dtype == jnp.float64


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_steps=10, sample_every=11), "sample_every=11"),
    (dict(n_steps=-1, sample_every=1), "n_steps"),
    (dict(n_steps=10, sample_every=5, max_force=0.0), "max_force"),
    (dict(n_steps=10, sample_every=5, strength=float("nan")), "strength"),
])
def test_simulate_rejects_bad_settings(kwargs, name):
    x0, v0, edges = constructed_case()
    with pytest.raises(ValueError, match=name):
        charged.simulate(x0, v0, edges, **kwargs)
    with pytest.raises(ValueError, match="edges"):
        charged.simulate(x0, v0, edges[None], n_steps=10, sample_every=5)


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_objects=0, n_frames=2), "n_objects"),
    (dict(n_objects=3, n_frames=-2), "n_frames"),
    (dict(n_objects=3, n_frames=2, charge_prob=1.5), "charge_prob"),
    (dict(n_objects=3, n_frames=2, init_position_std=0.0), "init_position_std"),
])
def test_trajectories_rejects_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        charged.trajectories(jax.random.split(jax.random.key(0), 2), **kwargs)
