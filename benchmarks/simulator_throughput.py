"""Simulator throughput: trajectories per second and the time for each default dataset.

    .venv/bin/python -m benchmarks.simulator_throughput              # measure one chunk, extrapolate
    .venv/bin/python -m benchmarks.simulator_throughput --full       # generate the full default sizes
    .venv/bin/python -m benchmarks.simulator_throughput --layouts    # layout / loop-shape comparisons

Default sizes (reference, NRI_REFERENCE.md section 2): 50k train + 10k valid trajectories of
49 frames and 10k test of 99 frames (every 100 steps for springs / charged; Kuramoto always
simulates its full 100-frame span). Timings are the best of `--repeats` runs after compilation;
the CPU may be shared, so ratios measured in the same run are more telling than absolutes.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from typing import Callable

import jax
import jax.numpy as jnp

from simulators import box, charged, kuramoto, springs
from simulators.integrators import (CHUNK_SIZE, box_euler, clip_force, map_chunks,
                                    pairwise_differences, reflect, rk4_slope)
from simulators.recording import record

MODULES = {"springs": springs, "charged": charged, "kuramoto": kuramoto}
SPLITS = (("train", 50_000, 49), ("valid", 10_000, 49), ("test", 10_000, 99))
# Reference NumPy seconds per 49-frame trajectory; 99-frame ones take twice as long for the
# particle systems (twice the steps), the same for Kuramoto (always the full span).
REFERENCE_SECONDS = {"springs": 0.3, "charged": 0.4, "kuramoto": 0.16}


def reference_seconds(system: str) -> float:
    """The reference generator's time for the default dataset (6.6 h springs, 8.8 h charged)."""
    factor = {49: 1, 99: 1 if system == "kuramoto" else 2}
    return REFERENCE_SECONDS[system] * sum(size * factor[frames] for _, size, frames in SPLITS)


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls (the first, compiling call is not counted)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best seconds of each call, timing them round-robin so that load changes hit all alike."""
    for call in calls.values():
        jax.block_until_ready(call())  # compile
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for label, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            best[label] = min(best[label], time.perf_counter() - start)
    return best


@functools.partial(jax.jit, static_argnames=("seed", "split", "size"))
def split_keys(seed: int, split: int, start: int, size: int) -> jax.Array:
    """Per-trajectory keys ``fold_in(fold_in(root, split), index)`` as a dataset builder makes."""
    split_key = jax.random.fold_in(jax.random.key(seed), split)
    return jax.vmap(lambda i: jax.random.fold_in(split_key, i))(start + jnp.arange(size))


def generator(system: str, n_frames: int, n_objects: int) -> Callable[[jax.Array], dict]:
    return jax.jit(functools.partial(MODULES[system].trajectories, n_objects=n_objects,
                                     n_frames=n_frames))


def measure_chunk(system: str, *, chunk: int, n_objects: int, repeats: int) -> dict[int, float]:
    """Seconds per trajectory for each frame count the default dataset uses."""
    per_trajectory = {}
    for n_frames in sorted({frames for _, _, frames in SPLITS}):
        run = generator(system, n_frames, n_objects)
        keys = split_keys(0, 0, 0, chunk)
        per_trajectory[n_frames] = best_time(lambda: run(keys), repeats) / chunk
    return per_trajectory


def dataset_seconds(system: str, per_trajectory: dict[int, float]) -> float:
    """Extrapolated generation time of the default dataset from per-trajectory times."""
    return sum(size * per_trajectory[frames] for _, size, frames in SPLITS)


def run_full(system: str, *, chunk: int, n_objects: int) -> float:
    """Generates the full default dataset in chunks; returns the wall seconds (no compiling).

    Like a dataset builder, every call gets `chunk` keys: the last chunk of each split is
    simulated in full (with 4096, 77,824 trajectories for the 70,000 of the dataset).
    """
    total = 0.0
    for split_id, (_, size, n_frames) in enumerate(SPLITS):
        run = generator(system, n_frames, n_objects)
        jax.block_until_ready(run(split_keys(0, split_id, 0, chunk)))  # compile outside timing
        start = time.perf_counter()
        for first in range(0, size, chunk):
            jax.block_until_ready(run(split_keys(0, split_id, first, chunk)))
        total += time.perf_counter() - start
    return total


# ----- layout comparisons (--layouts): the same physics written in other ways -----

def _reduce_spring_forces(position, stiffness):
    # jnp.sum over the object axis: XLA's reduce instead of the library's unrolled adds.
    return -jnp.sum(stiffness[:, :, None] * pairwise_differences(position), axis=1)


def _grad_spring_forces(position, stiffness):
    return -jax.grad(lambda x: springs.potential_energy(x, stiffness).sum())(position)


def _grad_coulomb_forces(position, couplings):
    return -jax.grad(lambda x: charged.potential_energy(x, couplings).sum())(position)


def _uncarried_loop(force_fn, x, v, couplings, *, n_frames, unroll=1):
    # The force recomputed from the position inside the step instead of carried in the state.
    def step(state):
        x, v = state
        v = v + 1e-3 * clip_force(force_fn(x, couplings), 100.0)
        return reflect(x + 1e-3 * v, v, 5.0)
    return record(step, (x, v), n_frames=n_frames, sample_every=100)[0]


def _library_loop(force_fn, x, v, couplings, *, n_frames, unroll=1):
    init, step = box_euler(lambda p: force_fn(p, couplings), dt=1e-3, max_force=100.0,
                           box_size=5.0)
    return record(step, init(x, v), n_frames=n_frames, sample_every=100, unroll=unroll).position


def _chunked_runner(chunk_fn, chunk_size=CHUNK_SIZE):
    """Jits `chunk_fn` (batch-first arrays -> array) applied chunk by chunk, as the library."""
    return jax.jit(lambda *arrays: map_chunks(lambda chunk: chunk_fn(*chunk), arrays, chunk_size))


def _batch_last(loop, force_fn, **settings):
    def chunk_fn(x, v, couplings, edges):
        x, v, couplings = (jnp.moveaxis(a, 0, -1) for a in (x, v, couplings))
        return jnp.moveaxis(loop(force_fn, x, v, couplings, **settings), -1, 0)
    return _chunked_runner(chunk_fn)


def layout_report(batch: int, n_objects: int, repeats: int, n_frames: int = 5) -> list[str]:
    """ns per trajectory-step of springs / charged variants, timed round-robin in one run.

    Every variant steps `CHUNK_SIZE` trajectories at a time, as the library does.
    """
    lines = []
    for name, module, force, variants in (
            ("springs", springs, springs.spring_forces,
             {"jnp.sum force": _reduce_spring_forces, "jax.grad(energy)": _grad_spring_forces}),
            ("charged", charged, charged.coulomb_forces,
             {"jax.grad(energy)": _grad_coulomb_forces})):
        systems = jax.vmap(functools.partial(module.sample, n_objects=n_objects))(
            split_keys(0, 0, 0, batch))
        couplings = (springs.stiffness(systems.edges, springs.DEFAULT_SPRING_CONSTANTS)
                     if module is springs else systems.edges.astype(jnp.float32))
        runners = {f"batch-last, unroll {u}": _batch_last(_library_loop, force,
                                                          n_frames=n_frames, unroll=u)
                   for u in (1, 2, 5)}
        runners["batch-last, force not carried"] = _batch_last(_uncarried_loop, force,
                                                               n_frames=n_frames)
        for label, variant in variants.items():
            runners[f"batch-last, {label}"] = _batch_last(_library_loop, variant,
                                                          n_frames=n_frames)
        simulate = functools.partial(module.simulate, n_steps=n_frames * 100, sample_every=100)
        runners["jax.vmap(simulate), batch first"] = _chunked_runner(
            lambda x, v, c, edges: jax.vmap(simulate)(x, v, edges)[0])
        runners["jax.vmap(simulate, in/out_axes=-1)"] = _chunked_runner(
            lambda x, v, c, edges: jax.vmap(simulate, in_axes=-1, out_axes=-1)(
                *(jnp.moveaxis(a, 0, -1) for a in (x, v, edges)))[0])
        arrays = (systems.position, systems.velocity, couplings, systems.edges)
        timed = interleaved_best({label: functools.partial(run, *arrays)
                                  for label, run in runners.items()}, repeats)
        base = timed["batch-last, unroll 1"]
        for label, seconds in timed.items():
            lines.append(f"{name:8s} {label:46s} {seconds * 1e9 / (batch * n_frames * 100):8.1f}"
                         f" ns/traj-step ({seconds / base:5.1f}x)")
    return lines


def _fused_rk4_slope(rate_fn, y, dt):
    # Textbook RK4 without the stage loop: XLA fuses each stage into the next.
    k1 = rate_fn(y)
    k2 = rate_fn(y + 0.5 * dt * k1)
    k3 = rate_fn(y + 0.5 * dt * k2)
    return (k1 + 2 * k2 + 2 * k3 + rate_fn(y + dt * k3)) / 6


def kuramoto_layout_report(batch: int, n_objects: int, repeats: int,
                           n_steps: int = 200) -> list[str]:
    """ns per trajectory-step of Kuramoto RK4 variants, `CHUNK_SIZE` trajectories at a time."""
    systems = jax.vmap(functools.partial(kuramoto.sample, n_objects=n_objects))(
        split_keys(0, 0, 0, batch))

    def batch_last(loop):
        def chunk_fn(phase, omega, coupling):
            phase, omega, coupling = (jnp.moveaxis(a, 0, -1) for a in (phase, omega, coupling))
            return loop(phase, omega, coupling.astype(phase.dtype))
        return _chunked_runner(chunk_fn)

    def plain(slope_fn):
        def loop(phase, omega, coupling):
            rate = functools.partial(kuramoto.phase_velocity, omega=omega, coupling=coupling)
            return jax.lax.fori_loop(0, n_steps, lambda _, p: p + 0.01 * slope_fn(rate, p, 0.01),
                                     phase)
        return batch_last(loop)

    simulate = functools.partial(kuramoto.simulate, n_steps=n_steps, sample_every=10)
    runners = {
        "library (Kahan, stage loop, sin/cos prepared)": batch_last(lambda *a: kuramoto._run(
            *a, n_frames=n_steps // 10, sample_every=10, dt=0.01).phase),
        "stage loop, sin/cos per pair": plain(rk4_slope),
        "stages fused by XLA": plain(_fused_rk4_slope),
        "jax.vmap(simulate), batch first": _chunked_runner(
            lambda phase, omega, coupling: jax.vmap(simulate)(phase, omega, coupling).phase),
    }
    timed = interleaved_best({label: functools.partial(run, *systems)
                              for label, run in runners.items()}, repeats)
    base = timed["library (Kahan, stage loop, sin/cos prepared)"]
    return [f"kuramoto {label:46s} {seconds * 1e9 / (batch * n_steps):8.1f} ns/traj-step "
            f"({seconds / base:5.1f}x)" for label, seconds in timed.items()]


def chunk_report(sizes: list[int], n_objects: int, repeats: int, batch: int = 8192) -> list[str]:
    """ns per trajectory-step for several numbers of trajectories stepped together."""
    keys = split_keys(0, 0, 0, batch)
    lines = []
    for name, module, force_fn, n_steps in (("springs", springs, springs.spring_forces, 500),
                                            ("charged", charged, charged.coulomb_forces, 500),
                                            ("kuramoto", kuramoto, None, 100)):
        systems = jax.vmap(functools.partial(module.sample, n_objects=n_objects))(keys)
        calls = {size: functools.partial(jax.jit(functools.partial(
            _chunked, module, force_fn, n_steps=n_steps, chunk_size=size)), systems)
            for size in sizes}
        timed = interleaved_best(calls, repeats)
        lines.append(f"{name:8s} chunk " + ", ".join(
            f"{size}: {timed[size] * 1e9 / (batch * n_steps):.1f}" for size in sizes)
            + " ns/traj-step")
    return lines


def _chunked(module, force_fn, systems, *, n_steps, chunk_size):
    if module is kuramoto:
        def simulate_chunk(chunk):
            phase, omega, coupling = (jnp.moveaxis(a, 0, -1) for a in chunk)
            return kuramoto._run(phase, omega, coupling.astype(phase.dtype),
                                 n_frames=n_steps // 10, sample_every=10, dt=0.01).phase
        return map_chunks(simulate_chunk, systems, chunk_size)
    couplings = (springs.stiffness(systems.edges, springs.DEFAULT_SPRING_CONSTANTS)
                 if module is springs else systems.edges.astype(systems.position.dtype))
    return box.run_batch(force_fn, systems, couplings, n_frames=n_steps // 100,
                         chunk_size=chunk_size, sample_every=100, box_size=5.0, dt=1e-3,
                         max_force=100.0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="springs,charged,kuramoto",
                        help="comma-separated; empty to run only --layouts")
    parser.add_argument("--n-objects", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=4096,
                        help="keys per trajectories() call, as a dataset builder passes them "
                             "(inside, CHUNK_SIZE trajectories are stepped together)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="generate the full default sizes")
    parser.add_argument("--layouts", action="store_true", help="compare layouts / loop shapes")
    parser.add_argument("--chunks", default="64,128,256,512,1024,4096,8192",
                        help="chunk sizes to compare with --layouts")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{jax.devices()[0].device_kind}, N = {args.n_objects}, {args.chunk} keys per call, "
          f"{CHUNK_SIZE} trajectories stepped together, {jnp.zeros(()).dtype}")
    for system in filter(None, args.systems.split(",")):
        per_trajectory = measure_chunk(system, chunk=args.chunk, n_objects=args.n_objects,
                                       repeats=args.repeats)
        rates = ", ".join(f"{frames} frames: {1 / t:9.0f} traj/s"
                          for frames, t in per_trajectory.items())
        estimate = dataset_seconds(system, per_trajectory)
        reference = reference_seconds(system)
        print(f"{system:8s} {rates}; default dataset extrapolated from one chunk: "
              f"{estimate:6.1f} s (reference NumPy ~{reference / 3600:.1f} h, "
              f"{reference / estimate:,.0f}x)")
        if args.full:
            print(f"{system:8s} default dataset measured (--full): "
                  f"{run_full(system, chunk=args.chunk, n_objects=args.n_objects):6.1f} s")
    if args.layouts:
        for line in layout_report(args.chunk, args.n_objects, args.repeats):
            print(line, flush=True)
        for line in kuramoto_layout_report(1024, args.n_objects, args.repeats):
            print(line, flush=True)
        for line in chunk_report([int(c) for c in args.chunks.split(",")], args.n_objects,
                                 args.repeats):
            print(line, flush=True)


if __name__ == "__main__":
    main()
