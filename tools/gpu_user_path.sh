#!/usr/bin/env bash
# The user's path on one GPU machine through hyla's own commands (issue 15), in three back-to-back device calls
# (a call lasts at most 10 min; /tmp survives while the machine stays warm). Run from the repo root with
# .whl (gpu_wheels), .rayx (tools/make_rayx.sh) and .gpu_data/wikitext-2 (a copy of ../shared/data/wikitext-2)
# carried:
#
#   bash tools/gpu_user_path.sh a      # stage; hyla search run examples/gpu_study.yaml (Ray, 0.25 GPU/worker,
#                                           # 12 trials, 2 rungs); the promoted 340m spec, shortened to 300 steps of
#                                           # 16k tokens of WikiText-2 (byte tokenizer); hyla train --dry-run
#   bash tools/gpu_user_path.sh train  # hyla train, SIGKILLed after step 110 (its step-100 checkpoint), resumed
#   bash tools/gpu_user_path.sh b   # wait for the run; hyla analysis export --checkpoint; load the export in
#                                        # fla's class and AutoModelForCausalLM (benchmarks/gpu_export_check.py)
# Logs and JSON go to $OUT (results worth keeping: their JSON into benchmarks/results/, notes into docs/gpu-notes.md).
set -uo pipefail
REPO=$(pwd)
W=/tmp/hyla_user_path
source tools/gpu_session.sh env
export PATH=/tmp/site/bin:$PATH
OUT=${OUT:-/tmp/hyla_out}
mkdir -p "$OUT" "$W"
hyla() { (cd "$W" && python3 -m hyla "$@"); }
short_spec() {  # the promoted spec, shortened: 300 steps of 16k WikiText-2 byte tokens, small eval
  python3 - "$1" "$W/train_340m.yaml" <<'PY'
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))
spec.update(text={"source": "stdlib", "max_docs": None}, tokenizer="byte", seq_len=2048,
            micro_batch=8, global_batch_tokens=16384, tokens=300 * 16384, warmup_steps=30, checkpoint_every=100,
            log_every=10, out_dir="/tmp/hyla_user_path/runs/full_340m", num_workers=1, use_gpu=True,
            eval={"val_tokens": 65536, "batch_size": 8, "recall_multiples": [1], "recall_examples": 16})
yaml.safe_dump(spec, open(sys.argv[2], "w"), sort_keys=False)
PY
}
train_running() { pgrep -f "m hyla train" > /dev/null; }

case "${1:-}" in
  a)
    bash tools/gpu_session.sh stage-whl && bash tools/gpu_session.sh stage-ray \
      && bash tools/gpu_session.sh stage-hyla || exit 1
    cp examples/gpu_study.yaml "$W/" && cp -r .gpu_data/wikitext-2 "$W/"
    nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt"
    t0=$(date +%s)
    hyla search run gpu_study.yaml 2>&1 | tail -n 60 > "$OUT/search.log"
    echo "search_wall_s $(( $(date +%s) - t0 ))" >> "$OUT/search.log"
    hyla search status gpu_study.yaml > "$OUT/status.txt" 2>&1
    ls "$W"/hyla_runs/gpu_study/full_runs/ > "$OUT/full_runs.txt"
    spec=$(ls "$W"/hyla_runs/gpu_study/full_runs/*-340m.yaml | head -n 1)
    cp "$spec" "$OUT/promoted_340m.yaml"
    short_spec "$spec"
    hyla train train_340m.yaml --dry-run > "$OUT/dry_run.txt" 2>&1
    ;;
  train)  # the promoted spec (from `a`, or tools/gpu_user_path_promoted_340m.yaml on a fresh machine)
    [ -f /tmp/site/hyla/__init__.py ] || { bash tools/gpu_session.sh stage-whl && bash tools/gpu_session.sh \
      stage-ray && bash tools/gpu_session.sh stage-hyla && cp examples/gpu_study.yaml "$W/" \
      && cp -r .gpu_data/wikitext-2 "$W/" || exit 1; }
    short_spec tools/gpu_user_path_promoted_340m.yaml
    run_until() {  # $1 log, $2 seconds: hyla train in its own session, SIGKILLed (whole group) at $2 s or step >= 110
      (cd "$W" && exec setsid python3 -m hyla train train_340m.yaml > "$1" 2>&1 < /dev/null) & local pid=$!
      local start=$(date +%s)
      while kill -0 $pid 2> /dev/null && (( $(date +%s) - start < $2 )); do
        [ -n "${3:-}" ] && grep -q '"step": 1[1-9]0' "$W/runs/full_340m/train_log.jsonl" 2>/dev/null && break
        sleep 2; done
      kill -9 -- -$pid 2> /dev/null; wait $pid 2> /dev/null; ray stop --force > /dev/null 2>&1
      echo "[gpu_user_path] stopped after $(( $(date +%s) - start )) s" >> "$1"; }
    run_until "$W/train1.log" 200 kill-at-110
    cp "$W/runs/full_340m/train_log.jsonl" "$OUT/train_log_before_kill.jsonl" 2>/dev/null
    run_until "$W/train2.log" 170
    cp "$W"/train*.log "$W/runs/full_340m/train_log.jsonl" "$OUT/" 2>/dev/null
    find "$W/runs/full_340m" -maxdepth 2 > "$OUT/run_dir.txt"; cp "$W"/runs/full_340m/*.json "$OUT/" 2>/dev/null
    tail -n 3 "$W/runs/full_340m/train_log.jsonl"; grep -v "^\s*$" "$W/train2.log" | tail -n 12 ;;
  b)
    start=$(date +%s)
    while train_running && (( $(date +%s) - start < 400 )); do sleep 5; done
    cp "$W"/train*.log "$OUT/"; find "$W/runs/full_340m" -maxdepth 3 > "$OUT/run_dir.txt"
    cp "$W"/runs/full_340m/*.json "$OUT/" 2>/dev/null
    hyla analysis export gpu_study.yaml --pick best-recall --checkpoint runs/full_340m --out export_340m \
      > "$OUT/export.log" 2>&1
    cp "$W"/export_340m/*.txt "$W"/export_340m/*.json "$OUT/" 2>/dev/null
    (cd "$W" && python3 /tmp/hyla_bench/gpu_export_check.py export_340m --out "$OUT" --flash-attn-standin) \
      > "$OUT/export_check.log" 2>&1
    tail -n 20 "$OUT/export_check.log" ;;
  *) echo "usage: gpu_user_path.sh a|b" >&2; exit 2 ;;
esac
