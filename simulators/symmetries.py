"""Exact symmetries of the simulated systems, for data augmentation.

Each maps a trajectory of a system to another trajectory of the same system with the
correspondingly transformed interaction graph, so a transformed training example is as
valid as a simulated one:

* relabelling the objects (every system): object k of the new trajectory is object
  ``perm[k]`` of the old one, and the edge (r <- s) of the new graph is the old edge
  (perm[r] <- perm[s]);
* the square box's 8 rotations by quarter turns and reflections (springs and charged):
  the walls at +-box_size, the isotropic initial distributions, the component-wise force
  clip, the reflections at the walls and the integrator are all invariant under them, and
  they act on positions and velocities alike.

(Kuramoto's common phase shift is a symmetry of its dynamics, but its stored features hold
sin(phi) without cos(phi), so it cannot be applied to stored trajectories.)

Arrays are in the model layout: features ``[S, N, T, 4]`` = (x, y, vx, vy) in physical
units, labels ``[S, E]`` in the fully connected edge order (`datasets.edge_labels`).
"""

from __future__ import annotations

import jax
import numpy as np

from simulators import datasets

# The dihedral group of the square: rotations by 0, 90, 180, 270 degrees, then the same
# after the reflection x -> -x. Integer matrices: applying one only swaps and negates.
_ROTATIONS = [np.array([[1, 0], [0, 1]]), np.array([[0, -1], [1, 0]]),
              np.array([[-1, 0], [0, -1]]), np.array([[0, 1], [-1, 0]])]
DIHEDRAL = np.stack(_ROTATIONS + [r @ np.array([[-1, 0], [0, 1]]) for r in _ROTATIONS])
ROTATING_SYSTEMS = ("springs", "charged")


def draw(key: jax.Array, n_examples: int, n_objects: int, *, rotations: bool
         ) -> tuple[np.ndarray, np.ndarray]:
    """One random symmetry per example: object permutations ``[S, N]`` and indices ``[S]``
    into `DIHEDRAL` (all 0, the identity, unless `rotations`)."""
    perm_key, dihedral_key = jax.random.split(key)
    keys = jax.random.split(perm_key, n_examples)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n_objects))(keys)
    elements = (jax.random.randint(dihedral_key, (n_examples,), 0, len(DIHEDRAL)) if rotations
                else np.zeros(n_examples, np.int32))
    return np.asarray(perms), np.asarray(elements)


def apply(features: np.ndarray, labels: np.ndarray, perms: np.ndarray, elements: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Applies per-example symmetries to physical features ``[S, N, T, 4]`` and labels
    ``[S, E]``: relabel the objects by `perms` ``[S, N]``, then rotate or reflect positions
    and velocities by ``DIHEDRAL[elements]``."""
    n_objects = features.shape[1]
    if perms.shape != features.shape[:2] or labels.shape[0] != features.shape[0]:
        raise ValueError(f"perms must be [S, N] = {features.shape[:2]} and labels [S, E] for "
                         f"features {features.shape}, got {perms.shape} and {labels.shape}")
    moved = np.take_along_axis(features, perms[:, :, None, None], axis=1)
    matrices = DIHEDRAL[elements].astype(features.dtype)  # [S, 2, 2]
    out = np.concatenate([np.einsum("sij,sntj->snti", matrices, moved[..., dims])
                          for dims in (slice(0, 2), slice(2, 4))], axis=-1)
    graph = datasets.edges_to_matrix(labels, n_objects)  # [S, N, N]
    graph = np.take_along_axis(graph, perms[:, :, None], axis=1)
    graph = np.take_along_axis(graph, perms[:, None, :], axis=2)
    return out, datasets.edge_labels(graph)


def augment_split(split: datasets.Split, key: jax.Array, *, system: str,
                  stats: datasets.NormStats | None) -> datasets.Split:
    """A randomly transformed copy of a split in model layout (normalised with `stats`).

    Every trajectory gets its own symmetry from `key`: a relabelling of its objects and, for
    springs and charged, one of the box's 8 rotations and reflections (applied in physical
    units, then normalised again with the same `stats`).
    """
    features, labels = np.asarray(split.features, np.float64), np.asarray(split.labels)
    rotations = system in ROTATING_SYSTEMS
    perms, elements = draw(key, len(features), features.shape[1], rotations=rotations)
    physical = datasets.denormalise(features, stats) if rotations else features
    physical, labels = apply(physical, labels, perms, elements)
    out = datasets.normalise(physical, stats) if rotations else physical
    return datasets.Split(out.astype(np.float32), labels.astype(np.int32))
