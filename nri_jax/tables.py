"""The paper's Table 1 (edge accuracy) and Table 2 (prediction MSE) for a set of runs.

Each run directory contributes a row to the tables its method reports in: edge
recovery (NRI, the supervised encoder) and prediction error (NRI, the decoders
with a given graph, and the static baseline on the run's test data), read from
its test report (`report.json`, written by
`train.py` and `evaluate.py`). The published figures stand beside each row
where the paper has one for the same method and benchmark.
"""

from __future__ import annotations

import json
import os
import pathlib

from nri_jax import experiment
from nri_jax.model import DECODERS

PAPER_SOURCE = ("Kipf et al., Neural Relational Inference for Interacting Systems, ICML 2018: "
                "Table 1 (edge accuracy, NRI learned and supervised) and Table 2 (MSE, springs "
                "5, NRI learned), as NRI_REFERENCE.md section 4 quotes them")

# Published test edge accuracy by (method, system, objects).
PAPER_ACCURACY = {
    ("nri", "springs", 5): 0.999, ("nri", "charged", 5): 0.821, ("nri", "kuramoto", 5): 0.960,
    ("nri", "springs", 10): 0.984, ("nri", "charged", 10): 0.708,
    ("nri", "kuramoto", 10): 0.757,
    ("supervised", "springs", 5): 0.999, ("supervised", "charged", 5): 0.950,
    ("supervised", "kuramoto", 5): 0.997,
}
# Published test MSE (normalised units) by (method, system, objects) and horizon.
PAPER_MSE = {("nri", "springs", 5): {1: 3.12e-8, 20: 2.13e-5}}
HORIZONS = (1, 10, 20)
# The paper's names of the correlation baselines (encoders trained on the labels).
CORRELATION_NAMES = {"correlation": "Corr. (path)", "correlation-lstm": "Corr. (LSTM)"}


def _at_horizons(mse: list[float]) -> dict[int, float | None]:
    """The MSE at each of HORIZONS (None past the report's horizons)."""
    return {h: mse[h - 1] if h <= len(mse) else None for h in HORIZONS}


def _read(run_dir: pathlib.Path) -> tuple[dict, tuple[str, str, int], dict]:
    """(row fields, (method, system, objects), test report) of one run directory."""
    config, _ = experiment.read_run(run_dir)
    path = run_dir / experiment.REPORT_JSON
    if not path.is_file():
        raise experiment.RunDirError(f"{run_dir} has no test report {path.name}: run "
                                     f"`python evaluate.py {run_dir}` first")
    report = json.loads(path.read_text())
    m, d = config.model, config.data
    method = config.train.method
    parts = {"nri": f"{m.encoder} encoder, {m.decoder} decoder",
             "supervised": f"{m.encoder} encoder"}.get(method, f"{m.decoder} decoder")
    label = f"{method} ({parts})"
    # The paper's "NRI (learned)" figures are not those of its simulation decoder, nor
    # the supervised encoder's those of the correlation baselines.
    paper_method = "nri-simulation" if method == "nri" and m.decoder == "simulation" else method
    if m.encoder in CORRELATION_NAMES:
        label = paper_method = CORRELATION_NAMES[m.encoder]
    elif not DECODERS[m.decoder].reads_graph:  # trained through a graph it does not read
        label = paper_method = m.decoder
    row = {"run": str(run_dir), "benchmark": f"{d.system} {d.n_objects}", "method": label}
    return row, (paper_method, d.system, d.n_objects), report


def tables(run_dirs: list[str | os.PathLike]) -> dict:
    """Table 1 and Table 2 rows for `run_dirs`, with the paper's figures.

    Returns:
      {"source": PAPER_SOURCE, "table1": [...], "table2": [...]}: table 1 rows
      have benchmark, method, run, edge_accuracy_best_permutation,
      edge_accuracy and paper (None where unpublished); table 2 rows have
      benchmark, method, run, mse (horizon -> value, None past the report's
      horizons) and paper (horizon -> value); a run's report also gives the
      static baseline's row for its test data (once per benchmark and values).

    Raises:
      RunDirError: a directory is not a run or has no test report.
    """
    table1, table2, statics = [], [], []
    for run_dir in run_dirs:
        row, key, report = _read(pathlib.Path(run_dir))
        if "edge_accuracy" in report:
            table1.append({**row, "edge_accuracy_best_permutation":
                           report["edge_accuracy_best_permutation"],
                           "edge_accuracy": report["edge_accuracy"],
                           "paper": PAPER_ACCURACY.get(key)})
        if "mse_by_horizon" in report:
            table2.append({**row, "mse": _at_horizons(report["mse_by_horizon"]),
                           "paper": PAPER_MSE.get(key, {})})
        if "static_mse_by_horizon" in report:
            static = (row["benchmark"], _at_horizons(report["static_mse_by_horizon"]))
            if static not in statics:  # the same test data: shown once
                statics.append(static)
                table2.append({**row, "method": "static (repeats the last frame the encoder "
                               "saw)", "mse": static[1], "paper": {}})
    return {"source": PAPER_SOURCE, "table1": table1, "table2": table2}


def markdown(result: dict) -> str:
    """The two tables of `tables` as Markdown, with their source."""
    def number(value, spec):
        return "-" if value is None else format(value, spec)

    lines = ["Table 1: test edge accuracy", "",
             "| benchmark | method | run | best permutation | plain | paper |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['benchmark']} | {r['method']} | {r['run']} | "
              f"{r['edge_accuracy_best_permutation']:.4f} | {r['edge_accuracy']:.4f} | "
              f"{number(r['paper'], '.3f')} |" for r in result["table1"]]
    steps = " | ".join(f"MSE {h}" for h in HORIZONS)
    lines += ["", "Table 2: test MSE of open-loop predictions (normalised units)", "",
              f"| benchmark | method | run | {steps} | paper |",
              "|---|---|---|" + "---|" * len(HORIZONS) + "---|"]
    for r in result["table2"]:
        mse = " | ".join(number(r["mse"][h], ".2e") for h in HORIZONS)
        paper = ", ".join(f"{h}: {v:.2e}" for h, v in r["paper"].items()) or "-"
        lines.append(f"| {r['benchmark']} | {r['method']} | {r['run']} | {mse} | {paper} |")
    return "\n".join(lines + ["", f"Paper figures: {result['source']}."]) + "\n"
