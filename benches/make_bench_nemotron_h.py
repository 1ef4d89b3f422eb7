#!/usr/bin/env python3
"""A random-weight Nemotron-H model at a bench size (about 280M parameters), as a Hugging
Face folder in the published form (config.json with `hybrid_override_pattern`,
model.safetensors, the tokenizer of tests/fixtures/nemotron_h_tiny). Speed does not depend
on the values; they are scaled like the fixtures' (make_fixtures.py) so activations stay
finite. Run by benches/side_by_side.sh, which converts the folder with llama.cpp's own
converter; needs numpy and safetensors.

    python make_bench_nemotron_h.py ROOT OUT_DIR

Shape: Nano 9B v2's first 24 layers (`M-M-M-MM-M-M-M*-M-M-M*-M`: 12 Mamba2, 10 MLP,
2 attention) at hidden 1024: 32 Mamba heads x 64, d_state 128, 8 groups, chunk 128;
8 query / 2 KV heads x 128; MLP 3584; vocab 49152 (the 500-token fixture tokenizer, padded
by the converter). Every matrix width is a multiple of 256, so every K-quant applies.
"""

import json
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import save_file

ROOT, OUT = sys.argv[1], sys.argv[2]
FIXTURE = os.path.join(ROOT, "tests/fixtures/nemotron_h_tiny")

PATTERN = "M-M-M-MM-M-M-M*-M-M-M*-M"
HIDDEN, VOCAB = 1024, 49152
M_HEADS, M_HEAD_DIM, D_STATE, GROUPS, CONV, CHUNK = 32, 64, 128, 8, 4, 128
HEADS, KV_HEADS, HEAD_DIM = 8, 2, 128
FFN = 3584
D_INNER = M_HEADS * M_HEAD_DIM
CONV_DIM = D_INNER + 2 * GROUPS * D_STATE
IN_PROJ = 2 * D_INNER + 2 * GROUPS * D_STATE + M_HEADS


def config():
    with open(os.path.join(FIXTURE, "config.json")) as f:
        c = json.load(f)
    c.update(
        hidden_size=HIDDEN, vocab_size=VOCAB, hybrid_override_pattern=PATTERN,
        num_hidden_layers=len(PATTERN), mamba_num_heads=M_HEADS, mamba_head_dim=M_HEAD_DIM,
        ssm_state_size=D_STATE, n_groups=GROUPS, conv_kernel=CONV, chunk_size=CHUNK,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
        attention_head_dim=HEAD_DIM, intermediate_size=FFN, max_position_embeddings=8192,
        torch_dtype="float32",
    )
    # json.dump writes inf as `Infinity`, the published form transformers 4.57 reads.
    c["time_step_limit"] = [0.0, float("inf")]
    return c


def weights():
    rng = np.random.default_rng(20260315)

    def n(shape, std):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    def norm(size):
        return (1.0 + 0.1 * rng.standard_normal(size)).astype(np.float32)

    w = {"backbone.embeddings.weight": n((VOCAB, HIDDEN), 1.0)}
    for i, kind in enumerate(PATTERN):
        p = f"backbone.layers.{i}."
        w[p + "norm.weight"] = norm(HIDDEN)
        m = p + "mixer."
        if kind == "M":
            w[m + "in_proj.weight"] = n((IN_PROJ, HIDDEN), HIDDEN**-0.5)
            w[m + "conv1d.weight"] = n((CONV_DIM, 1, CONV), CONV**-0.5)
            w[m + "conv1d.bias"] = n((CONV_DIM,), 0.1)
            dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), M_HEADS))
            w[m + "dt_bias"] = (dt + np.log(-np.expm1(-dt))).astype(np.float32)
            w[m + "A_log"] = np.log(rng.uniform(1.0, 16.0, M_HEADS)).astype(np.float32)
            w[m + "D"] = np.ones(M_HEADS, np.float32)
            w[m + "norm.weight"] = norm(D_INNER)
            w[m + "out_proj.weight"] = n((HIDDEN, D_INNER), D_INNER**-0.5)
        elif kind == "*":
            w[m + "q_proj.weight"] = n((HEADS * HEAD_DIM, HIDDEN), HIDDEN**-0.5)
            w[m + "k_proj.weight"] = n((KV_HEADS * HEAD_DIM, HIDDEN), HIDDEN**-0.5)
            w[m + "v_proj.weight"] = n((KV_HEADS * HEAD_DIM, HIDDEN), HIDDEN**-0.5)
            w[m + "o_proj.weight"] = n((HIDDEN, HEADS * HEAD_DIM), (HEADS * HEAD_DIM) ** -0.5)
        else:
            w[m + "up_proj.weight"] = n((FFN, HIDDEN), HIDDEN**-0.5)
            w[m + "down_proj.weight"] = n((HIDDEN, FFN), FFN**-0.5)
    w["backbone.norm_f.weight"] = norm(HIDDEN)
    w["lm_head.weight"] = n((VOCAB, HIDDEN), 2.5 * HIDDEN**-0.5)
    return w


os.makedirs(OUT, exist_ok=True)
with open(os.path.join(OUT, "config.json"), "w") as f:
    json.dump(config(), f, indent=2)
for name in ["generation_config.json", "tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(os.path.join(FIXTURE, name), os.path.join(OUT, name))
w = weights()
save_file(w, os.path.join(OUT, "model.safetensors"))
print(f"{OUT}: {sum(v.size for v in w.values()) / 1e6:.1f}M parameters, pattern {PATTERN}")
