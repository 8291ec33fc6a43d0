"""Strict JAX settings for the whole test suite."""

import jax
import pytest

# Silent broadcasting of mismatched ranks hides shape bugs: make it an error.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Runs a test with float64 enabled, restoring the default afterwards."""
    with jax.enable_x64(True):
        yield
