"""Helpers shared by the model tests."""

import jax
import numpy as np


def numpy_variables(module, *args, seed=0, **kwargs):
    """Random variables for `module` drawn with NumPy (no compiled initialisers: fast tests).

    Kernels N(0, 1/fan_in), biases N(0, 0.01), BatchNorm scale ~1, running mean 0, var 1.
    """
    rng = np.random.default_rng(seed)
    key = jax.random.key(0)
    shapes = jax.eval_shape(lambda: module.init(
        {"params": key, "gumbel": key, "dropout": key}, *args, **kwargs))

    def draw(path, leaf):
        name = path[-1].key
        if name in ("mean", "var"):
            return np.full(leaf.shape, float(name == "var"), leaf.dtype)
        if name == "scale":
            return (1 + 0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)
        if name.endswith("bias"):
            return (0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)
        return (rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[-2])).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)
