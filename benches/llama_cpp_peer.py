#!/usr/bin/env python3
"""llama.cpp's side of benches/side_by_side.sh: the measurements `nemo bench --json` makes,
on the same GGUF file, with the same prompt ids (nemo's xorshift over the vocabulary).

    python llama_cpp_peer.py MODEL.gguf --prompt-tokens N --gen-tokens N --runs N
        [--threads 2] [--ttft 16,30,200] [--follow-up 164] [--flash-attn]

Per run: prefill of the prompt in one eval (llama.cpp splits it into its ubatches of
512), then GEN single-token evals, each followed by an argmax over the last logits (as
`nemo bench` does). TTFT sizes: the time to evaluate N tokens from an empty context
(fresh) and after FOLLOW_UP tokens already in the context (a chat follow-up: llama.cpp
keeps its cache between turns), plus the argmax. Prints one JSON object: medians over the
runs and the per-run values.
"""

import argparse
import json
import statistics
import time

import numpy as np
from llama_cpp import Llama


def prompt_ids(n, vocab):
    s, m, ids = 0x2545F4914F6CDD1D, (1 << 64) - 1, []
    for _ in range(n):
        s ^= (s << 13) & m
        s ^= s >> 7
        s ^= (s << 17) & m
        ids.append(s % vocab)
    return ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt-tokens", type=int, default=200)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ttft", default="")
    ap.add_argument("--follow-up", type=int, default=164)
    ap.add_argument("--flash-attn", action="store_true")
    a = ap.parse_args()
    sizes = [int(v) for v in a.ttft.split(",") if v]
    ctx = max([a.prompt_tokens + a.gen_tokens] + [a.follow_up + s for s in sizes]) + 16
    llm = Llama(
        model_path=a.model, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=ctx,
        n_batch=2048, n_ubatch=512, flash_attn=a.flash_attn, verbose=False,
    )
    vocab = llm.n_vocab()
    ids = prompt_ids(max([a.prompt_tokens] + [a.follow_up + s for s in sizes]), vocab)

    def argmax():
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))))

    runs = []
    for _ in range(a.runs):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids[: a.prompt_tokens])
        tok = argmax()
        t1 = time.perf_counter()
        steps = []
        for _ in range(a.gen_tokens):
            t = time.perf_counter()
            llm.eval([tok])
            tok = argmax()
            steps.append(time.perf_counter() - t)
        run = {
            "prefill_tok_s": a.prompt_tokens / (t1 - t0),
            "ttft_ms": 1e3 * (t1 - t0),
            "decode_tok_s": a.gen_tokens / sum(steps),
            "decode_ms_p50": 1e3 * sorted(steps)[len(steps) // 2],
        }
        for s in sizes:
            llm.reset()
            t = time.perf_counter()
            llm.eval(ids[:s])
            argmax()
            run[f"ttft_fresh_{s}_ms"] = 1e3 * (time.perf_counter() - t)
            llm.reset()
            llm.eval(ids[: a.follow_up])
            t = time.perf_counter()
            llm.eval(ids[a.follow_up : a.follow_up + s])
            argmax()
            run[f"ttft_follow_up_{s}_ms"] = 1e3 * (time.perf_counter() - t)
        runs.append(run)
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out.update(model=a.model, threads=a.threads, prompt_tokens=a.prompt_tokens,
               gen_tokens=a.gen_tokens, flash_attn=a.flash_attn, runs=runs)
    print(json.dumps(out))


main()
