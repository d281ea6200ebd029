#!/bin/bash
# The GPU calibration of issue 31 at `small` (24 x 256): every proxy family over the 25 calibration layouts,
# seeds 0-2, rung-0 budget and 4x, records in benchmarks/results/fidelity_v2_gpu_small.jsonl, then the checks.
# One call stays under 10 minutes (--max-seconds 540) and the records are appended as they finish: run the
# same command again until it reports 0 records to run for every family.
#   bash benchmarks/fidelity_v2_gpu.sh                      # all families
#   FAMILIES="capacity probe" bash benchmarks/fidelity_v2_gpu.sh
set -euo pipefail -f  # -f: no globbing of the [..] in the --set values
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
FAMILIES=${FAMILIES:-capacity retrofit probe}
# Capacity curves: 2-layer models need many more steps than the CPU table's 200/800 (at tiny on CPU, DeltaNet
# reached 0.64-0.67 after 750 steps, GLA 0.10 and GDN 0.06; attention solved by 150), hence 1000 (x4 at
# budget 4) and three lrs; a curve is shared by every layout of its kind and cached.
CAP=${CAP:---set capacity.steps=1000 --set capacity.lrs=[0.001,0.003,0.01]}
export HYLA_CACHE_DIR=${HYLA_CACHE_DIR:-$PWD/runs/hyla_cache}  # teacher and capacity curves, kept between calls
$PY benchmarks/bench_fidelity_v2.py --device cuda --scale small --families $FAMILIES --seeds 0 1 2 --budgets 1 4 \
    --jsonl benchmarks/results/fidelity_v2_gpu_small.jsonl --max-seconds ${MAX_SECONDS:-540} $CAP
