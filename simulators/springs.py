"""Particles joined by ideal springs (rest length 0) in a 2-D reflecting box.

Force on i: ``F_i = -sum_j k_ij (x_i - x_j)`` with ``k_ij = spring_constants[edges[i, j]]``. With
the defaults (constants ``(0, 0.1)``, type probabilities ``(0.5, 0.5)``) `edges` is exactly the
paper's 0/1 spring matrix; more constants give more edge types. Integration, walls, clipping and
recording are shared with the charged system (`simulators.box`).

Shapes: N objects, T frames, S trajectories, K edge types, ``*B`` trailing batch axes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from simulators import box, checks
from simulators.box import ParticleSystem
from simulators.integrators import pairwise_differences, unrolled_sum

Array = jax.Array

DEFAULT_SPRING_CONSTANTS = (0.0, 0.1)
DEFAULT_EDGE_PROBS = (0.5, 0.5)


def sample_edges(key: Array, n_objects: int, *,
                 edge_probs: tuple[float, ...] = DEFAULT_EDGE_PROBS) -> Array:
    """Draws an edge type for every unordered pair.

    Args:
      key: PRNG key.
      n_objects: N.
      edge_probs: K probabilities of the edge types 0..K-1.

    Returns:
      ``[N, N]`` int32 type indices: symmetric, zero diagonal.
    """
    # Inverse CDF: the type is the number of cumulative probabilities a uniform draw passes.
    thresholds = jnp.cumsum(jnp.asarray(edge_probs))[:-1]  # [K - 1]
    uniform = jax.random.uniform(key, (n_objects, n_objects, 1))
    types = jnp.sum(uniform >= thresholds[None, None], axis=-1, dtype=jnp.int32)
    upper = jnp.triu(types, k=1)  # one draw per pair, mirrored
    return upper + upper.T


def sample(key: Array, *, n_objects: int, edge_probs: tuple[float, ...] = DEFAULT_EDGE_PROBS,
           init_position_std: float = 0.5, init_speed: float = 0.5) -> ParticleSystem:
    """Samples an initial condition and spring graph with the paper's distributions.

    Args:
      key: PRNG key.
      n_objects: N >= 2.
      edge_probs: probabilities of the K edge types.
      init_position_std: standard deviation of the initial coordinates.
      init_speed: the initial speed of every object (directions uniform).

    Returns:
      `ParticleSystem` with positions, velocities ``[N, 2]`` and type indices ``[N, N]``.
    """
    checks.at_least_two_objects(n_objects)
    edge_probs = checks.probabilities("edge_probs", edge_probs)
    checks.positive_float("init_position_std", init_position_std)
    checks.non_negative_float("init_speed", init_speed)
    return _sample(key, n_objects, edge_probs, init_position_std, init_speed)


def _sample(key, n_objects, edge_probs, position_std, speed) -> ParticleSystem:
    state_key, edge_key = jax.random.split(key)
    position, velocity = box.sample_state(state_key, n_objects, position_std=position_std,
                                          speed=speed)
    return ParticleSystem(position, velocity, sample_edges(edge_key, n_objects,
                                                           edge_probs=edge_probs))


def stiffness(edges: Array, spring_constants: tuple[float, ...], dtype=None) -> Array:
    """Spring constant of every pair, ``k_ij = spring_constants[edges[i, j]]``.

    Args:
      edges: ``[N, N, *B]`` integer edge types (floats holding integers are accepted).
      spring_constants: K constants.
      dtype: float dtype of the result (default: JAX's default float).

    Returns:
      ``[N, N, *B]``; an out-of-range type gives NaN (visible, never a silent clamp).
    """
    constants = jnp.asarray(spring_constants, dtype=dtype or jnp.result_type(float))
    return jnp.take(constants, jnp.asarray(edges).astype(jnp.int32), mode="fill",
                    fill_value=jnp.nan)


def spring_forces(position: Array, stiffness: Array) -> Array:
    """Hooke forces ``F_i = -sum_j k_ij (x_i - x_j)`` (unclipped).

    Args:
      position: ``[N, 2, *B]``.
      stiffness: ``[N, N, *B]`` symmetric spring constants.

    Returns:
      ``[N, 2, *B]``.
    """
    return -unrolled_sum(stiffness[:, :, None] * pairwise_differences(position), axis=1)


def potential_energy(position: Array, stiffness: Array) -> Array:
    """``0.5 sum_{i<j} k_ij |x_i - x_j|^2``; ``-grad`` of it is `spring_forces`.

    Args:
      position: ``[N, 2, *B]``.
      stiffness: ``[N, N, *B]`` symmetric.

    Returns:
      ``[*B]``.
    """
    squared = unrolled_sum(pairwise_differences(position) ** 2, axis=2)
    # Every pair appears twice in the full double sum.
    return 0.25 * unrolled_sum(unrolled_sum(stiffness * squared, axis=1), axis=0)


def simulate(x0: Array, v0: Array, edges: Array, *, n_steps: int, sample_every: int,
             box_size: float = 5.0,
             spring_constants: tuple[float, ...] = DEFAULT_SPRING_CONSTANTS,
             dt: float = 1e-3, max_force: float = 100.0) -> tuple[Array, Array]:
    """Simulates one trajectory (the readable reference for `trajectories`).

    Args:
      x0: ``[N, 2]`` initial positions (not recorded).
      v0: ``[N, 2]`` initial velocities.
      edges: ``[N, N]`` edge types indexing `spring_constants` (0/1 by default).
      n_steps: integration steps; ``n_steps // sample_every`` frames are recorded (steps after
        the last frame would change nothing recorded and are skipped).
      sample_every: steps between frames.
      box_size: walls at ``+-box_size``.
      spring_constants: K spring constants, one per edge type.
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
    constants = checks.finite_floats("spring_constants", spring_constants)
    dtype = box.float_dtype(x0, v0)
    return _simulate(x0.astype(dtype), v0.astype(dtype), edges, n_frames=n_frames,
                     sample_every=sample_every, box_size=box_size, spring_constants=constants,
                     dt=dt, max_force=max_force)


