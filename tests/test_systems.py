"""The system registry: names, defaults, edge-type labels."""

import inspect

import jax.numpy as jnp
import numpy as np
import pytest

from simulators import charged, kuramoto, springs, systems


def test_registry_maps_names_to_modules():
    assert systems.names() == ("springs", "charged", "kuramoto")
    for name, module in (("springs", springs), ("charged", charged), ("kuramoto", kuramoto)):
        system = systems.get(name)
        assert system.module is module and system.trajectories is module.trajectories
        assert system.feature_dim == 4
        assert [systems.default_n_frames(name, s) for s in systems.SPLITS] == [49, 49, 99]


def test_physics_defaults_are_keyword_only_with_concrete_values():
    # The dataset builder reads the physics settings from these signatures.
    for name in systems.names():
        parameters = inspect.signature(systems.get(name).trajectories).parameters.values()
        keywords = [p for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
        assert {"n_objects", "n_frames", "sample_every", "dt"} <= {p.name for p in keywords}
        for p in keywords:
            if p.name not in ("n_objects", "n_frames"):
                assert p.default is not inspect.Parameter.empty and p.default is not None


def test_edge_type_labels():
    charge_signs = np.array([[1, -1], [-1, 1]])
    np.testing.assert_array_equal(systems.edge_type_labels("charged", charge_signs),
                                  [[1, 0], [0, 1]])
    np.testing.assert_array_equal(systems.edge_type_labels("charged", jnp.asarray(charge_signs)),
                                  [[1, 0], [0, 1]])
    types = np.array([[0, 2], [2, 0]])
    np.testing.assert_array_equal(systems.edge_type_labels("springs", types), types)
    assert systems.edge_type_labels("kuramoto", types.astype(np.float32)).dtype == np.int32


def test_number_of_edge_types():
    assert systems.n_edge_types("springs") == 2
    assert systems.n_edge_types("springs", spring_constants=(0.0, 0.1, 1.0)) == 3
    assert systems.n_edge_types("charged") == systems.n_edge_types("kuramoto") == 2


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="'gravity'"):
        systems.get("gravity")
    with pytest.raises(ValueError, match="'training'"):
        systems.default_n_frames("springs", "training")
