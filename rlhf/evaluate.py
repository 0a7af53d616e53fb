"""Trace the Pareto front a trained model gives as lambda moves, and its quality figures.

    python rlhf/evaluate.py --run RUN [--grid 0.1 | --preferences FILE] [--prompts DATA] [--out DIR]
    python rlhf/evaluate.py --run RUN/checkpoints/step_N --config RUN/checkpoints/step_N/eval.yaml   # as in training
    python rlhf/evaluate.py --method dps --run RUN_a --run RUN_b ...     # fixed-lambda PPO runs (one point each)
    python rlhf/evaluate.py --method rs  --run RUN_helpful --run RUN_harmless --grid 0.1   # Rewarded Soups
    python rlhf/evaluate.py --help                                       # every option, documented

The evaluation itself (sampling, scoring, the front's record) is ``rlhf/evaluation/front.py``'s, shared with the evaluation
inside training. A Panacea run evaluates all preferences of a prompt batch in one generate call (one lambda per
row). Writes DIR/pareto.json and DIR/pareto.png and logs both to W&B.
"""
from __future__ import annotations

import sys
from typing import Optional

from rlhf.adapter.svd_lora import PreferenceError
from rlhf.core.config import ConfigError, describe
from rlhf.data.datasets import DataError
from rlhf.evaluation.evaluate import EvalConfig, evaluate, parse_args
from rlhf.evaluation.pareto import FrontError


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(__doc__ + "\nOptions (--key value, or keys of a --config YAML):\n" + describe(EvalConfig))
        return
    try:
        cfg = parse_args(argv)
        result = evaluate(cfg)
    except (ConfigError, FrontError, PreferenceError, DataError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    m = result["metrics"]
    print(f"[evaluate] {result['method']}: {len(result['points'])} points on {result['n_prompts']} prompts -> "
          f"{cfg.out_dir / 'pareto.json'}, {cfg.out_dir / 'pareto.png'}")
    print("  " + ", ".join(f"{k}={v:.4g}" for k, v in m.items()))


if __name__ == "__main__":
    main()
