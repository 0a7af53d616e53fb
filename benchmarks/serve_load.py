"""Serving load on localhost: concurrent clients, each with its own preference, batched vs one at a time (issue 22).

    python benchmarks/serve_load.py --run runs/quickstart/ppo [--clients 16] [--requests 4] [--rounds 2]

Each measurement is its own process (so peak RSS is its own): it starts ``rlhf.serve`` on a free localhost port in a
thread, then ``--clients`` client threads each send ``--requests`` chat requests in a row, client i with preference
(i / (clients - 1), 1 - i / (clients - 1)), ``--max_tokens`` tokens, sampled with a per-request seed. Batched:
``max_batch_size = clients``; one at a time: ``max_batch_size = 1`` (the same server, no batching). Reported:
throughput (completion tokens / wall second), p50 / p99 latency, failed requests, batches formed, peak RSS.
"""
from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(args: argparse.Namespace) -> dict:
    import httpx
    import uvicorn

    from rlhf.serving.server import ServeConfig, build_app

    port = free_port()
    cfg = ServeConfig(run=args.run, port=port, max_batch_size=args.batch, batch_window_ms=args.window_ms,
                      max_tokens_cap=max(256, args.max_tokens))
    app = build_app(cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    prompts = [json.loads(l)["prompt"] for l in Path(args.prompts).read_text().splitlines()]
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    # warm-up: one request, so that one-time costs (first forward) are not timed
    httpx.post(url, json={"messages": [{"role": "user", "content": prompts[0]}], "max_tokens": 4}, timeout=300)
    latencies, tokens, failures = [], [], []

    def client(i: int) -> None:
        lam = i / max(args.clients - 1, 1)
        with httpx.Client(timeout=600) as http:
            for r in range(args.requests):
                body = {"messages": [{"role": "user", "content": prompts[(i * args.requests + r) % len(prompts)]}],
                        "preference": [lam, 1 - lam], "max_tokens": args.max_tokens, "temperature": 1.0,
                        "seed": 1000 * i + r}
                t0 = time.perf_counter()
                try:
                    resp = http.post(url, json=body)
                    resp.raise_for_status()
                    tokens.append(resp.json()["usage"]["completion_tokens"])
                    latencies.append(time.perf_counter() - t0)
                except Exception as err:  # counted, never fatal
                    failures.append(repr(err))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stats = app.state.engine.stats
    server.should_exit = True
    lat = sorted(latencies)
    return {"mode": "batched" if args.batch > 1 else "one_at_a_time", "clients": args.clients,
            "requests": args.clients * args.requests, "failed": len(failures), "wall_s": round(wall, 2),
            "completion_tokens": sum(tokens), "tokens_per_s": round(sum(tokens) / wall, 1),
            "p50_s": round(statistics.median(lat), 3) if lat else None,
            "p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3) if lat else None,
            "batches": stats["batches"] - 1, "max_batch": stats["max_batch"],
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/quickstart/ppo")
    ap.add_argument("--prompts", default="runs/quickstart/data/eval_prompts.jsonl")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    ap.add_argument("--max_tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="alternating batched / one-at-a-time measurements")
    ap.add_argument("--window_ms", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=None, help="(internal) one measurement with this max_batch_size")
    args = ap.parse_args()
    if args.batch is not None:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return
    rows = []
    for _ in range(args.rounds):
        for batch in (args.clients, 1):
            cmd = [sys.executable, __file__, "--run", args.run, "--prompts", args.prompts, "--clients",
                   str(args.clients), "--requests", str(args.requests), "--max_tokens", str(args.max_tokens),
                   "--window_ms", str(args.window_ms), "--batch", str(batch)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            if not line:
                raise SystemExit(out.stderr[-3000:])
            rows.append(json.loads(line[0][7:]))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| mode | clients x requests | tokens/s | p50 s | p99 s | failed | batches (max size) | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['clients']} x {r['requests'] // r['clients']} | {r['tokens_per_s']} | {r['p50_s']} | "
              f"{r['p99_s']} | {r['failed']} | {r['batches']} ({r['max_batch']}) | {r['peak_rss_mib']} |")
    med = {m: statistics.median(r["tokens_per_s"] for r in rows if r["mode"] == m) for m in ("batched", "one_at_a_time")}
    print(f"\nbatching speed-up at {args.clients} clients: {med['batched'] / med['one_at_a_time']:.2f}x throughput "
          f"(median over {args.rounds} rounds); machine: {__import__('os').cpu_count()} CPU cores, "
          f"{time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
