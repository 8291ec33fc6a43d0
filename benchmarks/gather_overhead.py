"""Cost of the sharded batch gather on one device against a plain `jnp.take`.

    python benchmarks/gather_overhead.py [--rounds 3] [--steps 6]

The data-parallel train step gathers each batch from example-sharded splits
with a masked local lookup and a reduce-scatter (`nri_jax.data.gather`). On a
one-device mesh that machinery has nothing to do; this times the quick
preset's train step (springs 5 shapes, batch 128) with `mesh=None` (plain
gather) and with a one-device mesh, on the same state and batches, interleaved
rounds in one process, and prints the best time per step of each and the ratio.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from nri_jax import configs, training
from nri_jax import data as data_lib
from nri_jax.model import NRI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    config, batch = configs.get_preset("quick"), 128
    rng = np.random.default_rng(0)
    features = rng.normal(size=(args.steps * batch, 5, 49, 4)).astype(np.float32)
    labels = rng.integers(0, 2, size=(args.steps * batch, 20)).astype(np.int32)
    model = NRI(config.model)
    tx = training.make_optimizer(config.train, args.steps)
    state = training.init_state(jax.random.key(0), model, tx, features[:1])
    mesh = data_lib.make_mesh(1)
    variants = {
        "plain take": (training.make_train_step(model, tx, config),
                       data_lib.Split(jnp.asarray(features), jnp.asarray(labels))),
        "sharded gather, 1 device": (training.make_train_step(model, tx, config, mesh),
                                     data_lib.put_split(features, labels, mesh)),
    }
    best = {name: float("inf") for name in variants}
    for _ in range(args.rounds + 1):  # the first round compiles
        for name, (step, split) in variants.items():
            s, t0 = state, time.perf_counter()
            for i in range(args.steps):
                s, _ = step(s, split, jnp.arange(i * batch, (i + 1) * batch), jax.random.key(i))
            jax.block_until_ready(s)
            best[name] = min(best[name], (time.perf_counter() - t0) / args.steps)
    for name, seconds in best.items():
        print(f"{name:>26}: {seconds * 1e3:.0f} ms per step")
    plain, sharded = best.values()
    print(f"ratio sharded / plain: {sharded / plain:.3f}")


if __name__ == "__main__":
    main()
