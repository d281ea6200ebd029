#!/usr/bin/env bash
# Run benchmarks/gpu_equivalence.py with one process per mixer kind in parallel (Triton compilation and autotuning,
# not the GPU, dominate a cold run: ~70 s per kind and dtype), merge the parts, then run the GPU-marked tests.
# Usage (repo root, hyla importable): [EQ_ARGS="--dtypes bfloat16"] [SKIP_TESTS=1] bash tools/gpu_equivalence_parallel.sh OUT_DIR [KINDS...]
set -uo pipefail
out=${1:?usage: gpu_equivalence_parallel.sh OUT_DIR [KINDS...]}; shift
kinds=("$@"); [ ${#kinds[@]} -gt 0 ] || kinds=(attn hgrn retnet gla hgrn2 deltanet gdn mamba2 headwise)
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out/parts"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/hyla_triton}
for k in "${kinds[@]}"; do
  python3 "$repo/benchmarks/gpu_equivalence.py" --kinds "$k" --skip-timing ${EQ_ARGS:-} --max-seconds "${MAX_SECONDS:-420}" \
    --out "$out/parts/$k.json" > "$out/parts/$k.log" 2>&1 &
done
# The GPU tests, from outside the repo so that `hyla` resolves to the installed package, not ./hyla.
[ -n "${SKIP_TESTS:-}" ] || (cd /tmp && timeout "${MAX_SECONDS:-420}" python3 -m pytest -q -m gpu -p no:cacheprovider \
  "$repo/tests/test_mixers_attention.py" "$repo/tests/test_mixers_linear_a.py" "$repo/tests/test_mixers_linear_b.py" \
  > "$out/gpu_tests.log" 2>&1; echo "pytest exit $?" >> "$out/gpu_tests.log") &
wait
python3 "$repo/benchmarks/gpu_equivalence.py" --merge "$out"/parts/*.json --out "$out/gpu_equivalence.json"
[ -n "${SKIP_TESTS:-}" ] || tail -3 "$out/gpu_tests.log"
