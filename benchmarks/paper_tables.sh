#!/usr/bin/env bash
# The paper's Tables 1 and 2 for one benchmark at a CPU budget: every method trained on the
# same 10k/1k/1k dataset with the quick preset's model (hidden 128, bf16 products) and the
# schedule the recorded tables used (the quick preset's until 2026-12-07: batch 128, 20 epochs
# unless a row says otherwise, learning rate halved after 12), one run after the other, then
# the tables.
#
#   bash benchmarks/paper_tables.sh springs runs/tables-springs5
#   bash benchmarks/paper_tables.sh charged runs/tables-charged5     # adds --no-skip-first
#
# Extra arguments go to every train.py call (e.g. --n-objects 10). A run that finished is
# kept; one that was interrupted is resumed. Needs the project's environment (`make .venv`).
set -euo pipefail
system=$1 out=$2
shift 2
common=(--preset quick --batch-size 128 --epochs 20 --lr-decay-every 12 --system "$system" "$@")
[ "$system" = charged ] && common+=(--no-skip-first)  # both charge signs interact
python=${PYTHON:-.venv/bin/python}

run() {  # run NAME [train.py arguments]
  local name=$1 dir=$out/$1
  shift
  [ -f "$dir/report.json" ] && return
  local resume=()
  [ -d "$dir" ] && resume=(--resume)
  echo "== $name: train.py ${common[*]} $* ($(date -u +%H:%M:%S))"
  "$python" train.py "${common[@]}" "$@" --workdir "$dir" "${resume[@]}"
}

run nri
run supervised --method supervised
run correlation --encoder correlation --method supervised
run true-graph --method true-graph
run full-graph --method full-graph
run simulation --decoder simulation
run lstm-single --decoder lstm-single --method full-graph --epochs 10
# Corr. (LSTM): a classifier on the correlations of that LSTM's hidden states.
run correlation-lstm --encoder correlation-lstm --decoder lstm-single --method supervised \
  --init-from "$out/lstm-single" --init-parts decoder
run lstm-joint --decoder lstm-joint --method full-graph --epochs 4
runs=("$out"/*/)
"$python" evaluate.py --table "${runs[@]%/}" --out "$out/tables.json"
