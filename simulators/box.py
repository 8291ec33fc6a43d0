"""Point masses in a 2-D reflecting box: the machinery springs and charged particles share.

A system supplies only its pairwise force ``force_fn(position, couplings)`` and how it samples
its interaction matrix; initial states, the integrator, the recording loop, input checks and the
fast batched layout live here, once.

Shapes: N objects, T frames, S trajectories, ``*B`` trailing batch axes (none for one trajectory).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from simulators import checks
from simulators.integrators import CHUNK_SIZE, batch_first, batch_last, box_euler, map_chunks
from simulators.recording import record

Array = jax.Array
# position [N, 2, *B], couplings [N, N, *B] -> force [N, 2, *B]
ForceFn = Callable[[Array, Array], Array]

N_DIMS = 2


class ParticleSystem(NamedTuple):
    """A sampled initial condition and its interaction matrix.

    Attributes:
      position: ``[N, 2]`` initial positions.
      velocity: ``[N, 2]`` initial velocities.
      edges: ``[N, N]`` int32 raw interaction matrix (springs: edge type, charged: q q^T).
    """

    position: Array
    velocity: Array
    edges: Array


def sample_state(key: Array, n_objects: int, *, position_std: float,
                 speed: float) -> tuple[Array, Array]:
    """Gaussian positions and velocities of equal speed in uniformly random directions.

    Args:
      key: PRNG key.
      n_objects: N.
      position_std: standard deviation of every position coordinate.
      speed: the speed of every object.

    Returns:
      ``(position, velocity)``, each ``[N, 2]`` in JAX's default float dtype.
    """
    position_key, angle_key = jax.random.split(key)
    position = position_std * jax.random.normal(position_key, (n_objects, N_DIMS))
    angle = jax.random.uniform(angle_key, (n_objects,), maxval=2 * jnp.pi)
    velocity = speed * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    return position, velocity


def check_physics(*, box_size, dt, max_force) -> None:
    """Raises ValueError naming the first non-positive physics setting."""
    checks.positive_float("box_size", box_size)
    checks.positive_float("dt", dt)
    checks.positive_float("max_force", max_force)


def check_initial(x0: Array, v0: Array, edges: Array) -> int:
    """Checks ``x0, v0: [N, 2]`` and ``edges: [N, N]``; returns N."""
    if x0.ndim != 2 or x0.shape[1] != N_DIMS or x0.shape[0] < 1:
        raise ValueError(f"x0 must have shape [N, {N_DIMS}] with N >= 1, got {tuple(x0.shape)}")
    n_objects = x0.shape[0]
    checks.shape("v0", v0, (n_objects, N_DIMS))
    checks.shape("edges", edges, (n_objects, n_objects))
    return n_objects


def float_dtype(*arrays) -> jnp.dtype:
    """The floating dtype to simulate in: the inputs' if floating, else JAX's default float."""
    return jnp.result_type(*arrays, float)


def run(force_fn: ForceFn, position: Array, velocity: Array, couplings: Array, *,
        n_frames: int, sample_every: int, box_size: float, dt: float,
        max_force: float) -> tuple[Array, Array]:
    """Integrates and records; any trailing batch axes are carried along.

    Args:
      force_fn: ``(position [N, 2, *B], couplings [N, N, *B]) -> force [N, 2, *B]``.
      position: ``[N, 2, *B]`` initial positions.
      velocity: ``[N, 2, *B]`` initial velocities.
      couplings: ``[N, N, *B]`` per-pair coefficients handed to `force_fn`.
      n_frames: T.
      sample_every: steps between recorded frames.
      box_size, dt, max_force: see `integrators.box_euler`.

    Returns:
      ``(x, v)``, each ``[T, N, 2, *B]``, after steps ``sample_every, 2 sample_every, ...``.
    """
    init, step = box_euler(lambda x: force_fn(x, couplings), dt=dt, max_force=max_force,
                           box_size=box_size)
    frames = record(step, init(position, velocity), n_frames=n_frames,
                    sample_every=sample_every)
    return frames.position, frames.velocity


def run_batch(force_fn: ForceFn, systems: ParticleSystem, couplings: Array, *, n_frames: int,
              chunk_size: int = CHUNK_SIZE, **settings) -> dict[str, Array]:
    """Simulates a batch in the batch-last layout and returns the dataset layout.

    Args:
      force_fn: as for `run`.
      systems: initial conditions with a leading batch axis (``[S, N, 2]``, edges ``[S, N, N]``).
      couplings: ``[S, N, N]`` per-pair coefficients.
      n_frames: T.
      chunk_size: trajectories stepped together (`integrators.CHUNK_SIZE`).
      **settings: `sample_every`, `box_size`, `dt`, `max_force` for `run`.

    Returns:
      ``{"loc": [S, T, N, 2], "vel": [S, T, N, 2], "edges": [S, N, N]}``.
    """
    def simulate_chunk(chunk):
        frames = run(force_fn, *batch_last(chunk), n_frames=n_frames, **settings)
        return batch_first(frames)  # [T, N, 2, C] -> [C, T, N, 2], outside the step loop

    loc, vel = map_chunks(simulate_chunk, (systems.position, systems.velocity, couplings),
                          chunk_size)
    return {"loc": loc, "vel": vel, "edges": systems.edges}
