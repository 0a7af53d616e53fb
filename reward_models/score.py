"""Check any score model on a preference file: mean scores and pairwise (and sign) accuracy.

    python reward_models/score.py --model PATH_OR_HUB_NAME --data FILE [--kind reward|cost]
           [--schema auto|pku_saferlhf|generic] [--column_map prompt=question,chosen=good] [--batch_size 16]
"""
from __future__ import annotations

import argparse
import json
import sys

from rlhf.data.datasets import DataError
from rlhf.scoring.score_model import ScoreModelError, score_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--kind", choices=["reward", "cost"], default=None, help="default: dimension.json, else reward")
    ap.add_argument("--schema", choices=["auto", "pku_saferlhf", "generic"], default="auto")
    ap.add_argument("--column_map", default="", help="ours=theirs,... e.g. prompt=question")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--max_length", type=int, default=1024)
    ap.add_argument("--max_samples", type=int, default=None)
    ap.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: the GPU when there is one)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="auto: bf16 on a GPU, fp32 on the CPU")
    args = ap.parse_args()
    column_map = dict(kv.split("=", 1) for kv in args.column_map.split(",") if kv)
    try:
        result = score_pairs(args.model, args.data, args.kind, args.schema, column_map, args.batch_size,
                             args.max_length, max_samples=args.max_samples, device=args.device, dtype=args.dtype)
    except (DataError, ScoreModelError) as err:
        sys.exit(f"error: {err}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
