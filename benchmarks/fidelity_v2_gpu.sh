#!/bin/bash
# The GPU calibration of issue 31 at `small` (24 x 256): every proxy family over the 25 calibration layouts,
# seeds 0-2, rung-0 budget and 4x, records in benchmarks/results/fidelity_v2_gpu_small.jsonl, then the checks.
# One call stays under 10 minutes (--max-seconds 540) and the records are appended as they finish: run the
# same command again until it reports 0 records to run for every family.
#   bash benchmarks/fidelity_v2_gpu.sh                      # all families
#   FAMILIES="capacity probe" bash benchmarks/fidelity_v2_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
FAMILIES=${FAMILIES:-capacity retrofit probe}
export HYLA_CACHE_DIR=${HYLA_CACHE_DIR:-$PWD/runs/hyla_cache}  # teacher and capacity curves, kept between calls
$PY benchmarks/bench_fidelity_v2.py --device cuda --scale small --families $FAMILIES --seeds 0 1 2 --budgets 1 4 \
    --jsonl benchmarks/results/fidelity_v2_gpu_small.jsonl --max-seconds ${MAX_SECONDS:-540}
