"""The recording loop shared by all simulators: run a step function, keep every k-th state."""

from __future__ import annotations

from typing import Callable, TypeVar

import jax
from jax import lax

State = TypeVar("State")


def record(step_fn: Callable[[State], State], state: State, *, n_frames: int,
           sample_every: int, unroll: int = 1) -> State:
    """Runs ``n_frames * sample_every`` steps and stacks the state after every `sample_every`-th.

    The initial state is not recorded: frame t is the state after ``(t + 1) * sample_every``
    steps. An outer `lax.scan` over frames wraps an inner `lax.fori_loop` over steps, so only
    the recorded frames are kept in memory. The inner loop is not unrolled by default: unrolling
    made XLA duplicate the fused force computation (springs / charged: 5x slower at unroll 2,
    20x at 5; measured, BENCHMARKS.md).

    Args:
      step_fn: one integration step, ``state -> state`` (a pytree of arrays).
      state: the initial state.
      n_frames: T, number of recorded frames.
      sample_every: steps between recorded frames.
      unroll: unrolling factor of the inner loop.

    Returns:
      The recorded states: every leaf gains a leading frame axis ``[T, ...]``.
    """

    def advance(current: State, _) -> tuple[State, State]:
        current = lax.fori_loop(0, sample_every, lambda _, s: step_fn(s), current,
                                unroll=unroll)
        return current, current

    _, frames = lax.scan(advance, state, length=n_frames)
    return frames


def record_from_start(step_fn: Callable[[State], State], state: State, *, n_frames: int,
                      sample_every: int) -> State:
    """Like `record`, but frame 0 is the initial state (frames at steps 0, k, 2k, ...).

    Runs ``(n_frames - 1) * sample_every`` steps.

    Returns:
      Every leaf of `state` with a leading frame axis ``[T, ...]``.
    """
    later = record(step_fn, state, n_frames=n_frames - 1, sample_every=sample_every)
    return jax.tree.map(lambda first, rest: jax.numpy.concatenate([first[None], rest]),
                        state, later)
