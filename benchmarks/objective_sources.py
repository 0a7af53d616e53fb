"""Scoring cost per PPO step for each objective source at the quickstart's batch (issue 31).

    python benchmarks/objective_sources.py [--quickstart runs/quickstart] [--reps 20]

One batch as a quickstart PPO step scores it: 64 prompts from the quickstart's prompt file with 64 responses (the SFT
data's answers, 10-40 words; generation caps them at 40 tokens). Each source is built as the trainer builds it and
scores the same batch ``--reps`` times, interleaved (model, function, url, model, ...), after one warm-up call:
- ``model``: the quickstart's helpful reward model (``max_length`` 96, ``batch_size`` 64, fp32, this machine's CPU);
- ``function``: ``hhbench.task:concise_reward`` (the three-objective experiment's rule);
- ``url``: the same rule behind a reward server in its own process on 127.0.0.1 (``http.server``; one request per
  batch), so the figure is the HTTP round trip and JSON coding on top of the rule.
Reported: median and p90 ms per batch.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def serve(port: int) -> None:
    """The reward server: the concise rule for each response, in the documented request/response format."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from hhbench.task import concise_reward

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            data = json.dumps({"rewards": concise_reward(body["prompts"], body["responses"])}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quickstart", default="runs/quickstart", help="a finished scripts/quickstart.sh output")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64, help="rollout_batch_size of the quickstart")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve)
    import torch

    from rlhf.scoring.objectives import OBJECTIVES

    torch.set_num_threads(2)
    qs = Path(args.quickstart)
    prompts = [json.loads(l)["prompt"] for l in (qs / "data" / "prompts.jsonl").read_text().splitlines()[:args.batch]]
    responses = [json.loads(l)["response"] for l in (qs / "data" / "sft.jsonl").read_text().splitlines()[:args.batch]]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "the reward server did not start"
                time.sleep(0.1)
        specs = {"model": {"name": "helpful", "model": str(qs / "rm_helpful"), "max_length": 96, "batch_size": 64},
                 "function": {"name": "concise", "function": "hhbench.task:concise_reward"},
                 "url": {"name": "concise", "url": f"http://127.0.0.1:{port}/reward", "batch_size": 64}}
        sources = {k: OBJECTIVES.parse(v, k).build() for k, v in specs.items()}
        times: dict[str, list[float]] = {k: [] for k in sources}
        for k, src in sources.items():  # warm-up
            src.score(prompts, responses)
        for _ in range(args.reps):
            for k, src in sources.items():
                t0 = time.perf_counter()
                out = src.score(prompts, responses)                                           # (B,)
                times[k].append((time.perf_counter() - t0) * 1e3)
                assert out.shape == (len(responses),)
        rows = {k: {"median_ms": round(statistics.median(v), 2),
                    "p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))], 2)} for k, v in times.items()}
        print(json.dumps({"batch": len(responses), "reps": args.reps, "torch_threads": torch.get_num_threads(),
                          "sources": rows}, indent=2))
        print("\n| source | median ms / batch of", len(responses), "| p90 ms |\n|---|---|---|")
        for k, r in rows.items():
            print(f"| {k} | {r['median_ms']} | {r['p90_ms']} |")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
