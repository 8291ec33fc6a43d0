"""Validation edge accuracy against training wall time, for one or more run directories.

    python benchmarks/time_to_accuracy.py runs/a runs/b --labels "fixed,online" \
        --paper 0.999 --out docs/figures/springs5_time_to_accuracy.png

Reads each run's `metrics.jsonl` (one record per epoch: its validation accuracy under the
best permutation of edge types and the epoch's seconds) and plots the accuracy after each
epoch against the summed epoch seconds (training and validation; data generation and the
first compilation before epoch 1 are not included). Prints, per run, the first epoch and
time at which each of a few accuracy levels was reached.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LEVELS = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def curve(run_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(minutes after each epoch, validation accuracy after it) of one run."""
    records = [json.loads(line) for line in
               pathlib.Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    minutes = np.cumsum([r["seconds"] for r in records]) / 60
    accuracy = np.array([r["valid"]["edge_accuracy_best_permutation"] for r in records])
    return minutes, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--labels", default=None, help="comma-separated, one per run")
    parser.add_argument("--paper", type=float, default=None, help="draw the paper's figure")
    parser.add_argument("--title", default="validation edge accuracy")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else args.runs
    if len(labels) != len(args.runs):
        raise SystemExit(f"--labels has {len(labels)} names for {len(args.runs)} runs")
    fig, ax = plt.subplots(figsize=(6, 4))
    for run, label in zip(args.runs, labels):
        minutes, accuracy = curve(run)
        ax.plot(minutes, accuracy, label=label)
        reached = [f"{level:.3f} at epoch {int(np.argmax(accuracy >= level)) + 1} "
                   f"({minutes[np.argmax(accuracy >= level)]:.1f} min)"
                   for level in LEVELS if np.any(accuracy >= level)]
        print(f"{label}: best {accuracy.max():.4f}; " + ", ".join(reached))
    if args.paper is not None:
        ax.axhline(args.paper, color="k", ls="--", lw=1, label=f"paper ({args.paper:.3f})")
    ax.set_xlabel("training wall time (min)")
    ax.set_ylabel("edge accuracy (best permutation)")
    ax.set_title(args.title)
    ax.set_ylim(0.5, 1.005)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