@functools.partial(jax.jit, static_argnames=("n_frames", "sample_every", "box_size",
                                             "spring_constants", "dt", "max_force"))
def _simulate(x0, v0, edges, *, spring_constants, **settings):
    couplings = stiffness(edges, spring_constants, x0.dtype)
    return box.run(spring_forces, x0, v0, couplings, **settings)


def trajectories(keys: Array, *, n_objects: int, n_frames: int, sample_every: int = 100,
                 box_size: float = 5.0,
                 spring_constants: tuple[float, ...] = DEFAULT_SPRING_CONSTANTS,
                 edge_probs: tuple[float, ...] = DEFAULT_EDGE_PROBS, dt: float = 1e-3,
                 max_force: float = 100.0, init_position_std: float = 0.5,
                 init_speed: float = 0.5) -> dict[str, Array]:
    """Samples and simulates one trajectory per key: the fast batched generator.

    Same physics as `simulate` applied to `sample` (trajectory s uses only ``keys[s]``), run
    with the batch as the last, vectorised axis. Jittable with all keywords static.

    Args:
      keys: S PRNG keys (``[S]`` typed or ``[S, 2]`` raw).
      n_objects: N >= 2.
      n_frames: T; frames after steps ``sample_every, ..., T sample_every`` (the paper:
        49 for train/valid, 99 for test).
      sample_every, box_size, spring_constants, dt, max_force: as in `simulate`.
      edge_probs, init_position_std, init_speed: as in `sample`.

    Returns:
      ``{"loc": [S, T, N, 2], "vel": [S, T, N, 2], "edges": [S, N, N] int32 edge types}``.

    Raises:
      ValueError: a shape or setting is invalid (the message names it).
    """
    checks.key_batch(keys)
    checks.positive_int("n_frames", n_frames)
    checks.positive_int("sample_every", sample_every)
    box.check_physics(box_size=box_size, dt=dt, max_force=max_force)
    constants = checks.finite_floats("spring_constants", spring_constants)
    edge_probs = checks.probabilities("edge_probs", edge_probs, length=len(constants))
    return _trajectories(keys, n_objects=n_objects, n_frames=n_frames, sample_every=sample_every,
                         box_size=box_size, spring_constants=constants, edge_probs=edge_probs,
                         dt=dt, max_force=max_force, init_position_std=init_position_std,
                         init_speed=init_speed)


@functools.partial(jax.jit, static_argnames=(
    "n_objects", "n_frames", "sample_every", "box_size", "spring_constants", "edge_probs", "dt",
    "max_force", "init_position_std", "init_speed"))
def _trajectories(keys, *, n_objects, edge_probs, init_position_std, init_speed,
                  spring_constants, **settings):
    systems = jax.vmap(functools.partial(
        sample, n_objects=n_objects, edge_probs=edge_probs,
        init_position_std=init_position_std, init_speed=init_speed))(keys)
    couplings = stiffness(systems.edges, spring_constants, systems.position.dtype)
    return box.run_batch(spring_forces, systems, couplings, **settings)
