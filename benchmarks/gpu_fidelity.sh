#!/usr/bin/env bash
# Proxy fidelity on one GPU in one device call (no package index there): stage fla (carry .whl), install hyla,
# time the recall probe through run_probes, then run bench_fidelity; everything lands in $OUT.
#
#   bash benchmarks/gpu_fidelity.sh SECONDS [bench_fidelity args...]     (carry: .whl)
#
# SECONDS caps bench_fidelity (no new probe starts after it; bench_fidelity resumes from the JSONL it is given).
set -euo pipefail
REPO=$(pwd)
OUT=${OUT:-/tmp/hyla_out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-deps --no-build-isolation --no-index --upgrade --target /tmp/site "$REPO" 2>&1 | tail -2
rm -rf "$REPO/build"
cap=$1
shift
cd /tmp  # the repo root's hyla/ would shadow the installed package
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$OUT/nvidia_smi.txt"
set +e
python3 "$REPO/benchmarks/bench_fidelity.py" --max-seconds "$cap" "$@" 2>&1 | tee "$OUT/bench_fidelity.log"
echo "bench_fidelity exit ${PIPESTATUS[0]}"
