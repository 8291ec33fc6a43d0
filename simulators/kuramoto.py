"""Kuramoto oscillators: ``dphi_i/dt = omega_i + sum_j K_ij sin(phi_j - phi_i)``.

``K[i, j]`` is the influence of j on i (receiver = row, as for the other systems); K is a
directed 0/1 graph. Fixed-step RK4 (dt = 0.01) on the grid t = 0, dt, 2 dt, ...

Phase convention: the phase is UNWRAPPED (the ODE solution as it is, growing by roughly
``omega t``, never reduced mod 2 pi). The reference's first feature, the forward difference
``(phi(t + dt) - phi(t)) / dt``, is "constant for an object with no incoming coupling" only for
the unwrapped phase (wrapping would add jumps of ``-2 pi / dt``); its third feature, phi
min-max scaled, is taken of the same phase.

Shapes: N objects, T frames, S trajectories, ``*B`` trailing batch axes.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from simulators import checks
from simulators.integrators import batch_first, batch_last, map_chunks, rk4_slope, unrolled_sum
from simulators.recording import record_from_start

Array = jax.Array

N_FEATURES = 4


class OscillatorSystem(NamedTuple):
    """A sampled initial condition and coupling graph.

    Attributes:
      phase: ``[N]`` initial phases.
      omega: ``[N]`` natural frequencies.
      coupling: ``[N, N]`` int32 0/1; ``[i, j]`` = influence of j on i; zero diagonal.
    """

    phase: Array
    omega: Array
    coupling: Array


class GridState(NamedTuple):
    """The phase at a grid point and the forward difference to the next grid point.

    Attributes:
      phase: ``[N, *B]`` ``phi(t)``.
      rate: ``[N, *B]`` ``(phi(t + dt) - phi(t)) / dt``, i.e. the RK4 slope of the step from t.
        Carried in the state, it costs nothing extra and avoids the cancellation of
        subtracting two large, nearly equal float32 phases.
    """

    phase: Array
    rate: Array


def sample(key: Array, *, n_objects: int, omega_range: tuple[float, float] = (1.0, 10.0),
           coupling_prob: float = 0.5) -> OscillatorSystem:
    """Samples ``phi0 ~ U[0, 2 pi)``, ``omega ~ U[omega_range)``, ``K_ij ~ Bernoulli``.

    Args:
      key: PRNG key.
      n_objects: N >= 2.
      omega_range: ``(low, high)`` of the natural frequencies.
      coupling_prob: probability of each directed coupling ``K_ij`` (i != j).

    Returns:
      `OscillatorSystem` in JAX's default float dtype.
    """
    checks.at_least_two_objects(n_objects)
    low, high = _check_range(omega_range)
    checks.probability("coupling_prob", coupling_prob)
    phase_key, omega_key, coupling_key = jax.random.split(key, 3)
    phase = jax.random.uniform(phase_key, (n_objects,), maxval=2 * jnp.pi)
    omega = jax.random.uniform(omega_key, (n_objects,), minval=low, maxval=high)
    coupling = jax.random.bernoulli(coupling_key, coupling_prob, (n_objects, n_objects))
    coupling = (coupling & ~jnp.eye(n_objects, dtype=bool)).astype(jnp.int32)
    return OscillatorSystem(phase, omega, coupling)


def _check_range(omega_range) -> tuple[float, float]:
    values = checks.finite_floats("omega_range", omega_range)
    if len(values) != 2 or values[0] >= values[1]:
        raise ValueError(f"omega_range must be (low, high) with low < high, got {omega_range!r}")
    return values


def phase_velocity(phase: Array, omega: Array, coupling: Array) -> Array:
    """``dphi_i/dt = omega_i + sum_j K_ij sin(phi_j - phi_i)``.

    Args:
      phase: ``[N, *B]``.
      omega: ``[N, *B]``.
      coupling: ``[N, N, *B]`` float.

    Returns:
      ``[N, *B]``.
    """
    return _velocity_from_phasors(_phasors(phase), omega, coupling)


def _phasors(phase: Array) -> tuple[Array, Array]:
    return jnp.sin(phase), jnp.cos(phase)


def _velocity_from_phasors(phasors: tuple[Array, Array], omega: Array, coupling: Array) -> Array:
    # sin(phi_j - phi_i) = sin phi_j cos phi_i - cos phi_j sin phi_i: 2N sines and cosines
    # instead of N^2.
    sin, cos = phasors
    coupled_sin = unrolled_sum(coupling * sin[None], axis=1)
    coupled_cos = unrolled_sum(coupling * cos[None], axis=1)
    return omega + cos * coupled_sin - sin * coupled_cos


class _Integration(NamedTuple):
    """`GridState` plus the rounding error of `phase` (Kahan summation).

    The phase grows to ~100 rad while each step adds ~0.05: in float32 plain summation lost
    5e-4 rad over the span (measured against DOP853); carrying the rounding error keeps it at
    one ulp of the phase (~1e-5 rad).
    """

    phase: Array
    rate: Array
    rounding: Array


def _run(phase0, omega, coupling, *, n_frames, sample_every, dt) -> GridState:
    """Frames at grid steps 0, k, 2k, ... for any trailing batch axes: ``[T, N, *B]``."""
    rate_fn = functools.partial(_velocity_from_phasors, omega=omega, coupling=coupling)

    def slope(phase: Array) -> Array:
        return rk4_slope(rate_fn, phase, dt, prepare=_phasors)

    def step(state: _Integration) -> _Integration:
        increment = dt * state.rate - state.rounding
        phase = state.phase + increment
        return _Integration(phase, slope(phase), (phase - state.phase) - increment)

    start = _Integration(phase0, slope(phase0), jnp.zeros_like(phase0))
    frames = record_from_start(step, start, n_frames=n_frames, sample_every=sample_every)
    return GridState(frames.phase, frames.rate)


def simulate(phase0: Array, omega: Array, coupling: Array, *, n_steps: int, sample_every: int,
             dt: float = 0.01) -> GridState:
    """Integrates one system with RK4 on the grid ``t = 0, dt, ..., (n_steps - 1) dt``.

    Args:
      phase0: ``[N]`` initial phases (recorded as frame 0).
      omega: ``[N]`` natural frequencies.
      coupling: ``[N, N]``; ``[i, j]`` = influence of j on i.
      n_steps: grid points (the reference: 1000 points, t = 0 .. 9.99).
      sample_every: grid points between frames.
      dt: time step.

    Returns:
      `GridState` of ``[T, N]`` arrays, T = ``n_steps // sample_every``, at t = 0,
      ``sample_every dt``, ...: the unwrapped phase and the forward difference to the next grid
      point, in the inputs' float dtype (JAX's default float for integer inputs).

    Raises:
      ValueError: a shape or setting is invalid (the message names it).
    """
    phase0, omega, coupling = jnp.asarray(phase0), jnp.asarray(omega), jnp.asarray(coupling)
    if phase0.ndim != 1 or phase0.shape[0] < 1:
        raise ValueError(f"phase0 must have shape [N] with N >= 1, got {tuple(phase0.shape)}")
    n_objects = phase0.shape[0]
    checks.shape("omega", omega, (n_objects,))
    checks.shape("coupling", coupling, (n_objects, n_objects))
    n_frames = checks.steps_and_sampling(n_steps, sample_every)
    checks.positive_float("dt", dt)
    dtype = jnp.result_type(phase0, omega, float)
    return _simulate(phase0.astype(dtype), omega.astype(dtype), coupling.astype(dtype),
                     n_frames=n_frames, sample_every=sample_every, dt=dt)


_simulate = jax.jit(_run, static_argnames=("n_frames", "sample_every", "dt"))


def _scale_to_unit(values: Array) -> Array:
    """Min-max scales along axis 1 (time) of ``[N, T, *B]`` to [-1, 1]."""
    low = jnp.min(values, axis=1, keepdims=True)
    span = jnp.max(values, axis=1, keepdims=True) - low
    # A constant series has no scale; it maps to -1 instead of dividing by zero.
    return 2 * (values - low) / jnp.where(span > 0, span, 1) - 1


def features(frames: GridState, omega: Array, coupling: Array, *,
             omega_range: tuple[float, float] = (1.0, 10.0)) -> Array:
    """The reference's node features, scaled over all the given frames.

    In order: (1) the forward-difference rate min-max scaled to [-1, 1] per object over the
    frames, 0 for an object without incoming coupling (its rate is constant, so the scaling
    would only amplify round-off); (2) ``sin(phi)``; (3) phi min-max scaled likewise;
    (4) omega mapped linearly from `omega_range` to [-1, 1].

    Args:
      frames: `GridState` of ``[T, N, *B]`` arrays (as returned by `simulate`).
      omega: ``[N, *B]``.
      coupling: ``[N, N, *B]``.
      omega_range: the range omega was drawn from.

    Returns:
      ``[N, T, 4, *B]``.
    """
    phase = jnp.swapaxes(frames.phase, 0, 1)  # [N, T, *B]
    rate = jnp.swapaxes(frames.rate, 0, 1)
    driven = unrolled_sum(coupling, axis=1) != 0  # [N, *B]
    rate = jnp.where(driven[:, None], _scale_to_unit(rate), 0)
    low, high = omega_range
    omega = jnp.broadcast_to((2 * omega[:, None] - (low + high)) / (high - low), phase.shape)
    return jnp.stack([rate, jnp.sin(phase), _scale_to_unit(phase), omega], axis=2)


def trajectories(keys: Array, *, n_objects: int, n_frames: int, sample_every: int = 10,
                 span_frames: int = 100, dt: float = 0.01,
                 omega_range: tuple[float, float] = (1.0, 10.0),
                 coupling_prob: float = 0.5) -> dict[str, Array]:
    """Samples and simulates one system per key: the fast batched generator.

    Every trajectory is simulated over the full span (`span_frames` frames, t = 0 .. 9.9 by
    default, 1000 grid points), its features are scaled over that span, and the first
    `n_frames` frames are kept, as in the reference (99 for test, 49 for train/valid).
    Trajectory s uses only ``keys[s]``. Jittable with all keywords static.

    Args:
      keys: S PRNG keys (``[S]`` typed or ``[S, 2]`` raw).
      n_objects: N >= 2.
      n_frames: T <= `span_frames`, frames kept.
      sample_every: grid points between frames.
      span_frames: frames simulated and used for the min-max scaling.
      dt: time step.
      omega_range, coupling_prob: as in `sample`.

    Returns:
      ``{"feat": [S, N, T, 4], "edges": [S, N, N] int32 coupling K}``.

    Raises:
      ValueError: a shape or setting is invalid (the message names it).
    """
    checks.key_batch(keys)
    checks.positive_int("n_frames", n_frames)
    checks.positive_int("span_frames", span_frames)
    if n_frames > span_frames:
        raise ValueError(f"n_frames={n_frames!r} exceeds span_frames={span_frames!r}")
    checks.positive_int("sample_every", sample_every)
    checks.positive_float("dt", dt)
    omega_range = _check_range(omega_range)
    return _trajectories(keys, n_objects=n_objects, n_frames=n_frames, sample_every=sample_every,
                         span_frames=span_frames, dt=dt, omega_range=omega_range,
                         coupling_prob=coupling_prob)


@functools.partial(jax.jit, static_argnames=("n_objects", "n_frames", "sample_every",
                                             "span_frames", "dt", "omega_range", "coupling_prob"))
def _trajectories(keys, *, n_objects, n_frames, sample_every, span_frames, dt, omega_range,
                  coupling_prob) -> dict[str, Array]:
    systems = jax.vmap(functools.partial(sample, n_objects=n_objects, omega_range=omega_range,
                                         coupling_prob=coupling_prob))(keys)

    def simulate_chunk(chunk: OscillatorSystem) -> Array:
        phase0, omega, coupling = batch_last(chunk)  # the batch as the vector axis
        coupling = coupling.astype(phase0.dtype)
        frames = _run(phase0, omega, coupling, n_frames=span_frames, sample_every=sample_every,
                      dt=dt)
        return features(frames, omega, coupling, omega_range=omega_range)[:, :n_frames]

    feat = map_chunks(lambda chunk: batch_first(simulate_chunk(chunk)), systems)
    return {"feat": feat, "edges": systems.coupling}
