"""Where a train step's time goes: XLA's per-op CPU profile, grouped by kind of work.

    python benchmarks/profile_step.py                         # MLP+MLP, MLP+RNN, CNN+MLP, float32
    python benchmarks/profile_step.py --models mlp+mlp --compute-dtype bfloat16 --steps 3

Each model runs in its own subprocess: the step is compiled, run untimed twice, timed
over `--steps` steps, then run `--steps` more times under `jax.profiler.trace` with
`--xla_cpu_enable_xprof_traceme`, which records every XLA thunk (one fusion, product,
gather, ... of the optimised HLO) with its duration. Each thunk is matched with its
instruction in the compiled module's HLO text and classified from its opcode, the
computation it calls and its source `op_name` (`transpose(jvp(...))` marks the backward
pass): forward / backward products, gathers, scatters, BatchNorm, dtype conversions,
layout copies, scan bookkeeping (slices of the stacked per-step buffers, their zero
fill), and the remaining elementwise work and reductions. For each class the table
gives the time per step, the FLOPs (products: 2 x output size x contracted size) and the
bytes each thunk reads and writes (operands + result, counted once per execution).
XLA runs independent thunks on different threads at once, so the table gives both each
class's share of the wall time (an instant shared equally among the thunks running then)
and its summed op durations.
Random data with springs shapes (B=128, N=5, T=49, D=4), as `train_throughput.py`.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hlo import (CONTAINERS, called_instructions, parse_hlo, plain_product_rates,  # noqa: E402
                 product_flops, thunk_bytes)
from train_throughput import build, step_arguments, step_flags  # noqa: E402

CLASSES = ("forward products", "backward products", "gathers", "scatters", "BatchNorm",
           "conversions", "layout copies", "scan bookkeeping", "elementwise + reductions")


def classify(inst: dict, instructions: dict, computations: dict) -> tuple[str, float]:
    """(class, FLOPs) of one executed thunk."""
    inner = called_instructions(inst, instructions, computations)
    opcodes = {i["opcode"] for i in inner} - {"parameter", "bitcast", "constant", "tuple",
                                               "get-tuple-element"}
    products = [i for i in inner if i["opcode"] in ("dot", "convolution")]
    if products:
        side = "backward" if "transpose(" in inst["op_name"] else "forward"
        return f"{side} products", sum(product_flops(i, instructions) for i in products)
    if "scatter" in opcodes:
        return "scatters", 0.0
    if "gather" in opcodes:
        return "gathers", 0.0
    if opcodes & {"dynamic-update-slice", "dynamic-slice"} or opcodes <= {"broadcast"}:
        return "scan bookkeeping", 0.0
    if "batch_norm" in inst["op_name"]:
        return "BatchNorm", 0.0
    if opcodes <= {"convert", "copy", "transpose"} and "convert" in opcodes:
        return "conversions", 0.0
    if opcodes <= {"copy", "transpose", "reshape"}:
        return "layout copies", 0.0
    return "elementwise + reductions", 0.0


def trace_events(trace_dir: str) -> list[tuple[str, float, float]]:
    """Every complete event of the trace's JSON as (name, start, duration), microseconds."""
    (path,) = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz"))
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    return [(e["name"], e["ts"], e.get("dur", 0.0)) for e in events if e.get("ph") == "X"]


def until_their_end(events: list[tuple[str, float, float]],
                    asynchronous: set[str]) -> list[tuple[str, float, float]]:
    """The events with each asynchronous thunk lasting until its completion.

    An unfused `dot` or `convolution` runs asynchronously on XLA's CPU runtime
    (in Eigen's thread pool): its event spans only the launch, and an
    "end: <name>" event marks the completion; without the pairing its run time
    would count as time with no thunk running. Each end event of a name in
    `asynchronous` extends the latest launch of that name. (Other thunks have
    end events too, but theirs come when the executor gets round to them.)
    """
    out, launched = [], {}
    for name, start, duration in sorted(events, key=lambda e: e[1]):
        if name.startswith("end: ") and name[5:] in launched:
            i = launched.pop(name[5:])
            out[i] = (out[i][0], out[i][1], max(out[i][2], start + duration - out[i][1]))
            continue
        if name in asynchronous:
            launched[name] = len(out)
        out.append((name, start, duration))
    return out


def shared_wall_time(intervals: list[tuple[str, float, float]]) -> dict[str, float]:
    """Wall time per key, an instant shared equally among the thunks running then.

    XLA's CPU runtime runs independent thunks on different threads at once (the two
    edge types' products, say), so summed durations count some instants twice;
    these shares add up to the time at least one thunk was running.
    """
    edges = sorted([(start, 1, key) for key, start, _ in intervals]
                   + [(start + dur, -1, key) for key, start, dur in intervals])
    shares, active, last = collections.defaultdict(float), collections.Counter(), None
    for time_, change, key in edges:
        running = sum(active.values())
        if running and last is not None:
            for k, n in active.items():
                shares[k] += (time_ - last) * n / running
        active[key] += change
        if not active[key]:
            del active[key]
        last = time_
    return shares


def _timed_steps(compiled, state, split, indices, key, steps: int) -> tuple[object, float]:
    """Runs `steps` steps; returns the new state and the seconds per step."""
    import jax

    t0 = time.perf_counter()
    for i in range(steps):
        state, sums = compiled(state, split, indices, jax.random.fold_in(key, i))
    jax.block_until_ready(sums)
    return state, (time.perf_counter() - t0) / steps


