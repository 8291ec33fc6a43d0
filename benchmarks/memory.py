"""Memory stays flat over epochs: resident memory of a long training run.

    python -m benchmarks.memory                       # tiny preset, 200 epochs
    python -m benchmarks.memory --epochs 30 --every 5 # a quick check
    python -m benchmarks.memory --hidden 64 --n-train 512 --epochs 100   # larger

Runs `experiment.train_and_evaluate` in this process (data generation, the
epoch loop, validation, checkpoints every epoch, the final test) in a fresh
temporary run directory, with a log callback that samples once per epoch:

- RSS: the current resident set (/proc/self/statm), and the peak (ru_maxrss);
- live jax arrays: how many, and their bytes (`jax.live_arrays()`);
- compilations so far (jax.monitoring's backend-compile events) and the jit
  cache sizes of the train and eval steps (captured by wrapping the library's
  `make_train_step` / `make_eval_step` for this run).

Epochs 1 to ~5 compile the steps and fill allocator pools, so the baseline is
taken after epoch `--warmup` (default 5). The growth is the least-squares slope
of RSS over the second half of the epochs, reported per 100 epochs.

Threshold (`--max-growth-mb`, default 1 MB per 100 epochs, i.e. 10 kB per
epoch). What a leak per epoch would cost here: one extra copy of the tiny
preset's train state (119 arrays, 90 kB: parameters, BatchNorm statistics,
Adam moments) kept per epoch is 9 MB per 100 epochs, one validation batch
(16 x 5 x 49 x 4 floats, 63 kB) is 6 MB, one retained compiled executable is
megabytes: all fail the check by a wide margin. A flat run sits far below it:
with checkpoints written once (`--save-once`) RSS moved +0.04 MB over 195
epochs. Leaks under ~10 kB per epoch (a metrics dict, a log line) pass;
retained jax arrays or recompilations are caught separately, since a growing
live-array count or any compilation in the second half also fails.

`--save-once` (diagnostic) lets each checkpoint manager write only its first
checkpoint, which separates the per-save cost of checkpointing from the rest
of the epoch; the "checkpoints saved" column counts the writes.

Exits with status 1 and a message when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import resource
import sys
import tempfile
import time

import jax
import numpy as np

from nri_jax import checkpointing, configs, experiment, training

MB = 2 ** 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / MB


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Probe:
    """Per-epoch samples of memory, plus what the run compiles, builds and saves.

    Counts backend compilations and checkpoints written, and keeps the jitted
    train / eval steps the run builds so that their cache sizes can be read.
    """

    def __init__(self, every: int = 0):
        self.every = every  # print every this many epochs (0: never)
        self.compiles = 0
        self.saves = 0
        self._managers_saved: set[int] = set()
        self.steps: dict[str, object] = {}
        self.samples: list[dict] = []
        self._t0 = time.perf_counter()

    def on_event(self, name: str, duration: float, **_) -> None:
        if name == "/jax/core/compile/backend_compile_duration":
            self.compiles += 1

    def keep(self, name: str, make):
        @functools.wraps(make)
        def wrapped(*args, **kwargs):
            self.steps[name] = make(*args, **kwargs)
            return self.steps[name]
        return wrapped

    def counting(self, save, *, save_once: bool):
        """Wraps `checkpointing.save` to count checkpoints written (with `save_once`,
        only each manager's first)."""
        @functools.wraps(save)
        def wrapped(mngr, *args, **kwargs):
            if save_once and id(mngr) in self._managers_saved:
                return
            self._managers_saved.add(id(mngr))
            self.saves += 1
            save(mngr, *args, **kwargs)
        return wrapped

    def log(self, line: str) -> None:
        """The run's log callback: one sample per epoch line."""
        if not line.startswith("epoch "):
            return
        arrays = jax.live_arrays()
        # jax has no public accessor for a jitted function's number of compiled entries.
        caches = {name: step._cache_size() for name, step in self.steps.items()}
        self.samples.append({"epoch": len(self.samples) + 1, "rss_mb": current_rss_mb(),
                             "peak_rss_mb": peak_rss_mb(), "live_arrays": len(arrays),
                             "live_mb": sum(a.nbytes for a in arrays) / MB,
                             "compiles": self.compiles, "caches": caches,
                             "saves": self.saves,
                             "wall_s": time.perf_counter() - self._t0})
        if self.every and len(self.samples) % self.every == 0:
            print(_row("sample", self.samples[-1]), flush=True)


@contextlib.contextmanager
def probing(*, save_once: bool = False, every: int = 0):
    """Installs the probe: a compile listener and wrappers around the step builders
    and `checkpointing.save` (which counts checkpoints written).

    With `save_once`, each checkpoint manager writes only its first checkpoint
    (a diagnostic that separates the per-save cost of checkpointing from the
    rest of the epoch; the final test then uses epoch 1's "best" state).
    """
    probe = Probe(every)
    originals = training.make_train_step, training.make_eval_step, checkpointing.save
    training.make_train_step = probe.keep("train", originals[0])
    training.make_eval_step = probe.keep("eval", originals[1])
    checkpointing.save = probe.counting(originals[2], save_once=save_once)
    jax.monitoring.register_event_duration_secs_listener(probe.on_event)
    try:
        yield probe
    finally:
        training.make_train_step, training.make_eval_step, checkpointing.save = originals
        jax.monitoring.unregister_event_duration_listener(probe.on_event)


def slope_per_100(samples: list[dict], field: str) -> float:
    """Least-squares slope of `field` against epoch over the second half, per 100 epochs."""
    half = samples[len(samples) // 2:]
    epochs = np.array([s["epoch"] for s in half], np.float64)
    values = np.array([s[field] for s in half], np.float64)
    return 100 * np.polyfit(epochs, values, 1)[0]


def _row(label: str, s: dict) -> str:
    caches = ", ".join(f"{k} {v}" for k, v in sorted(s["caches"].items()))
    return (f"| {label} | {s['epoch']} | {s['rss_mb']:.1f} | {s['peak_rss_mb']:.1f} "
            f"| {s['live_arrays']} | {s['live_mb']:.3f} | {s['compiles']} | {caches} "
            f"| {s['saves']} | {s['wall_s']:.0f} |")


def report(samples: list[dict], warmup: int) -> tuple[str, dict]:
    start, mid, end = samples[warmup - 1], samples[len(samples) // 2], samples[-1]
    lines = ["| point | epoch | RSS (MB) | peak RSS (MB) | live arrays | live MB | compiles "
             "| jit cache entries | checkpoints saved | wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|",
             _row("first", samples[0]), _row("start (after warm-up)", start),
             _row("middle", mid), _row("end", end)]
    growth = {"rss_mb": slope_per_100(samples, "rss_mb"),
              "live_arrays": slope_per_100(samples, "live_arrays"),
              "compiles": end["compiles"] - mid["compiles"]}
    saves = end["saves"] - mid["saves"]
    lines += ["", f"RSS end - start: {end['rss_mb'] - start['rss_mb']:+.2f} MB over "
              f"{end['epoch'] - start['epoch']} epochs; least-squares slope over epochs "
              f"{samples[len(samples) // 2]['epoch']}-{end['epoch']}: "
              f"{growth['rss_mb']:+.3f} MB per 100 epochs "
              f"({1024 * growth['rss_mb'] / 100:+.2f} kB per epoch); live arrays "
              f"{growth['live_arrays']:+.2f} per 100 epochs; in the second half "
              f"{growth['compiles']} compilations and {saves} checkpoints saved"
              + (f" ({1024 * (end['rss_mb'] - mid['rss_mb']) / saves:+.1f} kB of RSS per "
                 f"checkpoint)" if saves else "")]
    return "\n".join(lines), growth


def _failures(growth: dict, max_growth_mb: float) -> list[str]:
    failures = []
    if growth["rss_mb"] > max_growth_mb:
        failures.append(f"RSS grows {growth['rss_mb']:.2f} MB per 100 epochs "
                        f"(allowed {max_growth_mb})")
    if growth["live_arrays"] > 0.5:  # a slope: +1 array retained every 200 epochs or more
        failures.append(f"live jax arrays grow {growth['live_arrays']:.1f} per 100 epochs")
    if growth["compiles"]:
        failures.append(f"{growth['compiles']} compilations in the second half of the run")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(configs.PRESETS))
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=None, help="encoder and decoder hidden")
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=5, help="epochs before the baseline")
    parser.add_argument("--max-growth-mb", type=float, default=1.0,
                        help="allowed RSS growth per 100 epochs (second-half slope)")
    parser.add_argument("--save-once", action="store_true",
                        help="diagnostic: write only the first checkpoint of each kind, to "
                             "separate the per-save cost of checkpointing")
    parser.add_argument("--every", type=int, default=0,
                        help="also print a sample every this many epochs (0: none)")
    args = parser.parse_args()
    if args.epochs < 2 * args.warmup:
        parser.error(f"--epochs must be at least 2 x --warmup ({2 * args.warmup})")
    changes = {"epochs": args.epochs, "n_train": args.n_train, "batch_size": args.batch_size,
               "encoder_hidden": args.hidden, "decoder_hidden": args.hidden}
    config = configs.override(configs.get_preset(args.preset),
                              **{k: v for k, v in changes.items() if v is not None})
    with tempfile.TemporaryDirectory(prefix="nri-memory-") as tmp:
        config = configs.override(config, data_dir=os.path.join(tmp, "data"))
        with probing(save_once=args.save_once, every=args.every) as probe:
            experiment.train_and_evaluate(config, os.path.join(tmp, "run"), log=probe.log)
    table, growth = report(probe.samples, args.warmup)
    print(f"{args.preset} preset, {args.epochs} epochs, hidden {config.model.encoder_hidden}, "
          f"{config.data.n_train} training examples, batch {config.train.batch_size}"
          f"{', checkpoints saved once (--save-once)' if args.save_once else ''}; "
          f"peak RSS after the final test {peak_rss_mb():.1f} MB")
    print(table)
    failures = _failures(growth, args.max_growth_mb)
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
