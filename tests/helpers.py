"""Helpers shared by the model tests."""

import jax
import jax.numpy as jnp
import numpy as np

from nri_jax import configs, experiment
from nri_jax import data as data_lib


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


def small_springs_splits(data_dir) -> tuple:
    """(train, valid) `data.Split`s of a 1024/256/256 springs-5 dataset in `data_dir`: the
    size the supervised learning checks share (the same simulator programs, compiled once
    per session through the tests' compilation cache)."""
    data = configs.DataConfig(n_train=1024, n_valid=256, n_test=256, data_dir=str(data_dir))
    dataset, _ = experiment.load_data(data)
    split = lambda s: data_lib.Split(jnp.asarray(np.asarray(s.features[:])),  # noqa: E731
                                     jnp.asarray(np.asarray(s.labels[:])))
    return split(dataset.train), split(dataset.valid)