def tabulate(events: list, instructions: dict, computations: dict, steps: int):
    """Per-class totals per step and the per-thunk rows, from the thunks' trace events."""
    durations = collections.defaultdict(lambda: [0, 0.0])
    for name, _, us in events:
        durations[name][0] += 1
        durations[name][1] += us
    kinds = {name: classify(instructions[name], instructions, computations)
             for name in durations}
    wall = shared_wall_time([(kinds[name][0], start, us) for name, start, us in events])
    table = {c: {"ms": 0.0, "wall_ms": wall.get(c, 0.0) / 1e3 / steps, "gflop": 0.0,
                 "mb": 0.0, "thunks": 0} for c in CLASSES}
    ops = []
    for name, (count, us) in durations.items():
        inst, (kind, flops) = instructions[name], kinds[name]
        row = table[kind]
        row["ms"] += us / 1e3 / steps
        row["gflop"] += flops * count / steps / 1e9
        row["mb"] += thunk_bytes(inst, instructions, computations) * count / steps / 2 ** 20
        row["thunks"] += 1
        ops.append({"name": name, "class": kind, "ms": us / 1e3 / steps, "calls": count / steps,
                    "shape": inst["type"][:60], "op_name": inst["op_name"][-90:]})
    return table, sorted(ops, key=lambda o: -o["ms"])


def profile(model_name: str, compute_dtype: str, steps: int, batch: int, hidden: int,
            remat: bool, top: int, chunk_size: int | None = None,
            keep_messages: bool = False) -> dict:
    import jax

    step, state, split, indices, key = build(model_name, compute_dtype, batch, hidden, 5, remat,
                                             chunk_size, keep_messages)
    compiled = step.lower(state, split, indices, key).compile()
    instructions, computations = parse_hlo(compiled.as_text())
    state, _ = _timed_steps(compiled, state, split, indices, key, 2)  # warm up
    state, step_s = _timed_steps(compiled, state, split, indices, key, steps)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            state, traced_step_s = _timed_steps(compiled, state, split, indices, key, steps)
        # Executor and Python events are not instructions of the module; a loop's or a
        # branch's own event spans the thunks of its body, which are counted instead.
        asynchronous = {name for name, inst in instructions.items()
                        if inst["opcode"] in ("dot", "convolution")}
        events = [e for e in until_their_end(trace_events(trace_dir), asynchronous)
                  if e[0] in instructions and instructions[e[0]]["opcode"] not in CONTAINERS]
    table, ops = tabulate(events, instructions, computations, steps)
    return {"model": model_name, "compute_dtype": compute_dtype, "batch": batch,
            "hidden": hidden, "remat": remat, "step_ms": step_s * 1e3,
            "traced_step_ms": traced_step_s * 1e3, "samples_per_s": batch / step_s,
            "plain_product_gflop_per_s": plain_product_rates(batch * 100, hidden),
            "classes": table, "top_ops": ops[:top]}


def _print(r: dict) -> None:
    total = sum(row["ms"] for row in r["classes"].values())
    busy = sum(row["wall_ms"] for row in r["classes"].values())
    print(f"\n{r['model']} {r['compute_dtype']}{' remat' if r['remat'] else ' no-remat'} "
          f"B={r['batch']} H={r['hidden']}: {r['step_ms']:.0f} ms/step "
          f"({r['samples_per_s']:.1f} samples/s); traced {r['traced_step_ms']:.0f} ms/step, "
          f"{busy:.0f} ms of it running thunks, whose durations sum to {total:.0f} ms")
    rates = r["plain_product_gflop_per_s"]
    print(f"plain [{r['batch'] * 100}, {r['hidden']}] x [{r['hidden']}, {r['hidden']}] product "
          f"in this run: float32 {rates['float32']:.0f} GFLOP/s, "
          f"bfloat16 {rates['bfloat16']:.0f} GFLOP/s")
    print("| class | wall ms/step | share | op ms/step | GFLOP/step | GFLOP/wall-s "
          "| MB moved/step | GB/wall-s |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in CLASSES:
        row = r["classes"][kind]
        if not row["thunks"]:
            continue
        seconds = row["wall_ms"] / 1e3
        rate = f"{row['gflop'] / seconds:.0f}" if row["gflop"] else ""
        print(f"| {kind} | {row['wall_ms']:.1f} | {row['wall_ms'] / r['traced_step_ms']:.0%} | "
              f"{row['ms']:.1f} | {row['gflop']:.2f} | {rate} | {row['mb']:.0f} | "
              f"{row['mb'] / 1024 / seconds:.1f} |")
    idle = r["traced_step_ms"] - busy
    print(f"| no thunk running (Python, dispatch) | {idle:.1f} | "
          f"{idle / r['traced_step_ms']:.0%} | | | | | |")
    print("top ops (op ms/step: summed durations):")
    for o in r["top_ops"]:
        print(f"  {o['ms']:7.1f} ms x{o['calls']:g} {o['class']:24s} {o['name']:40s} "
              f"{o['shape']}  {o['op_name']}")


def main() -> None:
    parser = step_arguments(__doc__, steps=3)
    parser.add_argument("--top", type=int, default=12, help="list this many slowest thunks")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(profile(args.child, args.compute_dtype, args.steps, args.batch,
                                 args.hidden, args.remat, args.top, args.chunk_size,
                                 args.keep_messages)))
        return
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                                       + " --xla_cpu_enable_xprof_traceme=true").strip()}
    results = []
    for name in args.models.split(","):
        for dtype in args.compute_dtype.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--child", name, "--compute-dtype", dtype,
                 "--steps", str(args.steps), "--batch", str(args.batch), "--hidden",
                 str(args.hidden), "--top", str(args.top)] + step_flags(args),
                check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            _print(results[-1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
