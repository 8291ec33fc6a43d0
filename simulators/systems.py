"""Registry of the simulated systems and the per-system facts a dataset builder needs.

    system = systems.get("springs")
    batch = system.trajectories(keys, n_objects=5, n_frames=system.n_frames["train"])
    labels = systems.edge_type_labels("springs", batch["edges"])

Physics settings and their defaults are the keyword-only arguments of each module's
`trajectories` (read them with `inspect.signature`); they are not repeated here.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping

import numpy as np

from simulators import charged, kuramoto, springs

SPLITS = ("train", "valid", "test")


def _as_is(edges):
    return edges.astype(np.int32)


def _charge_signs(edges):
    # q q^T in {-1, +1} -> {0, 1}: label = int((A + 1) / 2), as the reference.
    return ((edges + 1) // 2).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class System:
    """One registered system.

    Attributes:
      name: "springs", "charged" or "kuramoto".
      module: its module (`sample`, `simulate`, `trajectories`).
      n_frames: default frames per split (the paper: 49 train / 49 valid / 99 test).
      feature_dim: D, features per object and frame in the model layout.
      labels: raw interaction matrices ``[..., N, N]`` -> int32 edge-type labels ``[..., N, N]``
        (NumPy or JAX arrays).
    """

    name: str
    module: types.ModuleType
    n_frames: Mapping[str, int]
    feature_dim: int
    labels: Callable[[Any], Any]

    @property
    def trajectories(self) -> Callable[..., dict]:
        """The system's batched generator, ``trajectories(keys, *, n_objects, n_frames, ...)``."""
        return self.module.trajectories


_PAPER_FRAMES = types.MappingProxyType({"train": 49, "valid": 49, "test": 99})
_REGISTRY = {
    "springs": System("springs", springs, _PAPER_FRAMES, 4, _as_is),
    "charged": System("charged", charged, _PAPER_FRAMES, 4, _charge_signs),
    "kuramoto": System("kuramoto", kuramoto, _PAPER_FRAMES, kuramoto.N_FEATURES, _as_is),
}


def names() -> tuple[str, ...]:
    """The registered system names."""
    return tuple(_REGISTRY)


def get(name: str) -> System:
    """The registered system called `name`; ValueError naming it if there is none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown system {name!r}; known: {', '.join(_REGISTRY)}") from None


def default_n_frames(name: str, split: str) -> int:
    """Default frames of `split` ("train", "valid" or "test") for system `name`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return get(name).n_frames[split]


def edge_type_labels(name: str, edges):
    """Raw interaction matrices ``[..., N, N]`` -> int32 edge-type labels ``[..., N, N]``.

    springs: the type index as it is; charged: ``int((A + 1) / 2)``; kuramoto: K as it is.
    """
    return get(name).labels(edges)


def n_edge_types(name: str, **physics) -> int:
    """K, the number of edge types (springs: one per spring constant; otherwise 2)."""
    get(name)
    if name == "springs":
        return len(physics.get("spring_constants", springs.DEFAULT_SPRING_CONSTANTS))
    return 2
