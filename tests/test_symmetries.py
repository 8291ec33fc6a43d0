"""Symmetries: a transformed trajectory is a trajectory of the same system, transformed graph."""

import jax
import numpy as np
import pytest

from simulators import charged, datasets, springs, symmetries

N, STEPS, EVERY = 4, 3000, 100  # 30 frames of the box at +-5


def _physical(x, v):
    """Simulator output ([T, N, 2] twice) -> model layout [1, N, T, 4]."""
    return np.concatenate([np.asarray(x), np.asarray(v)], -1).transpose(1, 0, 2)[None]


def _initial(system, seed):
    rng = np.random.default_rng(seed)
    x0 = rng.normal(scale=3.0, size=(N, 2))  # wide and fast enough that the walls take part
    v0 = rng.normal(scale=3.0, size=(N, 2))
    if system == "springs":
        upper = np.triu(rng.integers(0, 2, (N, N)), 1)
        return x0, v0, upper + upper.T, springs.simulate
    q = rng.choice([-1, 1], N)
    return x0, v0, np.outer(q, q) * (1 - np.eye(N, dtype=int)), charged.simulate


@pytest.mark.parametrize("system", ["springs", "charged"])
@pytest.mark.parametrize("element", range(8))
def test_transformed_trajectory_is_the_simulation_of_the_transformed_system(x64, system,
                                                                           element):
    x0, v0, graph, simulate = _initial(system, element)
    perm = np.random.default_rng(10 + element).permutation(N)
    matrix = symmetries.DIHEDRAL[element]
    trajectory = _physical(*simulate(x0, v0, graph, n_steps=STEPS, sample_every=EVERY))
    assert np.abs(trajectory[..., :2]).max() > 4  # the walls take part
    labels = datasets.edge_labels(graph)[None]
    moved, moved_labels = symmetries.apply(trajectory, labels, perm[None], np.array([element]))
    # The same system from the transformed initial state with the relabelled graph.
    expected = _physical(*simulate(x0[perm] @ matrix.T, v0[perm] @ matrix.T,
                                   graph[perm][:, perm], n_steps=STEPS, sample_every=EVERY))
    # float64: only the order of the force sums changes (relabelling), ~1e-16 per step,
    # amplified over 3000 steps by the dynamics; a wrong sign or axis is O(1).
    np.testing.assert_allclose(moved, expected, rtol=0, atol=1e-12)  # seen: <= 7e-15
    np.testing.assert_array_equal(moved_labels, datasets.edge_labels(graph[perm][:, perm])[None])


def test_rotations_alone_are_exact_and_the_group_has_eight_elements():
    """Quarter turns and reflections only swap and negate: bitwise the same simulation."""
    x0, v0, graph, simulate = _initial("springs", 3)
    trajectory = _physical(*simulate(x0, v0, graph, n_steps=STEPS, sample_every=EVERY))
    labels = datasets.edge_labels(graph)[None]
    identity = np.arange(N)[None]
    for element, matrix in enumerate(symmetries.DIHEDRAL):
        moved, _ = symmetries.apply(trajectory, labels, identity, np.array([element]))
        expected = _physical(*simulate(x0 @ matrix.T, v0 @ matrix.T, graph, n_steps=STEPS,
                                       sample_every=EVERY))
        np.testing.assert_array_equal(moved, expected)
    flat = {m.tobytes() for m in symmetries.DIHEDRAL}
    assert len(flat) == 8
    for a in symmetries.DIHEDRAL:  # closed under composition, orthogonal
        np.testing.assert_array_equal(a @ a.T, np.eye(2))
        for b in symmetries.DIHEDRAL:
            assert (a @ b).tobytes() in flat


def test_augment_split_applies_the_drawn_symmetry_to_each_example():
    rng = np.random.default_rng(4)
    stats = datasets.NormStats(-4.0, 6.0, -1.0, 2.0)  # not centred: the affine map matters
    physical = rng.normal(size=(6, N, 5, 4))
    graphs = rng.integers(0, 2, (6, N, N)) * (1 - np.eye(N, dtype=int))
    split = datasets.Split(datasets.normalise(physical, stats).astype(np.float32),
                           datasets.edge_labels(graphs).astype(np.int32))
    key = jax.random.key(7)
    out = symmetries.augment_split(split, key, system="springs", stats=stats)
    perms, elements = symmetries.draw(key, 6, N, rotations=True)
    assert len(set(elements.tolist())) > 1
    for s in range(6):  # per example, by explicit loops
        matrix = symmetries.DIHEDRAL[elements[s]]
        source = datasets.denormalise(np.asarray(split.features[s], np.float64), stats)
        expected = np.stack([np.concatenate([source[perms[s, k], :, :2] @ matrix.T,
                                             source[perms[s, k], :, 2:] @ matrix.T], -1)
                             for k in range(N)])
        np.testing.assert_allclose(out.features[s], datasets.normalise(expected, stats),
                                   rtol=0, atol=1e-6)  # float32 storage of O(1) values
        graph = graphs[s][perms[s]][:, perms[s]]
        np.testing.assert_array_equal(out.labels[s], datasets.edge_labels(graph))
    again = symmetries.augment_split(split, key, system="springs", stats=stats)
    np.testing.assert_array_equal(again.features, out.features)
    kuramoto = symmetries.augment_split(split, key, system="kuramoto", stats=None)
    perms, _ = symmetries.draw(key, 6, N, rotations=False)
    np.testing.assert_array_equal(kuramoto.features,
                                  np.take_along_axis(split.features, perms[:, :, None, None], 1))
