"""The embedded benchmark's command line: ``python -m hhbench --out DIR`` writes its data and random-init base model;
``python -m hhbench --report pareto.json [--prompts FILE]`` summarises an evaluated front."""
from __future__ import annotations

import json
from pathlib import Path

from hhbench.report import front_report
from hhbench.task import build_base, write_task


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Write the embedded benchmark's data and random-init base model, "
                                             "or (--report) summarise an evaluated front.")
    ap.add_argument("--out", default="runs/quickstart")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", default=None, help="pareto.json to summarise (Spearman, dominance of the base)")
    ap.add_argument("--prompts", default=None, help="with --report: the evaluation prompts, to count where the "
                                                    "exact LS optimum of the oracles dominates the base")
    args = ap.parse_args()
    if args.report:
        print(json.dumps(front_report(args.report, prompts=args.prompts), indent=2))
        return
    files = write_task(Path(args.out) / "data", seed=args.seed)
    build_base(Path(args.out) / "init", files, seed=args.seed)
    print(json.dumps(files, indent=2))


if __name__ == "__main__":
    main()
