"""Gumbel-softmax (concrete) samples of categorical edge types.

softmax((logits + g) / tau) with g ~ Gumbel(0, 1) is a relaxed one-hot sample
whose argmax is an exact sample of Categorical(softmax(logits)) (the Gumbel-max
trick). Hard samples return that one-hot argmax in the forward pass and the
gradient of the soft sample in the backward pass (straight-through estimator).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_gumbel(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Standard Gumbel noise -log(-log(U)), finite everywhere.

    U is drawn from [tiny, 1) so that log(U) is finite and -log(U) > 0: no log(0).
    """
    u = jax.random.uniform(key, shape, dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)
    return -jnp.log(-jnp.log(u))


def gumbel_softmax(key: jax.Array, logits: jax.Array, *, tau: float, hard: bool) -> jax.Array:
    """Relaxed (or straight-through one-hot) categorical samples over the last axis.

    Args:
      key: PRNG key for the Gumbel noise.
      logits: [..., K] unnormalised log-probabilities, K >= 2.
      tau: temperature > 0 (the reference uses 0.5).
      hard: if True, the value is exactly one-hot (argmax of the perturbed
        logits) and the gradient is that of the soft sample.

    Returns:
      [..., K] samples that sum to 1 over the last axis.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise ValueError(f"logits must be [..., K] with K >= 2, got shape {logits.shape}")
    noise = sample_gumbel(key, logits.shape, logits.dtype)
    soft = jax.nn.softmax((logits + noise) / tau, axis=-1)
    if not hard:
        return soft
    one_hot = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1], dtype=soft.dtype)
    # one_hot + (soft - stop_gradient(soft)) is exactly one_hot in value (x - x == 0),
    # unlike the common (one_hot - soft) + soft, which can round to 0.99999994.
    return one_hot + (soft - jax.lax.stop_gradient(soft))
