"""Argument checks for the simulators' public entry points; errors name the argument."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Sequence

import jax


def positive_int(name: str, value) -> int:
    """Returns `value` if it is an integer >= 1, else raises ValueError naming `name`."""
    try:
        index = operator.index(value)  # accepts NumPy integers, rejects floats
    except TypeError:
        index = None
    if isinstance(value, bool) or index is None or index < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return index


def positive_float(name: str, value) -> float:
    """Returns `value` if it is a finite number > 0, else raises ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def non_negative_float(name: str, value) -> float:
    """Returns `value` if it is a finite number >= 0, else raises ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


def finite_floats(name: str, values) -> tuple:
    """Returns `values` as a non-empty tuple of finite floats, else raises naming `name`."""
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be a non-empty sequence of finite numbers, got {values!r}")
    return values


def key_batch(keys) -> int:
    """Checks a batch of PRNG keys (typed ``[S]`` or raw uint32 ``[S, 2]``); returns S."""
    typed = jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
    if (typed and keys.ndim != 1) or (not typed and (keys.ndim != 2 or keys.shape[-1] != 2)):
        raise ValueError("keys must be a batch of PRNG keys, shape [S] (typed) or [S, 2] "
                         f"(raw), got shape {tuple(keys.shape)} dtype {keys.dtype}")
    if keys.shape[0] < 1:
        raise ValueError("keys must hold at least one key, got an empty batch")
    return keys.shape[0]


def at_least_two_objects(n_objects) -> int:
    """An interacting system needs at least one pair."""
    n_objects = positive_int("n_objects", n_objects)
    if n_objects < 2:
        raise ValueError(f"n_objects must be at least 2, got {n_objects!r}")
    return n_objects


def steps_and_sampling(n_steps, sample_every) -> int:
    """Checks both counts and returns the number of recorded frames ``n_steps // sample_every``."""
    n_steps = positive_int("n_steps", n_steps)
    sample_every = positive_int("sample_every", sample_every)
    if sample_every > n_steps:
        raise ValueError(f"sample_every={sample_every!r} exceeds n_steps={n_steps!r}: "
                         "no frame would be recorded")
    return n_steps // sample_every


def shape(name: str, array, expected: Sequence[int]) -> None:
    """Raises ValueError naming `name` unless ``array.shape == expected``."""
    if tuple(array.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(array.shape)}")


def probabilities(name: str, probs: Sequence[float], length: int | None = None) -> tuple:
    """Checks a probability vector (non-negative, sums to 1, optional length) and returns it."""
    probs = tuple(float(p) for p in probs)
    if length is not None and len(probs) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(probs)}: {probs!r}")
    if not probs or min(probs) < 0 or abs(sum(probs) - 1) > 1e-6:
        raise ValueError(f"{name} must be non-negative and sum to 1, got {probs!r}")
    return probs


def probability(name: str, value) -> float:
    """Checks a single probability in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)
