#!/usr/bin/env python3
"""Load test for `nemo serve` (not a timed test): N concurrent clients send REQUESTS chat
completions to a server this script starts on a fixture model on a free loopback port.

Every request must complete (200) or be refused with 429 (the bounded queue); nothing may
hang (each request has a timeout) and the server's resident memory must stay flat: RSS is
sampled after a warm-up and at the end, and the growth between them is reported (the run
fails past --max-rss-growth-mib). Standard library only.

    cargo build --release
    python3 benches/serve_load.py --nemo target/release/nemo \\
        --model tests/fixtures/nemotron_h_tiny --clients 8 --requests 1000

Prints one JSON object (counts, latency percentiles, requests/s, RSS) on stdout.
"""

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start(nemo, model, extra):
    p = subprocess.Popen(
        [nemo, "serve", "--model", model, "--port", "0", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in p.stderr:
        if "listening on http://" in line:
            addr = line.split("listening on http://", 1)[1].strip().removesuffix("/v1")
            host, port = addr.rsplit(":", 1)
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, host, int(port)
        if time.time() > deadline:
            break
    p.kill()
    sys.exit("nemo serve did not start")


def one(host, port, body, timeout):
    t0 = time.time()
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("POST", "/v1/chat/completions", body=body,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status == 200:
            json.loads(data)["choices"][0]["message"]
        return r.status, time.time() - t0
    except Exception as e:  # a timeout or a broken answer: counted, never hidden
        return f"error: {type(e).__name__}: {e}", time.time() - t0
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nemo", default="target/release/nemo")
    ap.add_argument("--model", default="tests/fixtures/nemotron_h_tiny")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    ap.add_argument("--warmup", type=int, default=100, help="requests before the first RSS sample")
    ap.add_argument("--max-rss-growth-mib", type=float, default=32.0)
    a = ap.parse_args()

    proc, host, port = start(a.nemo, a.model, ["--max-queue", str(a.max_queue)])
    lock = threading.Lock()
    results = []
    rss = {"start": rss_kib(proc.pid)}
    next_i = [0]

    def client(k):
        rnd = random.Random(k)
        while True:
            with lock:
                i = next_i[0]
                if i >= a.requests:
                    return
                next_i[0] += 1
            # Several conversations, some continued, so the session pool is exercised.
            conv = rnd.randrange(6)
            msgs = [{"role": "system", "content": f"You are assistant number {conv}."},
                    {"role": "user", "content": f"Question {i % 7} from conversation {conv}."}]
            body = json.dumps({"messages": msgs, "max_tokens": a.max_tokens,
                               "temperature": 0.7, "seed": i})
            status, dt = one(host, port, body, a.timeout)
            with lock:
                results.append((status, dt))
                if len(results) == a.warmup:
                    rss["after_warmup"] = rss_kib(proc.pid)

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    rss["end"] = rss_kib(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()

    counts = {}
    for s, _ in results:
        counts[str(s)] = counts.get(str(s), 0) + 1
    ok = sorted(dt for s, dt in results if s == 200)

    def pct(p):
        return round(ok[min(len(ok) - 1, int(p * len(ok)))] * 1e3, 1) if ok else None

    growth = (rss["end"] - rss.get("after_warmup", rss["end"])) / 1024
    out = {
        "clients": a.clients, "requests": a.requests, "max_queue": a.max_queue,
        "max_tokens": a.max_tokens, "counts": counts, "wall_s": round(wall, 2),
        "completed_per_s": round(len(ok) / wall, 2) if wall else None,
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
        "rss_mib": {k: round(v / 1024, 1) for k, v in rss.items()},
        "rss_growth_after_warmup_mib": round(growth, 1),
        "exit_code": proc.returncode,
    }
    print(json.dumps(out))
    bad = {k: v for k, v in counts.items() if k not in ("200", "429")}
    if bad or len(results) != a.requests:
        sys.exit(f"requests that neither completed nor got 429: {bad}")
    if growth > a.max_rss_growth_mib:
        sys.exit(f"RSS grew {growth:.1f} MiB after the warm-up")


if __name__ == "__main__":
    main()
