#!/usr/bin/env python3
# Usage: python benches/llama_cpp_decode.py MODEL.gguf PROMPT_TOKENS GEN_TOKENS RUNS
# (with llama-cpp-python installed; see BENCHMARKS.md, "nemo vs llama.cpp").
# llama.cpp decode timing: same prompt ids as `nemo bench` (xorshift over the vocab),
# 2 threads, greedy, 128 single-token evals. Prints one JSON line per run.
import json, sys, time
import numpy as np
from llama_cpp import Llama
path = sys.argv[1]; n_prompt = int(sys.argv[2]); gen = int(sys.argv[3]); runs = int(sys.argv[4])
llm = Llama(model_path=path, n_threads=2, n_threads_batch=2, n_ctx=512, n_batch=512, verbose=False, logits_all=False)
vocab = llm.n_vocab()
s = 0x2545F4914F6CDD1D; M = (1 << 64) - 1; ids = []
for _ in range(n_prompt):
    s ^= (s << 13) & M; s ^= s >> 7; s ^= (s << 17) & M
    ids.append(s % vocab)
for r in range(runs):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t1 = time.perf_counter()
    steps = []
    for _ in range(gen):
        t = time.perf_counter()
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        steps.append(time.perf_counter() - t)
    dec = sum(steps)
    print(json.dumps({"prefill_tok_s": n_prompt / (t1 - t0), "decode_tok_s": gen / dec,
                      "p50_ms": 1000 * sorted(steps)[len(steps)//2]}), flush=True)
