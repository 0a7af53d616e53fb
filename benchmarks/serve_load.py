"""Serving load on localhost through the official openai client: concurrent clients, each with its own preference,
mixed lengths, streaming and not; continuous batching against one request at a time (issue 29).

    python benchmarks/serve_load.py --run runs/quickstart/ppo [--clients 16,64] [--requests 4] [--rounds 1]
                                    [--engine hf|vllm]

Each measurement is its own process (so peak RSS is the server's own): it starts ``rlhf.serve`` on a free localhost
port in a thread; the clients run in a process of their own, as real clients do (in the server's process their Python
would contend for its interpreter lock). They measure time to first token of streamed requests sent one at a time (the
unloaded TTFT), then ``clients`` threads each send ``--requests`` chat requests in a row. Client i asks with preference (i / (clients - 1), 1 - i /
(clients - 1)), max_tokens cycling over 8..48, streams when i is odd, and decodes greedily when i % 4 == 0 (the others
sample with their own seed). Batched: ``max_batch_size = clients``; one at a time: ``max_batch_size = 1``. After the
load every greedy request is sent again alone: its text must equal what it got under load. Reported: throughput
(completion tokens per wall second), p50 / p99 latency, p50 / p99 time to first token of streamed requests (loaded and
unloaded), failed requests, greedy answers that differ from their solo text, rows decoded together, peak RSS (of the
server's Python process: with ``--engine vllm`` the engine's own processes are not in it).
"""
from __future__ import annotations

