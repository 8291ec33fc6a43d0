"""Training throughput against the number of data-parallel devices.

    python benchmarks/scaling.py                          # 1, 2, 4 forced CPU devices
    python benchmarks/scaling.py --devices 1,2 --steps 5 --rounds 1   # a quick check
    python benchmarks/scaling.py --weak --batch 64        # batch = 64 x devices
    python benchmarks/scaling.py --platform gpu           # 1 .. all real GPUs

Each device count runs in its own subprocess. On CPU the child is given K host
devices with `--xla_force_host_platform_device_count=K`; they are K views of the
same cores, so this measures the cost of the sharded step (batch split over the
`data` axis, the gather's reduce-scatter, the gradient all-reduce, BatchNorm
statistics over the global batch) rather than extra compute. With
`--platform gpu` the child sees the real accelerators and uses the first K
(`make_mesh(K)`).

The child builds the train step exactly as `train_and_evaluate` does
(`make_mesh`, `put_split`, `shuffled_batches`, `make_train_step(..., mesh)`,
state replicated over the mesh), runs one step to compile it, then times
`--steps` steps and blocks on the result: steady-state samples/s, compilation
excluded. Data is random with the paper's springs shapes (N=5, T=49, D=4):
throughput does not depend on the values. The model defaults to the quick
preset's (hidden 128, `skip_first`, decoder remat) in float32.

Strong scaling (default): the global batch is fixed and split over K devices.
Weak scaling (`--weak`): `--batch` is per device and the global batch is
`--batch` x K. In both cases speed-up = samples/s(K) / samples/s(1) and
efficiency = speed-up / K (for weak scaling that equals step time(1) / step
time(K)). With `--rounds R` every device count runs R times, interleaved, and
the best throughput is kept (on a shared machine the best run is the least
disturbed one); the table also gives the range over rounds.

Other columns. "first step": compilation plus one step. "cores busy": the
child's CPU time over the timed steps divided by their wall time (XLA's CPU
backend runs one device's products on several threads when cores are free,
so on a shared machine this varies from round to round). "samples per CPU-s":
samples/s / cores busy, the median over rounds, vs 1 device: the CPU work a
sample costs whatever share of the machine a round got. On forced CPU devices
this, not the speed-up, is the measure of the sharded step's overhead.

    python benchmarks/scaling.py --table runs.json   # the table of a saved --json run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def _build(n_devices: int, batch: int, hidden: int, compute_dtype: str, remat: bool):
    """The sharded train step, replicated state, random split and epoch of batches."""
    import jax

    from nri_jax import configs, training
    from nri_jax import data as data_lib
    from nri_jax.model import NRI

    config = configs.override(configs.get_preset("quick"), encoder_hidden=hidden,
                              decoder_hidden=hidden, batch_size=batch,
                              compute_dtype=compute_dtype, remat=remat, n_devices=n_devices)
    mesh = data_lib.make_mesh(n_devices)
    n_examples, n_objects = 8 * batch, config.data.n_objects
    data_lib.check_batch_size(batch, n_examples, mesh, "batch")
    rng = np.random.default_rng(0)
    features = rng.standard_normal((n_examples, n_objects, 49, 4), np.float32)
    labels = rng.integers(0, 2, (n_examples, n_objects * (n_objects - 1)), np.int32)
    model = NRI(config.model)
    tx = training.make_optimizer(config.train, n_examples // batch)
    state = training.init_state(jax.random.key(0), model, tx, features[:1])
    return (training.make_train_step(model, tx, config, mesh),
            jax.device_put(state, data_lib.replicated(mesh)),
            data_lib.put_split(features, labels, mesh),
            data_lib.shuffled_batches(jax.random.key(1), n_examples, batch))


def measure(n_devices: int, batch: int, hidden: int, steps: int, compute_dtype: str,
            remat: bool) -> dict:
    """Times `steps` train steps on a mesh of `n_devices` (runs in the child)."""
    import jax

    train_step, state, split, batches = _build(n_devices, batch, hidden, compute_dtype, remat)
    key = jax.random.key(2)
    t0 = time.perf_counter()
    state, sums = train_step(state, split, batches[0], key)  # compiles
    jax.block_until_ready((state, sums))
    first_s = time.perf_counter() - t0
    cpu0, t0 = _cpu_s(), time.perf_counter()
    for i in range(steps):
        state, sums = train_step(state, split, batches[i % len(batches)],
                                 jax.random.fold_in(key, i))
    jax.block_until_ready((state, sums))
    seconds, cpu_s = time.perf_counter() - t0, _cpu_s() - cpu0
    return {"devices": n_devices, "visible_devices": jax.device_count(),
            "platform": jax.devices()[0].platform, "batch": batch, "hidden": hidden,
            "steps": steps, "samples_per_s": steps * batch / seconds,
            "step_ms": 1e3 * seconds / steps, "cores_busy": cpu_s / seconds,
            "first_step_s": first_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _cpu_s() -> float:
    """CPU seconds of this process (all threads, user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child_env(platform: str, n_devices: int) -> dict:
    env = dict(os.environ)
    if platform == "cpu":
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n_devices}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _run_child(args, n_devices: int) -> dict:
    batch = args.batch * n_devices if args.weak else args.batch
    command = [sys.executable, __file__, "--child", str(n_devices), "--batch", str(batch),
               "--hidden", str(args.hidden), "--steps", str(args.steps),
               "--compute-dtype", args.compute_dtype,
               "--remat" if args.remat else "--no-remat"]
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True,
                         env=_child_env(args.platform, n_devices)).stdout
    return {**json.loads(out.strip().splitlines()[-1]), "weak": args.weak}


