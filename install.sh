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
echo "install.sh: building nemo (release)..."
cargo build --release --locked
mkdir -p "$PREFIX/bin"
tmp="$PREFIX/bin/.nemo.tmp.$$"
cp target/release/nemo "$tmp"
mv -f "$tmp" "$PREFIX/bin/nemo"
echo "install.sh: installed $PREFIX/bin/nemo"
case ":$PATH:" in
  *":$PREFIX/bin:"*) ;;
  *) echo "install.sh: note: $PREFIX/bin is not on your PATH; add it, e.g. export PATH=\"$PREFIX/bin:\$PATH\"" ;;
esac
