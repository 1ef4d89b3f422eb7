#!/usr/bin/env python3
"""nemo against llama.cpp on the same GGUF files, alternating the two, and the ratio table
of BENCHMARKS.md ("nemo vs llama.cpp, side by side"). Run by benches/side_by_side.sh
(which builds the peer and makes the models); standard library only.

    python3 side_by_side.py --nemo target/release/nemo --llama-python VENV/bin/python \\
        [--simd avx2] [--prompts 200,2000] [--gen 64] [--rounds 3] [--runs 3] \\
        [--ttft 16,30,200] [--follow-up 164] [--threads 2] [--json-out FILE] MODEL.gguf...

Each round runs `nemo bench --json` once and benches/llama_cpp_peer.py once per model and
prompt length (each the median of --runs runs), so a burst of load on a shared machine
hits both. Reported: the median over rounds of each side's figure, the spread (min-max),
and the ratio nemo / llama.cpp (for times, llama.cpp / nemo: above 1 means nemo is
faster). TTFT sizes are measured in the rounds of the first prompt length.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd, env=None):
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1]
    v = json.loads(line)
    v["_wall_s"] = time.time() - t
    return v


def nemo(a, model, prompt, ttft):
    cmd = [a.nemo, "bench", "--model", model, "--threads", str(a.threads), "--runs", str(a.runs),
           "--prompt-tokens", str(prompt), "--gen-tokens", str(a.gen), "--json"]
    if ttft:
        cmd += ["--ttft", ttft, "--follow-up", str(a.follow_up)]
    else:
        cmd += ["--ttft", ""]
    env = dict(os.environ)
    if a.simd:
        env["NEMO_SIMD"] = a.simd
    v = run_json(cmd, env)
    out = {"prefill": v["prefill_tokens_per_s"], "decode": v["decode_tokens_per_s"]}
    for t in v.get("ttft_sizes", []):
        out[f"fresh_{t['new_tokens']}"] = t["fresh_ms"]
        out[f"follow_up_{t['new_tokens']}"] = t["follow_up_ms"]
    return out


def llama(a, model, prompt, ttft):
    cmd = [a.llama_python, os.path.join(HERE, "llama_cpp_peer.py"), model, "--threads", str(a.threads),
           "--runs", str(a.runs), "--prompt-tokens", str(prompt), "--gen-tokens", str(a.gen),
           "--follow-up", str(a.follow_up)]
    if ttft:
        cmd += ["--ttft", ttft]
    if a.flash_attn:
        cmd += ["--flash-attn"]
    v = run_json(cmd)
    out = {"prefill": v["prefill_tok_s"], "decode": v["decode_tok_s"]}
    for s in [int(x) for x in ttft.split(",") if x]:
        out[f"fresh_{s}"] = v[f"ttft_fresh_{s}_ms"]
        out[f"follow_up_{s}"] = v[f"ttft_follow_up_{s}_ms"]
    return out


def fmt(vals):
    med = statistics.median(vals)
    return f"{med:.1f} [{min(vals):.1f}-{max(vals):.1f}]" if len(vals) > 1 else f"{med:.1f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--nemo", required=True)
    ap.add_argument("--llama-python", required=True)
    ap.add_argument("--simd", default="")
    ap.add_argument("--prompts", default="200,2000")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ttft", default="16,30,200")
    ap.add_argument("--follow-up", type=int, default=164)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flash-attn", action="store_true")
    ap.add_argument("--label", default="")
    ap.add_argument("--json-out", default="")
    a = ap.parse_args()
    prompts = [int(p) for p in a.prompts.split(",")]
    results = {}
    for model in a.models:
        name = os.path.basename(model)
        for i, prompt in enumerate(prompts):
            ttft = a.ttft if i == 0 else ""
            rows = []
            for r in range(a.rounds):
                # Alternate which side goes first.
                first, second = (nemo, llama) if r % 2 == 0 else (llama, nemo)
                x = first(a, model, prompt, ttft)
                y = second(a, model, prompt, ttft)
                n_, l_ = (x, y) if first is nemo else (y, x)
                rows.append((n_, l_))
                print(f"{name} prompt {prompt} round {r + 1}: nemo prefill {n_['prefill']:.1f} decode "
                      f"{n_['decode']:.1f} | llama.cpp prefill {l_['prefill']:.1f} decode {l_['decode']:.1f}",
                      file=sys.stderr, flush=True)
            results[(name, prompt)] = rows
    table = []
    label = f" ({a.label})" if a.label else ""
    table.append(f"nemo vs llama.cpp{label}, {a.threads} threads, medians over {a.rounds} rounds "
                 f"(each the median of {a.runs} runs) [min-max]\n")
    table.append("| GGUF | prompt | prefill nemo tok/s | llama.cpp | ratio | decode nemo tok/s | llama.cpp | ratio |")
    table.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for (name, prompt), rows in results.items():
        cells = [name, str(prompt)]
        for k in ["prefill", "decode"]:
            n_ = [r[0][k] for r in rows]
            l_ = [r[1][k] for r in rows]
            ratios = [x / y for x, y in zip(n_, l_)]
            ratio = statistics.median(n_) / statistics.median(l_)
            cells += [fmt(n_), fmt(l_), f"**{ratio:.2f}** [{min(ratios):.2f}-{max(ratios):.2f}]"]
            summary[f"{name}|{prompt}|{k}"] = {"nemo": n_, "llama": l_, "ratio": ratio}
        table.append("| " + " | ".join(cells) + " |")
    if len(prompts) > 1:
        table.append("")
        table.append(f"| GGUF | decode at {prompts[-1]} / at {prompts[0]}: nemo | llama.cpp |")
        table.append("|---|---:|---:|")
        for model in a.models:
            name = os.path.basename(model)
            s, l = results[(name, prompts[0])], results[(name, prompts[-1])]
            dn = statistics.median(r[0]["decode"] for r in l) / statistics.median(r[0]["decode"] for r in s)
            dl = statistics.median(r[1]["decode"] for r in l) / statistics.median(r[1]["decode"] for r in s)
            table.append(f"| {name} | {dn:.2f} | {dl:.2f} |")
    sizes = [int(v) for v in a.ttft.split(",") if v]
    if sizes:
        table.append("")
        table.append(f"TTFT (ms): N new tokens from an empty context (fresh) and after {a.follow_up} "
                     "tokens (follow-up), to the first token's argmax")
        table.append("")
        table.append("| GGUF | N | fresh nemo | llama.cpp | nemo − llama.cpp | follow-up nemo | llama.cpp | nemo − llama.cpp |")
        table.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for model in a.models:
            name = os.path.basename(model)
            rows = results[(name, prompts[0])]
            for s in sizes:
                cells = [name, str(s)]
                for kind in ["fresh", "follow_up"]:
                    k = f"{kind}_{s}"
                    n_ = [r[0][k] for r in rows]
                    l_ = [r[1][k] for r in rows]
                    cells += [fmt(n_), fmt(l_), f"**{statistics.median(n_) - statistics.median(l_):+.1f}**"]
                    summary[f"{name}|ttft|{k}"] = {"nemo": n_, "llama": l_}
                table.append("| " + " | ".join(cells) + " |")
    text = "\n".join(table)
    print(text)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"label": a.label, "simd": a.simd, "threads": a.threads, "summary": summary,
                       "table": text}, f, indent=1)


main()
