"""The quickstart's front on several seeds and rollout engines, side by side: Spearman and SFT-dominance per seed,
their means and standard errors, and the paired difference per seed (a seed fixes the run's lambda sequence).

    python benchmarks/seed_table.py OUT [--prompts runs/quickstart/data/eval_prompts.jsonl]

OUT holds ``<backend>_s<seed>/eval/pareto.json`` (``benchmarks/quickstart_seeds.sh`` writes them).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path


def report(pareto: Path, prompts: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "hhbench", "--report", str(pareto), "--prompts", prompts],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out[out.index("{"):])


def mean_se(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "-"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) / len(values) ** 0.5:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--prompts", default="runs/quickstart/data/eval_prompts.jsonl")
    args = ap.parse_args()
    runs: dict[str, dict[int, dict]] = {}
    for pareto in sorted(Path(args.out).glob("*_s*/eval/pareto.json")):
        backend, seed = re.fullmatch(r"(.+)_s(\d+)", pareto.parent.parent.name).groups()
        runs.setdefault(backend, {})[int(seed)] = report(pareto, args.prompts)
    keys = [("helpful Spearman", lambda r: r["spearman"]["helpful"]),
            ("harmless Spearman", lambda r: r["spearman"]["harmless"]),
            ("dominate SFT, oracle", lambda r: r["dominates_base"]),
            ("dominate SFT, learned", lambda r: r["dominates_base_learned_models"])]
    seeds = sorted({s for per in runs.values() for s in per})
    names = sorted(runs)
    print("| seed | " + " | ".join(f"{b}: {k}" for b in names for k, _ in keys) + " |")
    print("|---" * (1 + len(names) * len(keys)) + "|")
    for s in seeds:
        cells = [f"{f(runs[b][s]):.2f}" if s in runs[b] else "-" for b in names for _, f in keys]
        print(f"| {s} | " + " | ".join(cells) + " |")
    print("| mean ± SE | " + " | ".join(mean_se([f(r) for r in runs[b].values()]) for b in names for _, f in keys)
          + " |")
    if len(names) == 2:
        a, b = names
        paired = [s for s in seeds if s in runs[a] and s in runs[b]]
        for k, f in keys:
            d = [f(runs[a][s]) - f(runs[b][s]) for s in paired]
            print(f"paired {a} - {b}, {k}: {mean_se(d)} over seeds {paired}")


if __name__ == "__main__":
    main()
