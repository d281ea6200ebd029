#!/usr/bin/env bash
# Build .rayx/ (about 28 MiB) for `gpu_session.sh stage-ray`: Ray 2.60 for the device machine's Python 3.12,
# unpacked without its Java jars, RLlib, Serve and dashboard web client (none used by Ray Train), as an xz tarball,
# plus the wheels of Ray's dependencies that the device image lacks (its package list: device KINDS.md).
# The plain wheel is 76 MiB, over the 64 MiB a device call carries. Run from the repo root; takes ~3 min (xz -9).
set -euo pipefail
grep -qx '/.rayx/' .git/info/exclude 2>/dev/null || echo '/.rayx/' >> .git/info/exclude
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$tmp" \
  ray==2.60.0 jsonschema jsonschema-specifications referencing rpds-py pydantic pydantic-core annotated-types \
  typing-inspection dill colorful jsonpointer rfc3339-validator wcwidth
rm -rf .rayx && mkdir -p .rayx "$tmp/ray"
(cd "$tmp/ray" && unzip -q "$tmp"/ray-2.60.0-*.whl && rm -rf ray/jars ray/rllib ray/serve ray/dashboard/client/build)
tar -C "$tmp/ray" -cf - . | xz -9 -T2 > .rayx/ray.tar.xz
mv "$tmp"/*.whl .rayx/ && rm .rayx/ray-2.60.0-*.whl
du -sh .rayx