import argparse
import multiprocessing
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q * len(v)))], 3) if v else None


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load(url: str, args: argparse.Namespace, prompts: list, out: "multiprocessing.Queue") -> None:
    """The clients, in a process of their own (as real clients are): ``args.clients`` threads, each sending
    ``args.requests`` requests in a row; then every greedy request again, alone."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=900)
    model = client.models.list().data[0].id

    def request(i: int, r: int, stream: bool) -> dict:
        lam = i / max(args.clients - 1, 1)
        kw = dict(model=model, messages=[{"role": "user", "content": prompts[(i * args.requests + r) % len(prompts)]}],
                  max_tokens=8 + 8 * ((i + r) % 6), temperature=0.0 if i % 4 == 0 else 1.0, seed=1000 * i + r,
                  extra_body={"preference": [lam, 1 - lam]})
        t0 = time.perf_counter()
        if not stream:
            res = client.chat.completions.create(**kw)
            return {"text": res.choices[0].message.content, "tokens": res.usage.completion_tokens,
                    "latency": time.perf_counter() - t0, "ttft": None, "kw": kw}
        text, ttft, tokens = "", None, 0
        for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = time.perf_counter() - t0 if ttft is None else ttft
                text += chunk.choices[0].delta.content
            tokens = chunk.usage.completion_tokens if chunk.usage else tokens
        return {"text": text, "tokens": tokens, "latency": time.perf_counter() - t0, "ttft": ttft, "kw": kw}

    request(0, 0, False)  # warm-up: one-time costs (the first forward) are not timed
    unloaded = [request(2 * k + 1, k, True)["ttft"] for k in range(args.unloaded)]
    done, failures = [], []

    def run_client(i: int) -> None:
        for r in range(args.requests):
            try:
                done.append((i, request(i, r, stream=i % 2 == 1)))
            except Exception as err:  # counted, never fatal
                failures.append(repr(err))

    threads = [threading.Thread(target=run_client, args=(i,)) for i in range(args.clients)]
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    client_cpu = cpu_seconds() - cpu0
    greedy = [res for i, res in done if i % 4 == 0]
    differs = sum(client.chat.completions.create(**res["kw"]).choices[0].message.content != res["text"]
                  for res in greedy)
    out.put({"done": [{k: v for k, v in r.items() if k != "kw"} for _, r in done], "failures": failures,
             "wall": wall, "unloaded": unloaded, "greedy": len(greedy), "differs": differs,
             "client_cpu": client_cpu, "t0": t0, "t1": t0 + wall})


def measure(args: argparse.Namespace) -> dict:
    import multiprocessing

    import uvicorn

    from rlhf.serving.server import ServeConfig, build_app

    port = free_port()
    cfg = ServeConfig(run=args.run, port=port, max_batch_size=args.batch, max_tokens_cap=64, max_queue=1024,
                      engine=args.engine)
    app = build_app(cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    prompts = [json.loads(line)["prompt"] for line in Path(args.prompts).read_text().splitlines()]
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()
    stats0 = dict(app.state.engine.stats)
    cpu0 = cpu_seconds()
    clients = ctx.Process(target=load, args=(f"http://127.0.0.1:{port}/v1", args, prompts, results))
    clients.start()
    got = results.get()
    server_cpu = cpu_seconds() - cpu0  # from the clients' start, so a little more than the load itself
    clients.join()
    stats = app.state.engine.stats
    server.should_exit = True
    if hasattr(app.state.engine.batcher, "close"):
        app.state.engine.batcher.close()
    done, tokens = got["done"], sum(r["tokens"] for r in got["done"])
    ttft = [r["ttft"] for r in done if r["ttft"] is not None]
    return {"mode": "continuous" if args.batch > 1 else "one_at_a_time", "engine": args.engine, "clients": args.clients,
            "requests": len(done) + len(got["failures"]), "failed": len(got["failures"]),
            "wall_s": round(got["wall"], 2), "completion_tokens": tokens, "tokens_per_s": round(tokens / got["wall"], 1),
            "p50_s": pct([r["latency"] for r in done], 0.5), "p99_s": pct([r["latency"] for r in done], 0.99),
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p99_s": pct(ttft, 0.99),
            "unloaded_ttft_p50_s": pct(got["unloaded"], 0.5), "unloaded_ttft_p99_s": pct(got["unloaded"], 0.99),
            "greedy_checked": got["greedy"], "greedy_differs": got["differs"], "max_rows": stats["max_rows"],
            "steps": stats.get("steps", 0) - stats0.get("steps", 0), "server_cpu_s": round(server_cpu, 1),
            "client_cpu_s": round(got["client_cpu"], 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/quickstart/ppo")
    ap.add_argument("--prompts", default="runs/quickstart/data/eval_prompts.jsonl")
    ap.add_argument("--clients", default="16,64", help="comma-separated client counts")
    ap.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    ap.add_argument("--unloaded", type=int, default=8, help="streamed requests sent alone before the load")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="the server's decoder (serve --engine)")
    ap.add_argument("--batch", type=int, default=None, help="(internal) one measurement with this max_batch_size")
    args = ap.parse_args()
    if args.batch is not None:
        args.clients = int(args.clients)
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return
    rows = []
    for _ in range(args.rounds):
        for clients in [int(c) for c in args.clients.split(",")]:
            for batch in (clients, 1):
                cmd = [sys.executable, __file__, "--run", args.run, "--prompts", args.prompts, "--clients",
                       str(clients), "--requests", str(args.requests), "--unloaded", str(args.unloaded),
                       "--batch", str(batch), "--engine", args.engine]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
                if not line:
                    raise SystemExit(out.stderr[-3000:])
                rows.append(json.loads(line[0][7:]))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\nengine: {args.engine}")
    print("\n| mode | clients x requests | tokens/s | p50 / p99 latency s | TTFT p50 / p99 s (unloaded p50 / p99) | "
          "failed | greedy differing from solo | rows together | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['clients']} x {r['requests'] // r['clients']} | {r['tokens_per_s']} | "
              f"{r['p50_s']} / {r['p99_s']} | {r['ttft_p50_s']} / {r['ttft_p99_s']} ({r['unloaded_ttft_p50_s']} / "
              f"{r['unloaded_ttft_p99_s']}) | {r['failed']} | {r['greedy_differs']} of {r['greedy_checked']} | "
              f"{r['max_rows']} | {r['peak_rss_mib']} |")
    for clients in [int(c) for c in args.clients.split(",")]:
        cont = [r for r in rows if r["clients"] == clients and r["mode"] == "continuous"]
        one = [r for r in rows if r["clients"] == clients and r["mode"] == "one_at_a_time"]
        speed = statistics.median(r["tokens_per_s"] for r in cont) / statistics.median(r["tokens_per_s"] for r in one)
        ttft = statistics.median(r["ttft_p99_s"] / r["unloaded_ttft_p99_s"] for r in cont)
        print(f"{clients} clients: {speed:.2f}x the throughput of one at a time; loaded p99 TTFT / unloaded p99 TTFT "
              f"{ttft:.2f}")
    print(f"machine: {__import__('os').cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
