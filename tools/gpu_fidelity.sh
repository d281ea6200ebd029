#!/usr/bin/env bash
# Proxy fidelity on one GPU in one device call (no package index there): stage fla (carry .whl), install hyla,
# time the recall probe through run_probes, then run bench_fidelity; everything lands in $OUT.
#
#   bash tools/gpu_fidelity.sh SECONDS [bench_fidelity args...]     (carry: .whl; LM proxies also need Ray: .rayx, see gpu_session.sh stage-ray)
#
# SECONDS caps bench_fidelity (no new probe starts after it; bench_fidelity resumes from the JSONL it is given).
# The H200 runs in benchmarks/results/probe_h200/ (files written to $OUT, then copied there; the probe's fields were
# then spelled recall_probe.KEY, now recall.KEY):
#   calibration_t128_w64_600:  ... 280 --proxy benchmarks/fidelity_gpu.yaml --layouts calibration --budgets 1 4 \
#       --variant "t128:recall_probe.seq_len=128;recall_probe.pairs=[2,4,8,16,32];recall_probe.scan_chunk=16;recall_probe.steps=600" \
#       --jsonl $OUT/bench_fidelity_h200.jsonl --out $OUT/bench_fidelity_h200.json
#   (the small preset's probe was then width 64, batch 32, lr 1e-3; ablations: add ;recall_probe.lrs=[0.003] or
#    ;recall_probe.width=128, --layouts transformer gla-3:1 gdn-pure [gdn-3:1 deltanet-pure], --seeds 0)
#   speed: python3 benchmarks/bench_probe_speed.py --layouts gla-pure transformer hgrn2-pure gdn-pure \
#       --concurrent 1 16 --steps 60 --variant "t128:seq_len=128;pairs=[2,4,8,16,32];scan_chunk=16"
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
args=()
for a in "$@"; do  # paths relative to the repo (e.g. --proxy benchmarks/fidelity_gpu.yaml) survive the cd below
  if [ -e "$REPO/$a" ]; then args+=("$REPO/$a"); else args+=("$a"); fi
done
set -- "${args[@]}"
cd /tmp  # the repo root's hyla/ would shadow the installed package
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee "$OUT/nvidia_smi.txt"
set +e
if [ -n "${PROBE_SPEED:-}" ]; then  # e.g. PROBE_SPEED="--layouts gdn-3:1 --concurrent 1 6 12 --steps 60"
  python3 - <<'PY' 2>&1 | tee "$OUT/vmap_check.log"
import torch, warnings
torch._C._functorch._set_vmap_fallback_warning_enabled(True)
q = torch.randn(6, 4, 2, 128, 32, device="cuda", dtype=torch.bfloat16)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    torch.func.vmap(lambda a: torch.nn.functional.scaled_dot_product_attention(a, a, a, is_causal=True))(q)
print("sdpa under vmap on cuda: fallback warnings:", [str(x.message)[:100] for x in w])
PY
  # shellcheck disable=SC2086
  python3 "$REPO/benchmarks/bench_probe_speed.py" $PROBE_SPEED --out "$OUT/bench_probe_speed.json" 2>&1 \
    | tee "$OUT/bench_probe_speed.log"
fi
python3 "$REPO/benchmarks/bench_fidelity.py" --max-seconds "$cap" "$@" 2>&1 | tee -a "$OUT/bench_fidelity.log"
echo "bench_fidelity exit ${PIPESTATUS[0]}"
