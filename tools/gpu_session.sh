#!/usr/bin/env bash
# Steps of a GPU session on a lent device machine (no package index there; /tmp survives between back-to-back
# calls while the machine stays warm). Run from the repository root; each step is one call:
#
#   bash tools/gpu_session.sh stage-whl1        # carry .whl1: fla + z3 for tilelang      -> /tmp/site
#   bash tools/gpu_session.sh stage-whl2        # carry .whl2 .whl: tilelang -> /tmp/site2, .whl -> /tmp/site
#   bash tools/gpu_session.sh stage-whl         # carry .whl: fla, optuna, ... -> /tmp/site (no tilelang)
#   bash tools/gpu_session.sh stage-ray         # carry .rayx: Ray (stripped tarball) + its missing deps -> /tmp/site
#   bash tools/gpu_session.sh stage-hyla        # hyla itself (no deps) -> /tmp/site, benchmarks -> /tmp/hyla_bench
#   bash tools/gpu_session.sh grid-start ARGS   # paper grid in the background (setsid), survives the call:
#                                                    # bench_fidelity.py --layouts grid --seeds 0 --budgets 1 ARGS
#                                                    # (ARGS win); after stage-ray: an LM proxy runs on hyla's Ray workers
#   bash tools/gpu_session.sh tests ARGS        # pytest on the GPU-marked tests (-m gpu), log to $OUT
#   bash tools/gpu_session.sh tests-start ARGS  # the same in the background, log next to the grid's
#   bash tools/gpu_session.sh grid-wait SECONDS # wait for the grid (or SECONDS), copy its files to $OUT
#   bash tools/gpu_session.sh fidelity-v2 ARGS  # carry .whl: the recall-proxy calibration v2 (issue 31), one command:
#                                                    # stages .whl and hyla and starts bench_fidelity_v2.py --recipe
#                                                    # gpu-small ARGS in the background (setsid, no time cap), or finds
#                                                    # it running; waits up to $FV2_WAIT s (540), copies records,
#                                                    # analysis, cache JSON and log ($FV2_STATE, /tmp/hyla_fv2) to
#                                                    # $OUT. Call it again, back to back, until it says "finished"; a
#                                                    # fresh machine resumes from the records committed in
#                                                    # benchmarks/results (the teacher is retrained)
#
# Why the stages: a call carries at most 64 MiB. Ray's wheel is 76 MiB, so .rayx holds it unpacked, without its
# Java jars, RLlib, Serve and dashboard web client, as an xz tarball (see docs/gpu-machine.md); GatedDeltaNet on
# Hopper with triton 3.6 needs tilelang (fla issue #640; docs/gpu-notes.md), split over .whl1/.whl2 by tilelang_wheels.sh.
# .rayx comes from tools/make_rayx.sh. Every step exports the environment the others rely on (PYTHONPATH,
# the Triton/fla caches in /tmp); a background grid inherits it.
set -euo pipefail
REPO=$(pwd)
export PYTHONPATH=/tmp/site:/tmp/site2 TRITON_CACHE_DIR=/tmp/hyla_triton TRITON_CACHE_AUTOTUNING=1 \
    FLA_CACHE_MODE=fuzzy PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
OUT=${OUT:-/tmp/hyla_out}
GRID=/tmp/hyla_grid
# from /tmp, not the repo root: its hyla/ would shadow the installed package (space/ etc. map into it)
gpu_pytest() { (cd /tmp && python3 -m pytest "$REPO/tests" -m gpu -p no:cacheprovider -rA "$@"); }
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "$@"; }

