"""Reports, logs and figures of a run: what it writes for people to read.

The test report (report.json and a Markdown table), the per-epoch log line, the
training curve (metrics.jsonl) and the PNG figures of `evaluate.py --plots`.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np

from nri_jax import data as data_lib
from nri_jax import training
from nri_jax.model import NRI
from nri_jax.processes import write_json, write_text

METRICS_FILE, REPORT_JSON, REPORT_MD = "metrics.jsonl", "report.json", "report.md"


def log_line(epoch: int, epochs: int, record: dict) -> str:
    """One epoch's line: the loss terms and accuracies the run's method reports."""
    t, v = record["train"], record["valid"]

    def terms(split: dict, names: tuple[str, ...]) -> str:
        shown = [f"{name.replace('cross_entropy', 'xent')} {split[name]:.4g}"
                 for name in names if name in split]
        if "edge_accuracy" in split:
            shown.append(f"acc {split['edge_accuracy']:.3f} "
                         f"(best perm {split['edge_accuracy_best_permutation']:.3f})")
        return " ".join(shown)

    return (f"epoch {epoch + 1}/{epochs} | train {terms(t, ('loss', 'nll', 'kl', 'cross_entropy'))}"
            f" | valid {terms(v, ('nll', 'cross_entropy', 'mse'))} | "
            f"{record['samples_per_s']:.0f} samples/s")


def write_report(workdir: pathlib.Path, report: dict, log=print, out: pathlib.Path | None = None):
    """Writes the test report as JSON (to `out` or report.json) and a Markdown table."""
    write_json(out or workdir / REPORT_JSON, report)
    md = markdown_report(report)
    write_text(workdir / REPORT_MD, md)
    log(md)


def markdown_report(report: dict) -> str:
    """The report's edge accuracies, NLL and MSE at a few horizons (those it has)."""
    lines = ["| metric | value |", "|---|---|"]
    for key in ("edge_accuracy", "edge_accuracy_best_permutation", "nll", "cross_entropy"):
        if key in report:
            lines.append(f"| {key} | {report[key]:.4f} |")
    for h, mse in enumerate(report.get("mse_by_horizon", ()), start=1):
        if h in (1, 5, 10, 20, 49) or h == len(report["mse_by_horizon"]):
            lines.append(f"| mse at horizon {h} | {mse:.3e} |")
    return "\n".join(lines) + "\n"


def read_metrics(workdir: str | os.PathLike, upto_epoch: int | None = None) -> list[dict]:
    """The per-epoch records of a run's metrics.jsonl (those before `upto_epoch`)."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed process
            continue
    return [r for r in records if upto_epoch is None or r["epoch"] < upto_epoch]


def predict_examples(run, n_examples: int = 4, split: str = "test") -> dict[str, np.ndarray]:
    """Inferred graphs and open-loop predictions for the first examples of a split.

    Returns host arrays: `features` [B, N, T, D], `labels` [B, E], `probs`
    [B, E, K] (encoder on the first n_encoder_frames; a decoder-only method's
    given graph), and `predictions` [B, N, H, D], the open-loop rollout of
    frames t_enc+1..t_enc+H from frame t_enc (H = the test horizon), decoded
    through the argmax graph (None for the supervised encoder, which trains no
    decoder).
    """
    n_examples = min(n_examples, run.sizes[split])
    first = jax.jit(lambda a: a[:n_examples], out_shardings=data_lib.replicated(run.mesh))
    x, labels = first(run.splits[split].features), first(run.splits[split].labels)
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    t_enc = run.n_encoder_frames
    probs = training.given_edges(run.config, labels)
    if probs is None:
        logits = run.model.apply(variables, x[:, :, :t_enc], train=False, method=NRI.encode)
        probs = jax.nn.softmax(logits, axis=-1)
    edges = jax.nn.one_hot(np.argmax(probs, -1), run.config.model.n_edge_types)
    predictions = (None if run.config.train.method == "supervised" else
                   training.open_loop(run.model, variables, x, edges, run.config, t_enc))
    return jax.device_get({"features": x, "labels": labels, "probs": probs,
                           "predictions": predictions})


def write_plots(run, report: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Writes PNGs: true vs inferred graphs, predicted vs true paths, curves, MSE."""
    from nri_jax import plotting  # matplotlib is imported only when plots are asked for

    out_dir.mkdir(parents=True, exist_ok=True)
    ex = predict_examples(run)
    t_enc = run.n_encoder_frames
    figures = {"graphs.png": plotting.graph_comparison(ex["labels"], ex["probs"])}
    if ex["predictions"] is not None:
        figures["mse_by_horizon.png"] = plotting.mse_by_horizon(report["mse_by_horizon"])
        horizon = ex["predictions"].shape[2]
        for b in range(min(2, len(ex["labels"]))):
            figures[f"trajectory_{b}.png"] = plotting.trajectories(
                ex["features"][b, :, t_enc: t_enc + horizon + 1], ex["predictions"][b],
                labels=ex["labels"][b], title=f"test example {b}")
    records = read_metrics(run.workdir)
    if records:
        figures["training_curves.png"] = plotting.training_curves(records)
    written = []
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=100, bbox_inches="tight")
        plotting.plt.close(fig)
        written.append(out_dir / name)
    return written
