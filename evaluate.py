"""Evaluates a trained NRI run on the test split (the paper's protocol).

    python evaluate.py runs/quick-20261121-120000
    python evaluate.py RUN_DIR --data path/to/reference/npy/files --out report.json
    python evaluate.py RUN_DIR --plots
    python evaluate.py pretrained/springs5            # a shipped model, on a fresh clone
    python evaluate.py RUN_DIR --export pretrained/new --export-dtype float16
    python evaluate.py --table RUN_DIR [RUN_DIR ...] [--out tables.json]

Prints a Markdown table and writes the JSON report (edge_accuracy,
edge_accuracy_best_permutation, nll, mse_by_horizon, ...). With --table, reads
the runs' reports and prints the paper's Table 1 (edge accuracy) and Table 2
(MSE at 1, 10 and 20 steps) for them, with the published figures beside them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from nri_jax import experiment, reports, tables
from nri_jax.checkpointing import EXPORT_DTYPES, CheckpointError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="+", help="a run directory written by train.py, or "
                        "an exported one (pretrained/<benchmark>); several with --table")
    parser.add_argument("--table", action="store_true",
                        help="print Tables 1 and 2 of the given runs' test reports (and write "
                        "them as JSON to --out)")
    parser.add_argument("--data", default=None,
                        help="evaluate on this dataset (native or reference layout) instead")
    parser.add_argument("--out", default=None,
                        help="JSON report path (default: RUN_DIR/report.json)")
    parser.add_argument("--plots", action="store_true",
                        help="write PNG figures into RUN_DIR/plots")
    parser.add_argument("--export", default=None, metavar="OUT_DIR",
                        help="write the best parameters alone into a new, small run directory "
                        "(as the shipped pretrained/ models) and report on it")
    parser.add_argument("--export-dtype", default="float16", choices=EXPORT_DTYPES,
                        help="storage precision of the exported parameters (default: float16)")
    args = parser.parse_args(argv)
    if args.table and (args.data, args.plots, args.export) != (None, False, None):
        parser.error("--table reads the runs' reports; it takes neither --data, --plots nor "
                     "--export")
    if not args.table and len(args.run_dir) > 1:
        parser.error(f"one run directory at a time, got {len(args.run_dir)} (several need "
                     "--table)")
    if args.export is not None and (args.data, args.out, args.plots) != (None, None, False):
        parser.error("--export writes its own report; it takes neither --data, --out nor "
                     "--plots (run evaluate.py on the exported directory for those)")
    # Checked before the run and the dataset are loaded, which takes a while.
    if args.data is not None and not pathlib.Path(args.data).is_dir():
        parser.error(f"--data {args.data}: no such dataset directory")
    if args.out is not None and not pathlib.Path(args.out).absolute().parent.is_dir():
        parser.error(f"--out {args.out}: directory {pathlib.Path(args.out).parent} "
                     "does not exist")
    try:
        if args.table:
            result = tables.tables(args.run_dir)
            print(tables.markdown(result), end="")
            if args.out is not None:
                pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
            return 0
        run_dir = args.run_dir[0]
        if args.export is not None:
            experiment.export_run(run_dir, args.export, dtype=args.export_dtype)
            return 0
        report, run = experiment.evaluate_run(run_dir, data_dir=args.data, out=args.out)
        if args.plots:
            written = reports.write_plots(run, report, pathlib.Path(run_dir) / "plots")
            print("plots:", *map(str, written), sep="\n  ")
    except (experiment.RunDirError, CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
