"""Per-example loss terms of the NRI ELBO; nothing here reduces over the batch.

Reference normalisation (applied visibly in the train step, not here): the
reference sums each term over the example (NLL over N, T, D; KL over E, K),
divides it by the number of objects N, and averages over the batch:
    loss = mean_b [ gaussian_nll_b / N + kl_b / N ].
Its NLL omits the constant 0.5 log(2 pi variance) per value (so does
`gaussian_nll` unless `add_const=True`), and its uniform-prior KL omits log K
per edge, which makes it negative; `kl_categorical_uniform` includes it, so the
KL is >= 0 and zero at the prior. Neither constant changes the gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _check_same_shape(predictions: jax.Array, targets: jax.Array) -> None:
    if predictions.shape != targets.shape or predictions.ndim < 2:
        raise ValueError(f"predictions and targets must have the same shape [B, ...], got "
                         f"{predictions.shape} and {targets.shape}")


def _check_probs(probs: jax.Array) -> None:
    if probs.ndim != 3:
        raise ValueError(f"probs must be [B, E, K], got shape {probs.shape}")


def gaussian_nll(predictions: jax.Array, targets: jax.Array, *, variance: float,
                 add_const: bool = False) -> jax.Array:
    """Negative log-likelihood of targets under N(predictions, variance), per example.

    Args:
      predictions, targets: [B, N, T, D] (any [B, ...] of equal shapes).
      variance: the fixed output variance (5e-5 in the paper).
      add_const: add 0.5 log(2 pi variance) per value (the reference omits it).

    Returns:
      [B]: sum over all non-batch axes of (pred - target)^2 / (2 variance) (+ const).
    """
    _check_same_shape(predictions, targets)
    if not variance > 0:
        raise ValueError(f"variance must be > 0, got {variance}")
    axes = tuple(range(1, predictions.ndim))
    nll = jnp.sum(jnp.square(predictions - targets), axis=axes) / (2.0 * variance)
    if add_const:
        n_values = int(np.prod(predictions.shape[1:]))
        nll = nll + n_values * 0.5 * np.log(2.0 * np.pi * variance)
    return nll


def kl_categorical(probs: jax.Array, log_prior: jax.Array, *, eps: float = 1e-16) -> jax.Array:
    """KL(q || prior) of independent categorical edge types, per example.

    Args:
      probs: [B, E, K] posterior probabilities q.
      log_prior: [K] (same prior for every edge) or [E, K] log-probabilities.
      eps: added inside log(q) so that q = 0 contributes 0, not NaN.

    Returns:
      [B]: sum over E and K of q (log q - log prior).
    """
    _check_probs(probs)
    log_prior = jnp.asarray(log_prior, probs.dtype)
    if log_prior.shape not in ((probs.shape[-1],), probs.shape[1:]):
        raise ValueError(f"log_prior must be [K] or [E, K] for probs {probs.shape}, got "
                         f"shape {log_prior.shape}")
    log_prior = jnp.broadcast_to(log_prior, probs.shape[1:])[None]
    return jnp.sum(probs * (jnp.log(probs + eps) - log_prior), axis=(1, 2))


def kl_categorical_uniform(probs: jax.Array, *, eps: float = 1e-16) -> jax.Array:
    """KL(q || uniform over K types), per example: sum over E, K of q (log q + log K). [B]."""
    _check_probs(probs)
    log_k = np.log(probs.shape[-1])
    return jnp.sum(probs * (jnp.log(probs + eps) + log_k), axis=(1, 2))


def sparsity_log_prior(n_types: int, no_edge_prob: float = 0.91) -> jax.Array:
    """Log of the sparsity prior: `no_edge_prob` on type 0, the rest spread evenly.

    The reference's sparsity prior for K=4 is [0.91, 0.03, 0.03, 0.03]; this is
    that rule for any K >= 2 (K=2: [0.91, 0.09]).

    Returns:
      [K] log-probabilities.
    """
    if n_types < 2:
        raise ValueError(f"n_types must be >= 2, got {n_types}")
    if not 0 < no_edge_prob < 1:
        raise ValueError(f"no_edge_prob must be in (0, 1), got {no_edge_prob}")
    prior = np.full(n_types, (1.0 - no_edge_prob) / (n_types - 1))
    prior[0] = no_edge_prob
    return jnp.asarray(np.log(prior))  # default float dtype (float64 under x64)
