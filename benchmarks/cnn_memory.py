"""XLA temporaries of the CNN+MLP train step, as it is and with the CNN encoder rematerialised.

    python benchmarks/cnn_memory.py [--compute-dtype bfloat16]

Both steps are compiled (not run) at springs-5 shapes, batch 128, hidden 256; the figure is
XLA's `memory_analysis()` of each, which does not depend on the machine's load. The
rematerialised variant wraps `encoders.TemporalCNN` in `nn.remat` (nothing saveable) while
its step is traced (BENCHMARKS.md, "The CNN encoder's memory").
"""

from __future__ import annotations

import argparse
import os
import sys

import flax.linen as nn
import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_throughput import MB, build  # noqa: E402

from nri_jax import encoders  # noqa: E402


def temporaries_mb(compute_dtype: str) -> float:
    """XLA's temporary bytes (MB) of the compiled CNN+MLP train step."""
    step, state, split, indices, key = build("cnn+mlp", compute_dtype, 128, 256, 5)
    return step.lower(state, split, indices, key).compile().memory_analysis() \
        .temp_size_in_bytes / MB


def rematerialised(cnn: type) -> type:
    """`cnn` (a TemporalCNN class) whose forward is recomputed in the backward pass."""

    class RematCNN(cnn):
        @nn.compact
        def __call__(self, x, *, train):
            inner = nn.remat(lambda module, x: cnn(self.hidden, self.dropout,
                                                   self.compute_dtype, name="inner")(
                x, train=train), policy=jax.checkpoint_policies.nothing_saveable)
            return inner(self, x)

    return RematCNN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compute-dtype", default="bfloat16")
    args = parser.parse_args()
    print(f"as it is: XLA temporaries {temporaries_mb(args.compute_dtype):.0f} MB")
    plain, encoders.TemporalCNN = encoders.TemporalCNN, rematerialised(encoders.TemporalCNN)
    try:
        print(f"TemporalCNN rematerialised: {temporaries_mb(args.compute_dtype):.0f} MB")
    finally:
        encoders.TemporalCNN = plain


if __name__ == "__main__":
    main()