def _gpu_count() -> int:
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.device_count('gpu'))"],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return int(out.strip().splitlines()[-1])


def _table(runs: list[dict], weak: bool) -> str:
    """Best round per device count, the range over rounds, and the median work per
    CPU-second (robust to how much of a shared machine each round got)."""
    counts = sorted({r["devices"] for r in runs})
    mine = {k: [r for r in runs if r["devices"] == k] for k in counts}
    best = {k: max(rs, key=lambda r: r["samples_per_s"]) for k, rs in mine.items()}
    per_cpu = {k: float(np.median([r["samples_per_s"] / r["cores_busy"] for r in rs]))
               for k, rs in mine.items()}
    lines = ["| devices | global batch | samples/s (best) | all rounds | step (ms) "
             "| speed-up vs 1 | efficiency | cores busy | samples per CPU-s (median) "
             "| vs 1 | first step (s) | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in counts:
        r, speedup = best[k], best[k]["samples_per_s"] / best[1]["samples_per_s"]
        spread = "-".join(f"{f(x['samples_per_s'] for x in mine[k]):.0f}" for f in (min, max))
        lines.append(f"| {k} | {r['batch']} | {r['samples_per_s']:.1f} | {spread} "
                     f"| {r['step_ms']:.0f} | {speedup:.2f}x | {speedup / k:.0%} "
                     f"| {r['cores_busy']:.1f} | {per_cpu[k]:.0f} "
                     f"| {per_cpu[k] / per_cpu[1]:.2f}x | {r['first_step_s']:.1f} "
                     f"| {r['peak_rss_mb']:.0f} |")
    kind = "weak (batch per device fixed)" if weak else "strong (global batch fixed)"
    rounds = max(len(rs) for rs in mine.values())
    return f"{kind} scaling, {rounds} round(s):\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu",
                        help="cpu: forced host devices; gpu: the real GPUs")
    parser.add_argument("--devices", default=None,
                        help="comma-separated device counts (default: 1,2,4 on cpu, "
                             "1..all on gpu)")
    parser.add_argument("--batch", type=int, default=128,
                        help="global batch, or per-device batch with --weak")
    parser.add_argument("--weak", action="store_true", help="global batch = --batch x K")
    parser.add_argument("--hidden", type=int, default=128, help="encoder and decoder hidden")
    parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--remat", action=argparse.BooleanOptionalAction, default=True,
                        help="decoder rematerialisation (the quick preset's; default on)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps after compiling")
    parser.add_argument("--rounds", type=int, default=3, help="repeats; the best is kept")
    parser.add_argument("--json", default=None, help="also write every run to this file")
    parser.add_argument("--table", default=None, metavar="JSON",
                        help="only print the table of a previous run's --json file")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.batch, args.hidden, args.steps,
                                 args.compute_dtype, args.remat)))
        return
    if args.table:
        with open(args.table) as f:
            runs = json.load(f)
        weak = runs[0].get("weak", len({r["batch"] for r in runs}) > 1)
        print(_table(runs, weak))
        return
    if args.devices:
        counts = [int(k) for k in args.devices.split(",")]
    else:
        counts = [1, 2, 4] if args.platform == "cpu" else list(range(1, _gpu_count() + 1))
    if 1 not in counts:
        parser.error("--devices must include 1 (the baseline of the speed-up)")
    runs = []
    for round_ in range(args.rounds):
        for k in counts:
            r = _run_child(args, k)
            runs.append(r)
            print(f"round {round_ + 1}: {k} {r['platform']} device(s) (of "
                  f"{r['visible_devices']} visible), batch {r['batch']}: "
                  f"{r['samples_per_s']:.1f} samples/s, {r['step_ms']:.0f} ms/step, "
                  f"{r['cores_busy']:.1f} cores busy, first step {r['first_step_s']:.1f} s",
                  flush=True)
    print(_table(runs, args.weak))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
