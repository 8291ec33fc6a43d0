"""Integrators and array helpers shared by the simulators.

Every function here is rank-polymorphic in trailing batch axes: a single trajectory has arrays
``[N, D]`` and a batch of S trajectories ``[N, D, S]`` (batch LAST). The batch-last layout is
deliberate: XLA on CPU vectorises over the minor (last) axis, so with the batch there every sum
over the few objects becomes a handful of whole-vector adds. Measured in
``benchmarks/simulators.py`` (BENCHMARKS.md): ``jax.vmap`` of the single-trajectory code (batch
first, or ``in_axes=-1``) ran 1.5-7x slower, ``jnp.sum`` over the small object axis ~60x slower
(XLA's reduce loop does not vectorise there, hence `unrolled_sum`), and forces from ``jax.grad``
of the energy 4-7x slower (its transposed broadcasts are such reductions).

Shapes: N objects, D spatial dims, ``*B`` any trailing batch axes (none for one trajectory).
"""

from __future__ import annotations

import functools
import operator
from typing import Callable, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Prepared = TypeVar("Prepared")

# Trajectories stepped together by the batched generators: the state of 256 trajectories
# (~56 kB with the couplings) stays in the 64 kB L1 data cache. Chunks of 128-256 ran 2-3x
# faster per trajectory than 4k-8k (measured, BENCHMARKS.md).
CHUNK_SIZE = 256


class ParticleState(NamedTuple):
    """Point masses and the (clipped) force at their positions.

    The force is carried, as in jax-md's NVE state, so that each step evaluates it once: left
    to itself XLA fuses the force into both the velocity and the position update and computes
    it twice (measured: 1.1-1.2x faster carrying it at the default chunk, 1.5-2x on 2k chunks).

    Attributes:
      position: ``[N, D, *B]``.
      velocity: ``[N, D, *B]``.
      force: ``[N, D, *B]``, clipped, at `position`.
    """

    position: Array
    velocity: Array
    force: Array


def unrolled_sum(array: Array, axis: int) -> Array:
    """Sums a small, static axis as a chain of whole-array adds.

    XLA's reduce over a tiny non-minor axis runs as a scalar loop on CPU (~60x slower than the
    adds in the springs step, measured); the adds stay element-wise and fuse with producers.

    Args:
      array: any shape; ``array.shape[axis]`` should be small (it is unrolled).
      axis: the axis to sum over.

    Returns:
      `array` without `axis`.
    """
    parts = [lax.index_in_dim(array, i, axis, keepdims=False) for i in range(array.shape[axis])]
    return functools.reduce(operator.add, parts)


def pairwise_differences(position: Array) -> Array:
    """``[i, j] = x_i - x_j`` for all pairs.

    Args:
      position: ``[N, D, *B]``.

    Returns:
      ``[N, N, D, *B]``; receiver i is the row, sender j the column.
    """
    return position[:, None] - position[None, :]


def off_diagonal(n_objects: int, batch_ndim: int) -> Array:
    """Boolean ``[N, N, 1, ..., 1]`` mask, True off the diagonal, ready to broadcast over batch."""
    mask = ~jnp.eye(n_objects, dtype=bool)
    return mask.reshape(mask.shape + (1,) * batch_ndim)


def clip_force(force: Array, max_force: float) -> Array:
    """Clips every force component to ``[-max_force, max_force]`` (the reference's 0.1 / dt)."""
    return jnp.clip(force, -max_force, max_force)


def reflect(position: Array, velocity: Array, box_size: float) -> tuple[Array, Array]:
    """Reflects coordinates that left the box ``[-box_size, box_size]`` back inside.

    A coordinate above the wall becomes ``2 box_size - x`` with velocity ``-|v|``; below,
    ``-2 box_size - x`` with ``+|v|``. One reflection suffices while ``|v| dt < 2 box_size``.

    Args:
      position: ``[N, D, *B]``.
      velocity: ``[N, D, *B]``.
      box_size: half width of the box.

    Returns:
      The reflected ``(position, velocity)``.
    """
    over = position > box_size
    position = jnp.where(over, 2 * box_size - position, position)
    velocity = jnp.where(over, -jnp.abs(velocity), velocity)
    under = position < -box_size
    position = jnp.where(under, -2 * box_size - position, position)
    velocity = jnp.where(under, jnp.abs(velocity), velocity)
    return position, velocity


