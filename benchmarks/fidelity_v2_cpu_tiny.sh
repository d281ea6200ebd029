#!/bin/bash
# The CPU calibration table of issue 31 (benchmarks/results/fidelity_v2_cpu_tiny.jsonl): the capacity-composed
# family and the from-scratch probe over the 25 calibration layouts at `tiny` (24 x 32) on CPU, rung 0 with
# seeds 0-2 and 4x the budget with seed 0 (estimated before the run, from per-step times measured on 2 shared
# cores: capacity 7 kinds x 2 lrs at 0.2 s per step, 28 + 37 min; probe 25 layouts at ~1 s per step for 3 seeds,
# 17 + 23 min; about 1.75 h in all).
# Budgets: capacity 200 steps of 32 rows (lrs 3e-3 and 1e-2: 1e-3 had not left chance after 600 steps for
# DeltaNet, 1e-2 reached 0.70; attention solved by 100-400 steps at all three), probe 40 steps (the tiny default).
# Resumable: rerun the same command. The retrofit family joins with `--families retrofit` once its hook exists.
#   nice bash benchmarks/fidelity_v2_cpu_tiny.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=benchmarks/results/fidelity_v2_cpu_tiny.jsonl
CAP=(--set "capacity.lrs=[0.003, 0.01]" --set capacity.batch_size=32 --set capacity.steps=200)
COMMON=(--device cpu --scale tiny --families capacity probe --jsonl "$OUT" --max-seconds 0 "${CAP[@]}")
$PY benchmarks/bench_fidelity_v2.py "${COMMON[@]}" --budgets 1 --seeds 0 1 2
$PY benchmarks/bench_fidelity_v2.py "${COMMON[@]}" --budgets 4 --seeds 0
