#!/usr/bin/env bash
# Builds a release nemo and puts it on the PATH: $PREFIX/bin/nemo (PREFIX defaults to ~/.local).
# SIMD paths are picked at run time, so the binary is portable across x86-64 / aarch64 CPUs.
set -euo pipefail
cd "$(dirname "$0")"
PREFIX="${PREFIX:-$HOME/.local}"
if ! command -v cargo >/dev/null 2>&1; then
  echo "install.sh: cargo not found; install Rust first (https://rustup.rs)" >&2
  exit 1
fi
# The CUDA backend (cargo feature `cuda`) when this machine has an NVIDIA driver and GPU:
# kernels built for this GPU's arch only, with nvcc from CUDA_HOME / PATH, or nvcc 13.0.x from
# pip into .venv-cuda. nvcc must not be newer than the driver (PTX from a newer nvcc does not
# load), so pip's nvcc 13 is used only with a driver for CUDA 13 or later.
# NEMO_INSTALL_CUDA=0 skips all of this; NEMO_INSTALL_CUDA=1 makes a failure fatal.
features=()
want_cuda="${NEMO_INSTALL_CUDA:-auto}"
cuda_skip() {
  if [ "$want_cuda" = 1 ]; then echo "install.sh: $1" >&2; exit 1; fi
  echo "install.sh: building for the CPU only: $1"
}
if [ "$want_cuda" != 0 ] && command -v nvidia-smi >/dev/null 2>&1; then
  cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .')"
  drv_cuda="$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\)\..*/\1/p' | head -n1)"
  nvcc="${NVCC:-}"
  [ -z "$nvcc" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ] && nvcc="$CUDA_HOME/bin/nvcc"
  [ -z "$nvcc" ] && command -v nvcc >/dev/null 2>&1 && nvcc="$(command -v nvcc)"
  if [ -z "$cap" ]; then
    cuda_skip "nvidia-smi found no GPU"
  else
    if [ -z "$nvcc" ] && [ "${drv_cuda:-0}" -ge 13 ]; then
      echo "install.sh: no nvcc found; installing nvcc 13.0 with pip into .venv-cuda"
      python3 -m venv .venv-cuda && .venv-cuda/bin/pip install -q "nvidia-cuda-nvcc==13.0.*" \
        "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" \
        "nvidia-nvvm==13.0.*" \
        && nvcc="$(find .venv-cuda -path '*nvidia/cu13/bin/nvcc' -type f | head -n1)"
    fi
    if [ -z "$nvcc" ]; then
      cuda_skip "no nvcc (the driver supports CUDA ${drv_cuda:-?}; install a CUDA toolkit no newer than that, or set NVCC)"
    else
      nv_major="$("$nvcc" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')"
      if [ -n "$drv_cuda" ] && [ -n "$nv_major" ] && [ "$nv_major" -gt "$drv_cuda" ]; then
        cuda_skip "$nvcc is CUDA $nv_major but the driver supports CUDA $drv_cuda; point NVCC at an older toolkit or update the driver"
      else
        echo "install.sh: CUDA build for sm_$cap with $nvcc"
        export NVCC="$nvcc" NEMO_CUDA_ARCHS="sm_$cap" NEMO_REQUIRE_NVCC=1
        features=(--features cuda)
      fi
    fi
  fi
fi
echo "install.sh: building nemo (release)..."
cargo build --release --locked "${features[@]}"
mkdir -p "$PREFIX/bin"
tmp="$PREFIX/bin/.nemo.tmp.$$"
cp target/release/nemo "$tmp"
mv -f "$tmp" "$PREFIX/bin/nemo"
echo "install.sh: installed $PREFIX/bin/nemo"
case ":$PATH:" in
  *":$PREFIX/bin:"*) ;;
  *) echo "install.sh: note: $PREFIX/bin is not on your PATH; add it, e.g. export PATH=\"$PREFIX/bin:\$PATH\"" ;;
esac
