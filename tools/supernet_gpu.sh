#!/usr/bin/env bash
# The supernet benchmark on one GPU (issue 32), one command: benchmarks/bench_supernet.py's throughput at `small`
# (the supernet over gla/gdn/hgrn2/deltanet per layer, free placement, head-wise layers; its teacher trained only
# long enough to time the scoring, which does not depend on the weights), then validity and placement at `tiny` on
# the MQAR-only level set of the CPU run (teacher 700 + 500 steps, stand-alone retrofit runs for 3 seeds) until
# MAX_SECONDS (default 500, counted after the staging; every run is cut there) are spent. In $OUT:
# supernet_gpu.json (the result; the parts that ended), supernet_gpu.jsonl (one record per stand-alone run),
# supernet_gpu.log, nvidia_smi.txt. The cache and the records stay in $STATE (default /tmp/hyla_supernet, alive
# while the machine stays warm): the same command again continues where the last one stopped.
#
#   bash tools/supernet_gpu.sh                     # on the device: carry .whl (fla, optuna)
#   SETS="--set supernet.score.chunk=64" bash tools/supernet_gpu.sh      # overrides for both runs
#   VALIDITY_ARGS="--seeds 2 --budgets 2" bash tools/supernet_gpu.sh    # arguments of the second run only
#   DEVICE=cpu SCALE=mini LAYOUTS=6 SETS="..." bash tools/supernet_gpu.sh # the CPU smoke
#                                                                             # (tests/benchmarks/test_bench_supernet.py)
set -euo pipefail -f  # -f: no globbing of the [..] in --set values
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-small}
LAYOUTS=${LAYOUTS:-1000}
OUT=${OUT:-/tmp/hyla_out}
STATE=${STATE:-/tmp/hyla_supernet}
MAX_SECONDS=${MAX_SECONDS:-500}
LEVELS=${LEVELS:-exp-mqar64:64:2,4,8,16:64}
mkdir -p "$OUT" "$STATE/cache"
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
if [ "$DEVICE" = cuda ]; then
  # the device has no package index: fla and optuna from the carried wheels, hyla itself (no deps) into /tmp/site
  export PYTHONPATH=/tmp/site
  if [ -d .whl ]; then bash tools/gpu_session.sh stage-whl; fi
  bash tools/gpu_session.sh stage-hyla 2>&1 | tail -2
  rm -rf "$REPO/build"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$OUT/nvidia_smi.txt"
fi
T0=$SECONDS
left() { echo $((MAX_SECONDS - (SECONDS - T0))); }
# the result JSON lives in $OUT while a run writes it (a cut call still returns what ended), the records in $STATE
[ ! -f "$STATE/supernet_gpu.json" ] || cp "$STATE/supernet_gpu.json" "$OUT/"
BENCH=("$PY" "$REPO/benchmarks/bench_supernet.py" --device "$DEVICE" --cache-dir "$STATE/cache"
       --out "$OUT/supernet_gpu.json" --records "$STATE/supernet_gpu.jsonl")
set +e
# from /tmp: the checkout's hyla/ would shadow the installed package
(cd /tmp && timeout "$(left)" "${BENCH[@]}" --parts throughput --scale "$SCALE" --layouts "$LAYOUTS" --chunk 64 \
  --set retrofit.teacher.recall_steps=300 --set retrofit.teacher.mix_steps=100 --set retrofit.teacher.solved_at=0 \
  --set retrofit.teacher.retries=0 --set retrofit.transfer.steps=100 ${SETS:-}) 2>&1 | tee -a "$OUT/supernet_gpu.log"
rc=${PIPESTATUS[0]}
RESERVE=${RESERVE:-120}  # no new stand-alone run starts in the last RESERVE seconds
if [ "$rc" = 0 ] && [ "$(left)" -gt $((RESERVE + 30)) ]; then
  (cd /tmp && timeout "$(left)" "${BENCH[@]}" --parts validity placement --max-seconds $(($(left) - RESERVE)) \
    --mqar-levels "$LEVELS" --set "retrofit.levels=${LEVELS%%:*}" --set retrofit.seq_len=64 \
    --set retrofit.teacher.recall_steps=700 --set retrofit.teacher.mix_steps=500 --set retrofit.transfer.steps=200 \
    ${SETS:-} ${VALIDITY_ARGS:-}) 2>&1 | tee -a "$OUT/supernet_gpu.log"
  rc=${PIPESTATUS[0]}
fi
set -e
cp "$OUT/supernet_gpu.json" "$STATE/" 2>/dev/null || true
cp "$STATE/supernet_gpu.jsonl" "$OUT/" 2>/dev/null || true
exit "$rc"
