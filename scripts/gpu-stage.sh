#!/usr/bin/env bash
# Builds nemo and the CUDA test binaries here, for a GPU machine elsewhere, and stages
# them in .gpu/ (git-ignored, small enough to travel): `nemo`, `cuda_ops`, `cuda_tc`,
# `cuda_moe`, `cuda_model`, `cuda_session`. There, from a checkout of the same commit:
#
#   NEMO_GPU_CHECK_PREBUILT=1 scripts/gpu-check.sh
#
# NEMO_CUDA_ARCHS picks the GPU (default sm_90: H100/H200); NVCC as for any cuda build.
set -euo pipefail
cd "$(dirname "$0")/.."
export NEMO_CUDA_ARCHS="${NEMO_CUDA_ARCHS:-sm_90}" NEMO_REQUIRE_NVCC=1
tests=(cuda_ops cuda_tc cuda_moe cuda_model cuda_session)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
cargo build --release --locked --features cuda --bin nemo
json=$(cargo test --release --locked --features cuda "${args[@]}" --no-run --message-format=json)
rm -rf .gpu && mkdir -p .gpu
cp target/release/nemo .gpu/nemo
for t in "${tests[@]}"; do
    exe=$(printf '%s\n' "$json" | python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name:
        print(m["executable"])
' "$t" | tail -1)
    [ -n "$exe" ] || { echo "gpu-stage: no executable for $t" >&2; exit 1; }
    cp "$exe" ".gpu/$t"
done
strip .gpu/* 2>/dev/null || true
du -sh .gpu
echo "gpu-stage: built for $NEMO_CUDA_ARCHS at $(git rev-parse --short HEAD); carry .gpu and run NEMO_GPU_CHECK_PREBUILT=1 scripts/gpu-check.sh" >&2
