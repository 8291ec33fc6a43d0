"""Full-batch training for the small examples: Adam steps in one `lax.scan`.

    params, losses = fit(key, params, loss_fn, steps=200, learning_rate=1e-2)

`loss_fn(params, key) -> scalar` is the whole objective (its reduction over
nodes, edges or graphs is written in it, where the example defines it); the key
is a fresh one per step for whatever the loss samples (dropout, negative edges,
corruptions). The loop is one compiled program: a new `loss_fn` object compiles
once, and calling again with the same one does not recompile.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import optax

LossFn = Callable[[object, jax.Array], jax.Array]


def adam_step(loss_fn: LossFn, optimizer: optax.GradientTransformation):
    """`(params, opt_state), key -> (params, opt_state), loss`: one optimiser step."""

    def step(carry, key):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step


@functools.partial(jax.jit, static_argnames=("loss_fn", "steps", "learning_rate"))
def fit(key: jax.Array, params, loss_fn: LossFn, *, steps: int,
        learning_rate: float) -> tuple[object, jax.Array]:
    """Minimises `loss_fn` with Adam.

    Args:
      key: PRNG key, split into one key per step.
      params: the initial parameters (any pytree).
      loss_fn: `(params, key) -> scalar` (static: hashable, compiled once per object).
      steps: number of Adam steps, static.
      learning_rate: Adam's step size, static.

    Returns:
      `(params, losses)`: the final parameters and the loss before each step, [steps].
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    optimizer = optax.adam(learning_rate)
    (params, _), losses = jax.lax.scan(adam_step(loss_fn, optimizer),
                                       (params, optimizer.init(params)),
                                       jax.random.split(key, steps))
    return params, losses


def make_train_step(loss_fn, learning_rate: float):
    """A jitted mini-batch step for data that does not fit one `fit` call.

    Args:
      loss_fn: `(params, batch, key) -> scalar`; `batch` is any pytree of arrays.
      learning_rate: Adam's step size.

    Returns:
      `(init, step)`: `init(params) -> opt_state` and the jitted
      `step(params, opt_state, batch, key) -> (params, opt_state, loss)`.
    """
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return optimizer.init, step
