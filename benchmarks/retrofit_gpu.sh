#!/usr/bin/env bash
# The retrofit proxy on one GPU (issue 31), one command: the teacher, its stage-1 transfers, then the calibration
# set (the Transformer; gla, gdn, hgrn2, deltanet at 24:1, 12:1, 6:1, 3:1, pure; retnet, hgrn pure and 6:1) x seeds
# 0 1 2 at the `small` shape (24 x 256), through the calibration driver benchmarks/bench_fidelity_v2.py
# (--families retrofit). Everything lands in $OUT:
#   fidelity_v2_gpu_small_retrofit.jsonl  one record per (layout, seed, budget): recall, per-level scores, floor,
#                                         LM loss / KL / scores before stage 2 (extra), wall times, the machine
#   retrofit_gpu.log, nvidia_smi.txt, cache/*.json (teacher: per-level scores, seed, wall; transfers: per-layer
#   relative errors before/after)
# One call stays under 10 minutes (MAX_SECONDS, default 540 for the driver). Records and the cache (teacher and
# transfers) are kept in $STATE (default /tmp/hyla_retrofit, alive while the machine stays warm): run the same
# command again until the log says "0 of ... records to run". A fresh machine starts over unless $STATE/records.jsonl
# is put back (e.g. from a previous $OUT).
#
#   bash benchmarks/retrofit_gpu.sh                     # on the device: carry .whl (fla; ../shared/gpu/wheels.sh)
#   BUDGETS="1 4" bash benchmarks/retrofit_gpu.sh       # also the 4x budget (the Consistent check)
#   SETS="--set retrofit.teacher.recall_steps=2000" bash benchmarks/retrofit_gpu.sh   # recipe overrides
#   DEVICE=cpu SCALE=tiny LAYOUTS="transformer gla-pure gla-3:1" SEEDS=0 SETS="..." bash benchmarks/retrofit_gpu.sh
#                                                       # the CPU check (tests/test_retrofit_gpu_script.py)
# The teacher must solve every level (retrofit.teacher.solved_at, 0.9), else the run stops with a one-line error
# naming the level; SOLVED_AT=0 scores anyway (the teacher's per-level scores are in cache/teacher/*.json).
set -euo pipefail -f  # -f: no globbing of the [..] in --set values
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-small}
SEEDS=${SEEDS:-0 1 2}
BUDGETS=${BUDGETS:-1}
LAYOUTS=${LAYOUTS:-calibration}
OUT=${OUT:-/tmp/hyla_out}
STATE=${STATE:-/tmp/hyla_retrofit}
mkdir -p "$OUT" "$STATE/cache"
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True HYLA_CACHE_DIR="$STATE/cache"
if [ "$DEVICE" = cuda ]; then
  # the device has no package index: fla from the carried wheels, hyla itself (no deps) into /tmp/site
  export PYTHONPATH=/tmp/site
  if [ -d .whl ]; then
    set +f; $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; set -f
  fi
  $PY -m pip install -q --no-deps --no-build-isolation --no-index --upgrade --target /tmp/site "$REPO" 2>&1 | tail -2
  rm -rf "$REPO/build"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$OUT/nvidia_smi.txt"
fi
JSONL="$STATE/records.jsonl"
# the retrofit runs the linear mixers' PyTorch path on CUDA (retrofit.kernels: torch): no Triton compilation
set +e
(cd /tmp && $PY "$REPO/benchmarks/bench_fidelity_v2.py" --device "$DEVICE" --scale "$SCALE" --families retrofit \
  --layouts $LAYOUTS --seeds $SEEDS --budgets $BUDGETS --jsonl "$JSONL" --cache-dir "$STATE/cache" \
  --max-seconds "${MAX_SECONDS:-540}" --set "retrofit.teacher.solved_at=${SOLVED_AT:-0.9}" \
  --set retrofit.teacher.check_every=100 ${SETS:-}) 2>&1 | tee -a "$OUT/retrofit_gpu.log"
rc=${PIPESTATUS[0]}
set -e
cp "$JSONL" "$OUT/fidelity_v2_${DEVICE/cuda/gpu}_${SCALE}_retrofit.jsonl" 2>/dev/null || true
for kind in teacher transfer; do
  if [ -d "$STATE/cache/$kind" ]; then
    mkdir -p "$OUT/cache/$kind"
    set +f; cp "$STATE/cache/$kind"/*.json "$OUT/cache/$kind/" 2>/dev/null || true; set -f
  fi
done
exit "$rc"