def box_euler(force_fn: Callable[[Array], Array], *, dt: float, max_force: float,
              box_size: float) -> tuple[Callable[..., ParticleState],
                                        Callable[[ParticleState], ParticleState]]:
    """Semi-implicit (symplectic) Euler for unit masses in a reflecting box: ``(init, step)``.

    One step: ``v <- v + dt clip(F(x)); x <- x + dt v; reflect`` (the reference calls it
    leapfrog). Because the velocity update comes first, continuing a recorded ``(x, v)`` with
    this step reproduces the following frames exactly.

    Args:
      force_fn: positions ``[N, D, *B]`` -> forces ``[N, D, *B]``.
      dt: time step.
      max_force: bound on every force component.
      box_size: half width of the box.

    Returns:
      ``init(position, velocity) -> ParticleState`` and ``step(state) -> state``.
    """

    def force(position: Array) -> Array:
        return clip_force(force_fn(position), max_force)

    def init(position: Array, velocity: Array) -> ParticleState:
        return ParticleState(position, velocity, force(position))

    def step(state: ParticleState) -> ParticleState:
        velocity = state.velocity + dt * state.force
        position, velocity = reflect(state.position + dt * velocity, velocity, box_size)
        return ParticleState(position, velocity, force(position))

    return init, step


def rk4_slope(rate_fn: Callable[[Prepared], Array], y: Array, dt: float, *,
              prepare: Callable[[Array], Prepared] = lambda y: y) -> Array:
    """The classical 4th-order Runge-Kutta slope: ``y(t + dt) ~= y + dt * rk4_slope(...)``.

    The right-hand side is ``dy/dt = rate_fn(prepare(y))``. Stages run as iterations of a small
    loop whose carry holds ``prepare(y_stage)``: XLA then materialises each stage instead of
    fusing it into the next, which recomputes all earlier stages per element (Kuramoto: 35x
    slower, measured). `prepare` puts a right-hand side's costly per-element part (sin and cos
    of the phases) in that carry, computed once per element rather than once per pair (6x).

    Args:
      rate_fn: prepared state -> ``dy/dt``, shaped like `y`.
      y: the state, any shape.
      dt: time step.
      prepare: ``y -> prepared state`` (any pytree); the identity by default.

    Returns:
      ``(k1 + 2 k2 + 2 k3 + k4) / 6``, shaped like `y`.
    """
    next_nodes = jnp.asarray([0.5, 0.5, 1.0], y.dtype)  # where stages 2, 3, 4 evaluate
    weights = jnp.asarray([1.0, 2.0, 2.0], y.dtype) / 6

    def stage(i, carry):
        prepared, total = carry
        slope = rate_fn(prepared)
        return prepare(y + next_nodes[i] * dt * slope), total + weights[i] * slope

    prepared, total = lax.fori_loop(0, 3, stage, (prepare(y), jnp.zeros_like(y)))
    return total + rate_fn(prepared) / 6


def map_chunks(fn: Callable, tree, chunk_size: int = CHUNK_SIZE):
    """Applies a batched `fn` to consecutive chunks of the leading axis, one after the other.

    Keeps the working set of a step loop in cache whatever the caller's batch size (see
    `CHUNK_SIZE`). The last chunk is padded with copies of the last entry, whose results are
    dropped; results do not depend on the chunk size.

    Args:
      fn: pytree with leading axis ``[C, ...]`` -> pytree with leading axis ``[C, ...]``.
      tree: pytree whose leaves share the leading batch axis S.
      chunk_size: C.

    Returns:
      ``fn`` applied to all of `tree`, leading axis S.
    """
    size = jax.tree.leaves(tree)[0].shape[0]
    if size <= chunk_size:
        return fn(tree)
    n_chunks = -(-size // chunk_size)
    pad = n_chunks * chunk_size - size

    def split(leaf):
        leaf = jnp.pad(leaf, [(0, pad)] + [(0, 0)] * (leaf.ndim - 1), mode="edge")
        return leaf.reshape((n_chunks, chunk_size) + leaf.shape[1:])

    out = lax.map(fn, jax.tree.map(split, tree))
    return jax.tree.map(lambda leaf: leaf.reshape((-1,) + leaf.shape[2:])[:size], out)


def batch_last(tree):
    """Moves the leading batch axis of every leaf to the end: ``[S, ...] -> [..., S]``."""
    return jax.tree.map(lambda leaf: jnp.moveaxis(leaf, 0, -1), tree)


def batch_first(tree):
    """Moves the trailing batch axis of every leaf to the front: ``[..., S] -> [S, ...]``."""
    return jax.tree.map(lambda leaf: jnp.moveaxis(leaf, -1, 0), tree)
