"""Training throughput, FLOPs and peak memory of NRI train steps (springs 5 shapes).

    python benchmarks/train_throughput.py                 # the three paper models, float32
    python benchmarks/train_throughput.py --compute-dtype float32,bfloat16 --rounds 3
    python benchmarks/train_throughput.py --models mlp+mlp --steps 50 --hidden 128

Each (model, compute dtype) runs in its own subprocess so that its peak resident
memory (the high-water mark of the whole process: Python, jax, XLA compilation,
parameters, optimiser state, activations) is measured alone. The child also
reports its peak RSS after compiling but before the first step (the baseline
that does not depend on run-time buffers; then, as the train loop does, it hands
the compiler's freed heap back, `training.compile_ahead`) and XLA's own memory analysis of the
compiled step (temporaries = activations saved for the backward pass plus
scratch; arguments = train state and data). With `--rounds R` every
configuration runs R times, interleaved, and the best throughput is kept (the
machine is shared: the best run is the least disturbed one). Data is random
with the paper's shapes (B=128, N=5, T=49, D=4): throughput does not depend on
the values.

`--original mlp+mlp=114.7,mlp+rnn=62.9,cnn+mlp=49.7` gives the original PyTorch
code's samples/s measured on this machine right before
(`../shared/bench/original_nri_throughput.sh`, once per model): the ratios are
then printed against those; without it, against NRI_REFERENCE's Zen 4 figures.

So that a figure explains itself on any CPU, each round first measures this CPU's
own ceilings (a plain [100 B, H] x [H, H] product in float32 and bfloat16, the
message MLPs' shape, and an elementwise pass that writes its output), and each
result gives the products' FLOPs executed per sample and the bytes its thunks
read and write (`hlo.executed_work`: loop bodies counted once per trip, the
remat recomputation included), as rates and as fractions of those ceilings,
and the minor page faults per step with the system's share of the CPU time
(XLA allocates a step's temporaries afresh, and their pages fault in again).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hlo import elementwise_bandwidth, executed_work, plain_product_rates  # noqa: E402

MODELS = {"mlp+mlp": ("mlp", "mlp"), "mlp+rnn": ("mlp", "rnn"), "cnn+mlp": ("cnn", "mlp")}
REFERENCE = {"mlp+mlp": 84, "mlp+rnn": 44, "cnn+mlp": 31}  # PyTorch on a 2-core Zen 4; for
# this machine run ../shared/bench/original_nri_throughput.sh beside this benchmark
MB = 2 ** 20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build(model_name: str, compute_dtype: str, batch: int, hidden: int, n_objects: int,
          remat: bool = True, chunk_size: int | None = None, keep_messages: bool = False):
    """The jitted train step of `model_name` at springs shapes, on random data.

    Returns (step, state, split, indices, key): the step and its arguments.
    """
    import jax
    import jax.numpy as jnp

    from nri_jax import configs, training
    from nri_jax import data as data_lib
    from nri_jax.model import NRI

    encoder, decoder = MODELS[model_name]
    config = configs.override(configs.get_preset("springs5"), encoder=encoder, decoder=decoder,
                              encoder_hidden=hidden, decoder_hidden=hidden, batch_size=batch,
                              n_objects=n_objects, compute_dtype=compute_dtype,
                              remat=remat, decoder_chunk_size=chunk_size,
                              remat_keeps_messages=keep_messages)
    key = jax.random.key(0)
    n_edges = n_objects * (n_objects - 1)
    split = data_lib.Split(jax.random.normal(key, (4 * batch, n_objects, 49, 4)),
                           jax.random.randint(key, (4 * batch, n_edges), 0, 2))
    model = NRI(config.model)
    tx = training.make_optimizer(config.train, 100)
    state = training.init_state(key, model, tx, split.features[:batch])
    step = training.make_train_step(model, tx, config)
    return step, state, split, jnp.arange(batch), key


def measure(model_name: str, compute_dtype: str, steps: int, batch: int, hidden: int,
            n_objects: int, remat: bool = True, chunk_size: int | None = None,
            keep_messages: bool = False) -> dict:
    import jax

    from nri_jax import training

    step, state, split, indices, key = build(model_name, compute_dtype, batch, hidden,
                                             n_objects, remat, chunk_size, keep_messages)
    t0 = time.perf_counter()
    step = step.lower(state, split, indices, key).compile()
    compile_s = time.perf_counter() - t0
    rss_compiled = _peak_rss_mb()
    training.release_freed_heap()  # as the train loop does after compiling
    work = executed_work(step.as_text())
    memory = step.memory_analysis()
    state, sums = step(state, split, indices, key)  # warm up
    jax.block_until_ready(sums)
    usage0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(steps):
        state, sums = step(state, split, (indices + i * batch) % len(split.features),
                           jax.random.fold_in(key, i))
    jax.block_until_ready((state, sums))
    seconds, usage = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (usage.ru_utime - usage0.ru_utime) + (usage.ru_stime - usage0.ru_stime)
    return {"model": model_name, "compute_dtype": compute_dtype, "remat": remat,
            "chunk_size": chunk_size, "keep_messages": keep_messages, "batch": batch,
            "hidden": hidden, "steps": steps, "samples_per_s": steps * batch / seconds,
            "gflop_per_sample": work["product_flops"] / batch / 1e9,
            "gb_per_sample": work["bytes"] / batch / 1e9, "compile_s": compile_s,
            "peak_rss_after_compile_mb": rss_compiled, "peak_rss_mb": _peak_rss_mb(),
            "xla_temp_mb": memory.temp_size_in_bytes / MB,
            "xla_argument_mb": memory.argument_size_in_bytes / MB,
            "xla_output_mb": memory.output_size_in_bytes / MB,
            "page_faults_per_step": (usage.ru_minflt - usage0.ru_minflt) / steps,
            "system_cpu_share": (usage.ru_stime - usage0.ru_stime) / max(cpu_s, 1e-9),
            "reference_samples_per_s": REFERENCE[model_name]}


def _run_child(args, name: str, dtype: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name, "--compute-dtype", dtype,
                          "--steps", str(args.steps), "--batch", str(args.batch), "--hidden",
                          str(args.hidden), "--n-objects", str(args.n_objects)]
                         + step_flags(args), check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ceilings(batch: int, hidden: int) -> dict:
    """This CPU's own rates in this run: a plain product at the model's largest shape
    ([100 B, H] x [H, H], the message MLPs' second layers) and an elementwise pass."""
    return {"product_gflop_per_s": plain_product_rates(batch * 100, hidden),
            "elementwise_gb_per_s": elementwise_bandwidth()}


def parse_original(text: str | None) -> dict:
    """'mlp+mlp=114.7,cnn+mlp=49.7' -> {model: samples/s}; None -> {}."""
    original = {}
    for item in filter(None, (text or "").split(",")):
        name, _, value = (part.strip() for part in item.partition("="))
        if name in original:
            raise ValueError(f"--original: {name!r} given twice")
        if name not in MODELS:
            raise ValueError(f"--original: unknown model {name!r} in {item!r}; "
                             f"models: {', '.join(MODELS)}")
        try:
            original[name] = float(value)
        except ValueError:
            original[name] = math.nan
        if not 0 < original[name] < math.inf:
            raise ValueError(f"--original: {item!r} needs a positive samples/s after '='")
    return original


def _print(r: dict, ceiling: dict, original: dict) -> None:
    if r["model"] in original:
        reference = f"the original's {original[r['model']]:g} measured beside this run"
        ratio = r["samples_per_s"] / original[r["model"]]
    else:
        reference = (f"the original's {r['reference_samples_per_s']} on NRI_REFERENCE's "
                     f"Zen 4: run it beside this for this CPU's, --original")
        ratio = r["samples_per_s"] / r["reference_samples_per_s"]
    remat = " remat" if r["remat"] else " no-remat"
    if r.get("chunk_size"):
        remat += f" chunks of {r['chunk_size']}"
    if r.get("keep_messages"):
        remat += " keeping messages"
    gflops, gbs = r["gflop_per_sample"] * r["samples_per_s"], r["gb_per_sample"] * r["samples_per_s"]
    plain = ceiling["product_gflop_per_s"][r["compute_dtype"]]
    print(f"{r['model']:8s} {r['compute_dtype']:8s}{remat} B={r['batch']} H={r['hidden']}: "
          f"{r['samples_per_s']:7.1f} samples/s ({ratio:.2f}x {reference}); products "
          f"{r['gflop_per_sample']:.2f} GFLOP/sample at {gflops:.0f} GFLOP/s ({gflops / plain:.0%} "
          f"of the plain product), thunks move {r['gb_per_sample']:.3f} GB/sample at "
          f"{gbs:.1f} GB/s ({gbs / ceiling['elementwise_gb_per_s']:.0%} of an elementwise "
          f"pass); peak RSS {r['peak_rss_mb']:.0f} MB ({r['peak_rss_after_compile_mb']:.0f} MB "
          f"after compiling; XLA temp {r['xla_temp_mb']:.0f} MB, args "
          f"{r['xla_argument_mb']:.0f} MB); {r['page_faults_per_step']:.0f} page faults/step, "
          f"system time {r['system_cpu_share']:.0%} of CPU time", flush=True)


def _print_ceiling(c: dict, batch: int, hidden: int) -> None:
    rates = c["product_gflop_per_s"]
    print(f"this CPU now: [{100 * batch}, {hidden}] x [{hidden}, {hidden}] product "
          f"{rates['float32']:.0f} GFLOP/s float32, {rates['bfloat16']:.0f} bfloat16; "
          f"elementwise pass {c['elementwise_gb_per_s']:.1f} GB/s", flush=True)


def step_arguments(doc: str, steps: int) -> argparse.ArgumentParser:
    """The command-line options shared by the train-step benchmarks."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--compute-dtype", default="float32",
                        help="comma-separated: float32, bfloat16")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--remat", action=argparse.BooleanOptionalAction, default=True,
                        help="recompute decoder activations in the backward pass (the "
                             "model's default; --no-remat stores them)")
    parser.add_argument("--decoder-chunk-size", dest="chunk_size", type=int, default=None,
                        help="decode the batch in chunks of this many examples (default: "
                             "the whole batch)")
    parser.add_argument("--remat-keeps-messages", dest="keep_messages", action="store_true",
                        help="remat keeps the message products (ModelConfig."
                             "remat_keeps_messages)")
    parser.add_argument("--json", default=None, help="also write every run to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser


def step_flags(args: argparse.Namespace) -> list[str]:
    """The model options of `step_arguments` as a child process's flags."""
    return (["--remat" if args.remat else "--no-remat"]
            + ([] if args.chunk_size is None else ["--decoder-chunk-size", str(args.chunk_size)])
            + (["--remat-keeps-messages"] if args.keep_messages else []))


def main() -> None:
    parser = step_arguments(__doc__, steps=20)
    parser.add_argument("--rounds", type=int, default=1, help="repeats; the best is kept")
    parser.add_argument("--n-objects", type=int, default=5)
    parser.add_argument("--original", default=None,
                        help="the original's samples/s measured beside this run, e.g. "
                             "mlp+mlp=114.7,mlp+rnn=62.9,cnn+mlp=49.7")
    args = parser.parse_args()
    try:
        original = parse_original(args.original)
    except ValueError as error:
        parser.error(str(error))
    if args.child:
        print(json.dumps(measure(args.child, args.compute_dtype, args.steps, args.batch,
                                 args.hidden, args.n_objects, args.remat, args.chunk_size,
                                 args.keep_messages)))
        return
    configurations = [(m, d) for m in args.models.split(",")
                      for d in args.compute_dtype.split(",")]
    runs, measured = [], []
    for round_ in range(args.rounds):
        measured.append(ceilings(args.batch, args.hidden))
        _print_ceiling(measured[-1], args.batch, args.hidden)
        for name, dtype in configurations:
            runs.append(_run_child(args, name, dtype))
            print(f"round {round_ + 1}: ", end="")
            _print(runs[-1], measured[-1], original)
    # The best of the rounds' ceilings, against the best of the rounds' throughputs.
    best_ceiling = {
        "product_gflop_per_s": {d: max(c["product_gflop_per_s"][d] for c in measured)
                                for d in ("float32", "bfloat16")},
        "elementwise_gb_per_s": max(c["elementwise_gb_per_s"] for c in measured)}
    print("best of", args.rounds, "round(s):")
    _print_ceiling(best_ceiling, args.batch, args.hidden)
    for name, dtype in configurations:
        mine = [r for r in runs if (r["model"], r["compute_dtype"]) == (name, dtype)]
        best = max(mine, key=lambda r: r["samples_per_s"])
        _print({**best, "peak_rss_mb": max(r["peak_rss_mb"] for r in mine)}, best_ceiling,
               original)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "ceilings": measured, "original": original}, f, indent=1)


if __name__ == "__main__":
    main()
