"""Train-step throughput of several settings compiled side by side in one process.

    python benchmarks/variants.py --models mlp+mlp --compute-dtype bfloat16 \
        --variant segment:dense=0 --variant dense --variant c32:decoder_chunk_size=32

Each `--variant NAME[:FIELD=VALUE,...]` overrides config fields of the springs-5 paper
preset (as `train.py` flags do, e.g. `decoder_chunk_size=32`); the pseudo-field
`dense=0` makes the model take the general gather / segment-sum path on the fully
connected graph (`graphs.DENSE_MAX_OBJECTS = 0` while that variant is traced). All
variants of a model are compiled first, then timed in turn, `--steps` steps each, for
`--rounds` interleaved rounds; the best round is kept. In one process and interleaved,
the ratios between variants are the figure to read on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_throughput import MODELS  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict]:
    """'name:field=value,field=value' -> (name, {field: value}) with ints/floats parsed."""
    name, _, rest = text.partition(":")
    fields = {}
    for item in filter(None, rest.split(",")):
        field, _, value = item.partition("=")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        fields[field] = value
    return name, fields


def compile_step(model_name: str, compute_dtype: str, batch: int, hidden: int, fields: dict):
    import jax
    import jax.numpy as jnp

    from nri_jax import configs, graphs, training
    from nri_jax import data as data_lib
    from nri_jax.model import NRI

    fields = dict(fields)
    dense_limit = graphs.DENSE_MAX_OBJECTS
    graphs.DENSE_MAX_OBJECTS = dense_limit if fields.pop("dense", 1) else 0
    try:
        encoder, decoder = MODELS[model_name]
        config = configs.override(configs.get_preset("springs5"), encoder=encoder,
                                  decoder=decoder, encoder_hidden=hidden, decoder_hidden=hidden,
                                  batch_size=batch, compute_dtype=compute_dtype, **fields)
        key = jax.random.key(0)
        split = data_lib.Split(jax.random.normal(key, (4 * batch, 5, 49, 4)),
                               jax.random.randint(key, (4 * batch, 20), 0, 2))
        model = NRI(config.model)
        tx = training.make_optimizer(config.train, 100)
        state = training.init_state(key, model, tx, split.features[:batch])
        indices = jnp.arange(batch)
        step = training.make_train_step(model, tx, config).lower(state, split, indices,
                                                                 key).compile()
    finally:
        graphs.DENSE_MAX_OBJECTS = dense_limit
    return step, state, split, indices, key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp+mlp")
    parser.add_argument("--compute-dtype", default="bfloat16")
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import jax

    variants = dict(parse_variant(v) for v in args.variant)
    for model_name in args.models.split(","):
        compiled = {name: compile_step(model_name, args.compute_dtype, args.batch,
                                       args.hidden, fields) for name, fields in variants.items()}
        best = dict.fromkeys(compiled, 0.0)
        for _ in range(args.rounds):
            for name, (step, state, split, indices, key) in compiled.items():
                state, sums = step(state, split, indices, key)  # untimed: warm caches
                jax.block_until_ready(sums)
                t0 = time.perf_counter()
                for i in range(args.steps):
                    state, sums = step(state, split, indices, jax.random.fold_in(key, i))
                jax.block_until_ready(sums)
                best[name] = max(best[name], args.steps * args.batch / (time.perf_counter() - t0))
        first = next(iter(best.values()))
        print(f"{model_name} {args.compute_dtype} B={args.batch} H={args.hidden}, samples/s "
              f"(best of {args.rounds} rounds; ratio to the first variant): " + ", ".join(
                  f"{name} {value:.1f} ({value / first:.2f}x)" for name, value in best.items()),
              flush=True)


if __name__ == "__main__":
    main()
