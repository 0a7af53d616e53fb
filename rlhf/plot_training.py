"""The front while it trained, from ``metrics.jsonl`` alone (no W&B needed): the front at several steps on one
figure, coloured by step, the base point marked, and the hypervolume over steps.

    python rlhf/plot_training.py RUN [--scorer oracle] [--steps 0,50,150] [--out RUN/training_fronts.png]

RUN is a training run directory whose config set ``eval.every`` (PPO, DPO or Panacea-SFT); ``--scorer`` picks an
extra scorer's front (e.g. the oracle) instead of the score models'. With D >= 3 objectives the front panel shows
the first two.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from rlhf.evaluation.training_plot import plot


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="training run directory (its metrics.jsonl)")
    ap.add_argument("--scorer", default=None, help="an extra scorer's front (e.g. oracle) instead of the score models")
    ap.add_argument("--steps", default=None, help="comma-separated steps to draw (default: up to six, spread)")
    ap.add_argument("--out", default=None, help="PNG path (default: RUN/training_fronts[_SCORER].png)")
    args = ap.parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else run / f"training_fronts{'_' + args.scorer if args.scorer else ''}.png"
    steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    print(plot(run, out, args.scorer, steps))


if __name__ == "__main__":
    sys.exit(main())