case "${1:-}" in
  env) ;;  # sourced for the exports above
  stage-whl1) pipi --target /tmp/site .whl1/*.whl ;;
  stage-whl2)
    pipi --target /tmp/site2 .whl2/*.whl
    pipi --target /tmp/site .whl/*.whl ;;
  stage-whl) pipi --target /tmp/site .whl/*.whl ;;  # without GatedDeltaNet on Hopper: no tilelang needed
  stage-hyla)
    python3 -m pip install -q --no-deps --no-build-isolation --no-index --upgrade --target /tmp/site "$REPO"
    mkdir -p /tmp/hyla_bench && cp -r "$REPO"/benchmarks/. /tmp/hyla_bench/ ;;
  stage-ray)
    pipi --target /tmp/site .rayx/*.whl
    tar -xJf .rayx/ray.tar.xz -C /tmp/site
    python3 -c "import ray, ray.train.torch; print('ray', ray.__version__)" ;;
  grid-start)
    shift
    mkdir -p "$GRID"
    for f in bench_fidelity_grid.jsonl bench_fidelity_grid.json; do  # resume what earlier machines finished
      [ -f "$GRID/$f" ] || [ ! -f "$REPO/benchmarks/results/$f" ] || cp "$REPO/benchmarks/results/$f" "$GRID/"
    done
    # from copies in /tmp: the next call replaces the checkout while this keeps running
    setsid nohup python3 /tmp/hyla_bench/bench_fidelity.py --layouts grid --seeds 0 --budgets 1 \
      --jsonl "$GRID/bench_fidelity_grid.jsonl" --out "$GRID/bench_fidelity_grid.json" "$@" \
      > "$GRID/grid.log" 2>&1 < /dev/null &
    echo "grid started (pid $!)" ;;
  tests)
    shift
    mkdir -p "$OUT"
    set +e
    gpu_pytest -q "$@" 2>&1 | tee "$OUT/gpu_tests.log"
    status=${PIPESTATUS[0]}
    set -e
    echo "pytest exit $status" ;;
  tests-start)  # the same in the background (setsid): survives the call; grid-wait copies its log
    shift
    mkdir -p "$GRID"
    export -f gpu_pytest && export REPO
    setsid nohup bash -c 'gpu_pytest -v "$@"' gpu_pytest "$@" > "$GRID/gpu_tests.log" 2>&1 < /dev/null &
    echo "tests started" ;;
  grid-wait)
    limit=${2:-540}
    start=$(date +%s)
    while pgrep -f hyla_bench/bench_fidelity.py > /dev/null && (( $(date +%s) - start < limit )); do sleep 5; done
    mkdir -p "$OUT" && cp "$GRID"/* "$OUT"/ 2>/dev/null || true
    tail -n 15 "$GRID/grid.log" ;;
  fidelity-v2)
    shift
    FV2=${FV2_STATE:-/tmp/hyla_fv2}
    PY=${PYTHON:-python3}
    mkdir -p "$FV2/cache" "$OUT"
    records=$FV2/fidelity_v2_gpu_small.jsonl
    start=$(date +%s)
    # running: its pid lives and it wrote no exit status yet (a finished one may linger as a zombie)
    if [ -f "$FV2/rc" ] || ! { [ -f "$FV2/pid" ] && kill -0 "$(cat "$FV2/pid")" 2>/dev/null; }; then
      if [ "${FV2_STAGE:-1}" = 1 ]; then  # FV2_STAGE=0: hyla and its deps already importable (the CPU test)
        [ -d .whl ] && pipi --target /tmp/site .whl/*.whl
        python3 -m pip install -q --no-deps --no-build-isolation --no-index --upgrade --target /tmp/site "$REPO"
        rm -rf "$REPO/build"
        mkdir -p /tmp/hyla_bench && cp -r "$REPO"/benchmarks/. /tmp/hyla_bench/
        bench=/tmp/hyla_bench
      else
        bench=$REPO/benchmarks
      fi
      [ -f "$records" ] || [ ! -f "$REPO/benchmarks/results/fidelity_v2_gpu_small.jsonl" ] || \
        cp "$REPO/benchmarks/results/fidelity_v2_gpu_small.jsonl" "$records"
      rm -f "$FV2/rc"
      # in the background (setsid), from /tmp (the repo's hyla/ would shadow the installed package), no time cap:
      # a teacher longer than one call goes on while the calls come back to back
      (cd /tmp && setsid nohup bash -c '"$0" "$1/bench_fidelity_v2.py" --recipe gpu-small --jsonl "$2" \
        --cache-dir "$3/cache" --max-seconds 0 "${@:4}"; echo $? > "$3/rc"' "$PY" "$bench" "$records" "$FV2" "$@" \
        >> "$FV2/fidelity_v2_gpu.log" 2>&1 < /dev/null & echo $! > "$FV2/pid")
      echo "fidelity-v2 started (pid $(cat "$FV2/pid"))"
    else
      echo "fidelity-v2 running (pid $(cat "$FV2/pid")): waiting"
    fi
    while [ ! -f "$FV2/rc" ] && (( $(date +%s) - start < ${FV2_WAIT:-540} )); do sleep 5; done
    cp "$FV2/fidelity_v2_gpu.log" "$records" "${records%.jsonl}.analysis.json" "$OUT"/ 2>/dev/null || true
    for kind in teacher transfer capacity supernet; do  # the cache's JSON (recipes, scores, wall), not weights
      if [ -d "$FV2/cache/$kind" ]; then mkdir -p "$OUT/cache/$kind" && cp "$FV2/cache/$kind"/*.json "$OUT/cache/$kind/" 2>/dev/null || true; fi
    done
    tail -n 40 "$FV2/fidelity_v2_gpu.log"
    if [ -f "$FV2/rc" ]; then echo "fidelity-v2 finished (exit $(cat "$FV2/rc"))"; exit "$(cat "$FV2/rc")"; fi
    echo "fidelity-v2 still running: call the same command again (back to back, the machine must stay warm)" ;;
  *) echo "usage: gpu_session.sh env|stage-whl|stage-whl1|stage-whl2|stage-ray|stage-hyla|grid-start ARGS|tests ARGS|tests-start ARGS|grid-wait SECONDS|fidelity-v2 ARGS" >&2
     exit 2 ;;
esac
