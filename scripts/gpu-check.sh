#!/usr/bin/env bash
# nemo on this machine's NVIDIA GPU, in one command: builds with `--features cuda` for the
# GPU found here, runs the CUDA op tests (tests/cuda_ops.rs: every kernel against its CPU
# oracle; a missing GPU is a failure here, not a skip), runs the GPU benchmark, and prints
# one table.
#
#   scripts/gpu-check.sh              build (release) + tests + bench
#   NEMO_GPU_CHECK_PREBUILT=1 ...     use target/release/nemo and the newest
#                                     target/release/deps/cuda_ops-* as they are (built
#                                     elsewhere with NEMO_CUDA_ARCHS=sm_XY)
#
# nvcc: $NVCC, $CUDA_HOME/bin/nvcc, PATH, or ./.venv-cuda (pip's nvidia-cuda-nvcc; created
# here with pip when none is found and PyPI is reachable).
set -uo pipefail
cd "$(dirname "$0")/.."

say() { printf '%s\n' "gpu-check: $*" >&2; }
die() { say "$*"; exit 1; }

command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA driver on this machine"
gpu_line=$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader | head -1) \
    || die "nvidia-smi sees no GPU"
IFS=',' read -r gpu_name cc driver mem <<<"$gpu_line"
gpu_name=$(echo "$gpu_name" | xargs); cc=$(echo "$cc" | xargs)
arch="sm_${cc/./}"
say "GPU: $gpu_name (compute capability $cc → $arch), driver $(echo "$driver" | xargs), $(echo "$mem" | xargs)"
# Kernels from nvcc 13 need a driver that supports CUDA 13 (R580+); an older driver needs
# an older nvcc (set NVCC, e.g. a CUDA 12 toolkit's).
drv_cuda=$(nvidia-smi | grep -o 'CUDA Version: [0-9.]*' | grep -o '[0-9.]*$' || true)
if [ -n "$drv_cuda" ] && [ "${drv_cuda%%.*}" -lt 13 ] && [ -z "${NVCC:-}" ]; then
    say "warning: the driver supports CUDA $drv_cuda; kernels built by nvcc 13 will not load on it: set NVCC to a CUDA ${drv_cuda%%.*} nvcc"
fi

# cuBLAS from a pip install, when the system has none on the library path.
for d in .venv-cuda/lib/python3*/site-packages/nvidia/cu13/lib .venv-cuda/lib/python3*/site-packages/nvidia/cublas/lib; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$PWD/$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done

if [ "${NEMO_GPU_CHECK_PREBUILT:-0}" != 1 ]; then
    if [ -z "${NVCC:-}" ]; then
        for c in "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "$(command -v nvcc || true)" .venv-cuda/lib/python3*/site-packages/nvidia/cu13/bin/nvcc; do
            if [ -n "$c" ] && [ -x "$c" ]; then NVCC=$(realpath "$c"); break; fi
        done
    fi
    if [ -z "${NVCC:-}" ]; then
        say "no nvcc: installing nvidia-cuda-nvcc 13.0 into .venv-cuda"
        python3 -m venv .venv-cuda && .venv-cuda/bin/pip install -q \
            "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
            "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*" || die "cannot install nvcc with pip"
        NVCC=$(ls "$PWD"/.venv-cuda/lib/python3*/site-packages/nvidia/cu13/bin/nvcc | head -1)
    fi
    export NVCC NEMO_REQUIRE_NVCC=1 NEMO_CUDA_ARCHS="${NEMO_CUDA_ARCHS:-$arch}"
    say "building for $NEMO_CUDA_ARCHS with $NVCC"
    cargo build --release --features cuda --bin nemo || die "build failed"
    cargo test --release --features cuda --test cuda_ops --no-run || die "test build failed"
fi

nemo=target/release/nemo
tests=$(ls -t target/release/deps/cuda_ops-* 2>/dev/null | grep -v '\.d$' | head -1)
[ -x "$nemo" ] || die "$nemo is missing"
[ -n "$tests" ] || die "no cuda_ops test binary under target/release/deps"

log=$(mktemp)
say "running the CUDA op tests (log: $log)"
NEMO_REQUIRE_GPU=1 "$tests" --test-threads=1 --nocapture >"$log" 2>&1
test_rc=$?

bench_json=$(mktemp)
say "running nemo bench --device cuda --shape nano-9b-v2"
"$nemo" bench --device cuda --shape nano-9b-v2 --json >"$bench_json" 2>"$bench_json.err"
bench_rc=$?

printf '\n%-72s %s\n' "check" "result"
printf '%-72s %s\n' "-----" "------"
grep -E '^test .* \.\.\. ' "$log" | sed -E 's/^test (.*) \.\.\. (.*)$/\1|\2/' |
    while IFS='|' read -r name res; do printf '%-72s %s\n' "$name" "$res"; done
if [ $bench_rc -eq 0 ]; then
    printf '%-72s %s\n' "bench nano-9b-v2 (json)" "$(tr -d '\n' <"$bench_json" | cut -c1-200)"
else
    printf '%-72s %s\n' "bench nano-9b-v2" "not run: $(head -1 "$bench_json.err")"
fi
printf '%-72s %s\n' "GPU" "$gpu_name ($arch)"
echo
if [ $test_rc -ne 0 ]; then
    say "tests FAILED; failures:"
    sed -n '/^failures:/,/^test result/p' "$log" >&2
    exit 1
fi
say "all CUDA op tests passed on $gpu_name"
