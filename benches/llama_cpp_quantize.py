#!/usr/bin/env python3
"""Quantizes a GGUF file with llama.cpp's own quantizer (llama-cpp-python's
`llama_model_quantize`), requantizing already-quantized tensors when asked.

    python llama_cpp_quantize.py SRC.gguf DST.gguf TYPE [--allow-requantize]

TYPE: q4_0 q4_1 q8_0 q4_k_m q5_k_m q6_k f16 bf16 (llama.cpp's mixes: q4_k_m keeps some
tensors in q6_k, q5_k_m in q6_k; tensors whose rows are not a multiple of 256 fall back to
q5_0 / q5_1 / q8_0, which nemo does not load for the first two).
"""

import sys

import llama_cpp

FTYPES = {
    "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
    "bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
}

src, dst, kind = sys.argv[1:4]
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = FTYPES[kind]
p.nthread = 2
p.allow_requantize = "--allow-requantize" in sys.argv[4:]
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p)
sys.exit(f"llama_model_quantize {src} -> {dst} ({kind}): {rc}" if rc != 0 else 0)
