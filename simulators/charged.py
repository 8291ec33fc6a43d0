"""Charged particles (Coulomb forces, like charges repel) in a 2-D reflecting box.

Force on i: ``F_i = sum_{j != i} k A_ij (x_i - x_j) / |x_i - x_j|^3`` with ``A = q q^T`` and
charges ``q_i`` in {-1, +1}. Integration, walls, clipping and recording are shared with the
springs system (`simulators.box`).

Shapes: N objects, T frames, S trajectories, ``*B`` trailing batch axes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from simulators import box, checks
from simulators.box import ParticleSystem
from simulators.integrators import off_diagonal, pairwise_differences, unrolled_sum

Array = jax.Array

# Squared distances are floored here before 1/r^3: coincident particles and round-off give a
# finite (then clipped) force instead of inf/NaN, and so do its gradients. The floor only
# changes forces below r = 1e-6, far inside the clipping radius sqrt(k / max_force) ~ 0.1.
MIN_SQUARED_DISTANCE = 1e-12


def sample_charges(key: Array, n_objects: int, *, charge_prob: float = 0.5) -> Array:
    """Charges ``q_i = +1`` with probability `charge_prob`, else -1; ``[N]`` int32."""
    positive = jax.random.bernoulli(key, charge_prob, (n_objects,))
    return jnp.where(positive, 1, -1).astype(jnp.int32)


def sample(key: Array, *, n_objects: int, charge_prob: float = 0.5,
           init_position_std: float = 1.0, init_speed: float = 0.5) -> ParticleSystem:
    """Samples an initial condition and charges with the paper's distributions.

    Args:
      key: PRNG key.
      n_objects: N >= 2.
      charge_prob: probability of a charge +1 (else -1).
      init_position_std: standard deviation of the initial coordinates.
      init_speed: the initial speed of every object (directions uniform).

    Returns:
      `ParticleSystem`; ``edges = q q^T`` ``[N, N]`` int32 in {-1, +1} (diagonal ``q_i^2 = 1``,
      which the force ignores).
    """
    checks.at_least_two_objects(n_objects)
    checks.probability("charge_prob", charge_prob)
    checks.positive_float("init_position_std", init_position_std)
    checks.non_negative_float("init_speed", init_speed)
    state_key, charge_key = jax.random.split(key)
    position, velocity = box.sample_state(state_key, n_objects, position_std=init_position_std,
                                          speed=init_speed)
    charges = sample_charges(charge_key, n_objects, charge_prob=charge_prob)
    return ParticleSystem(position, velocity, jnp.outer(charges, charges))


def _inverse_distances(differences: Array) -> Array:
    """``1 / |x_i - x_j|`` off the diagonal, 0 on it: ``[N, N, 2, *B] -> [N, N, *B]``."""
    n_objects, batch_ndim = differences.shape[0], differences.ndim - 3
    off = off_diagonal(n_objects, batch_ndim)
    squared = unrolled_sum(differences * differences, axis=2)
    # Two wheres keep the diagonal's 1/0 out of both the value and the gradient.
    safe = jnp.where(off, jnp.maximum(squared, MIN_SQUARED_DISTANCE), 1)
    return jnp.where(off, lax.rsqrt(safe), 0)


def coulomb_forces(position: Array, couplings: Array) -> Array:
    """Coulomb forces ``F_i = sum_{j != i} c_ij (x_i - x_j) / |x_i - x_j|^3`` (unclipped).

    Args:
      position: ``[N, 2, *B]``.
      couplings: ``[N, N, *B]`` ``c = k q q^T`` (positive: repulsion).

    Returns:
      ``[N, 2, *B]``, finite for coincident particles.
    """
    differences = pairwise_differences(position)
    inverse = _inverse_distances(differences)
    weights = couplings * (inverse * inverse * inverse)
    return unrolled_sum(weights[:, :, None] * differences, axis=1)


def potential_energy(position: Array, couplings: Array) -> Array:
    """``sum_{i<j} c_ij / |x_i - x_j|``; ``-grad`` of it is `coulomb_forces` (for r > 1e-6).

    Args:
      position: ``[N, 2, *B]``.
      couplings: ``[N, N, *B]`` symmetric.

    Returns:
      ``[*B]``.
    """
    inverse = _inverse_distances(pairwise_differences(position))
    # Every pair appears twice in the full double sum.
    return 0.5 * unrolled_sum(unrolled_sum(couplings * inverse, axis=1), axis=0)


def simulate(x0: Array, v0: Array, edges: Array, *, n_steps: int, sample_every: int,
             box_size: float = 5.0, strength: float = 1.0, dt: float = 1e-3,
             max_force: float = 100.0) -> tuple[Array, Array]:
    """Simulates one trajectory (the readable reference for `trajectories`).

    Args:
      x0: ``[N, 2]`` initial positions (not recorded).
      v0: ``[N, 2]`` initial velocities.
      edges: ``[N, N]`` interaction matrix ``q q^T`` (any real matrix works; diagonal ignored).
      n_steps: integration steps; ``n_steps // sample_every`` frames are recorded (steps after
        the last frame would change nothing recorded and are skipped).
      sample_every: steps between frames.
      box_size: walls at ``+-box_size``.
      strength: k, the Coulomb constant.
      dt: time step.
      max_force: bound on every force component.

    Returns:
      ``(x, v)``, each ``[T, N, 2]``: the states after steps ``sample_every, 2 sample_every, ...``
      in the inputs' float dtype (JAX's default float for integer inputs).

    Raises:
      ValueError: a shape or setting is invalid (the message names it).
    """
    x0, v0, edges = jnp.asarray(x0), jnp.asarray(v0), jnp.asarray(edges)
    box.check_initial(x0, v0, edges)
    n_frames = checks.steps_and_sampling(n_steps, sample_every)
    box.check_physics(box_size=box_size, dt=dt, max_force=max_force)
    checks.finite_floats("strength", (strength,))
    dtype = box.float_dtype(x0, v0)
    return _simulate(x0.astype(dtype), v0.astype(dtype), edges, n_frames=n_frames,
                     sample_every=sample_every, box_size=box_size, strength=strength, dt=dt,
                     max_force=max_force)


@functools.partial(jax.jit, static_argnames=("n_frames", "sample_every", "box_size",
                                             "strength", "dt", "max_force"))
def _simulate(x0, v0, edges, *, strength, **settings):
    couplings = strength * edges.astype(x0.dtype)
    return box.run(coulomb_forces, x0, v0, couplings, **settings)


def trajectories(keys: Array, *, n_objects: int, n_frames: int, sample_every: int = 100,
                 box_size: float = 5.0, strength: float = 1.0, charge_prob: float = 0.5,
                 dt: float = 1e-3, max_force: float = 100.0, init_position_std: float = 1.0,
                 init_speed: float = 0.5) -> dict[str, Array]:
    """Samples and simulates one trajectory per key: the fast batched generator.

    Same physics as `simulate` applied to `sample` (trajectory s uses only ``keys[s]``), run
    with the batch as the last, vectorised axis. Jittable with all keywords static.

    Args:
      keys: S PRNG keys (``[S]`` typed or ``[S, 2]`` raw).
      n_objects: N >= 2.
      n_frames: T; frames after steps ``sample_every, ..., T sample_every`` (the paper:
        49 for train/valid, 99 for test).
      sample_every, box_size, strength, dt, max_force: as in `simulate`.
      charge_prob, init_position_std, init_speed: as in `sample`.

    Returns:
      ``{"loc": [S, T, N, 2], "vel": [S, T, N, 2], "edges": [S, N, N] int32 q q^T}``.

    Raises:
      ValueError: a shape or setting is invalid (the message names it).
    """
    checks.key_batch(keys)
    checks.positive_int("n_frames", n_frames)
    checks.positive_int("sample_every", sample_every)
    box.check_physics(box_size=box_size, dt=dt, max_force=max_force)
    checks.finite_floats("strength", (strength,))
    return _trajectories(keys, n_objects=n_objects, n_frames=n_frames, sample_every=sample_every,
                         box_size=box_size, strength=strength, charge_prob=charge_prob, dt=dt,
                         max_force=max_force, init_position_std=init_position_std,
                         init_speed=init_speed)


@functools.partial(jax.jit, static_argnames=(
    "n_objects", "n_frames", "sample_every", "box_size", "strength", "charge_prob", "dt",
    "max_force", "init_position_std", "init_speed"))
def _trajectories(keys, *, n_objects, charge_prob, init_position_std, init_speed, strength,
                  **settings):
    systems = jax.vmap(functools.partial(
        sample, n_objects=n_objects, charge_prob=charge_prob,
        init_position_std=init_position_std, init_speed=init_speed))(keys)
    couplings = strength * systems.edges.astype(systems.position.dtype)
    return box.run_batch(coulomb_forces, systems, couplings, **settings)
