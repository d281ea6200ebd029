#!/bin/bash
# The CPU calibration table of issue 31 (benchmarks/results/fidelity_v2_cpu_tiny.jsonl): the capacity-composed
# family and the from-scratch probe over the 25 calibration layouts at `tiny` (24 x 32) on CPU, rung 0 with
# seeds 0-2 and 4x the budget with seed 0 (CPU time: ~1.3 h on 2 shared cores, estimated before the run).
# Resumable: rerun the same command. The retrofit family joins with `--families retrofit` once its hook exists.
#   nice bash benchmarks/fidelity_v2_cpu_tiny.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=benchmarks/results/fidelity_v2_cpu_tiny.jsonl
CAP=(--set "capacity.lrs=[0.001, 0.003, 0.01]" --set capacity.batch_size=16 --set capacity.steps=150)
COMMON=(--device cpu --scale tiny --families capacity probe --jsonl "$OUT" --max-seconds 0 "${CAP[@]}")
$PY benchmarks/bench_fidelity_v2.py "${COMMON[@]}" --budgets 1 --seeds 0 1 2
$PY benchmarks/bench_fidelity_v2.py "${COMMON[@]}" --budgets 4 --seeds 0
