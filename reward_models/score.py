"""Check any score model on a preference file: mean scores and pairwise (and sign) accuracy.

    python reward_models/score.py --model PATH_OR_HUB_NAME --data FILE [--kind reward|cost]
           [--schema auto|pku_saferlhf|generic] [--column_map prompt=question,chosen=good] [--batch_size 16]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from rlhf.data import DEFAULT_TEMPLATE, DataError, format_conversation, load_rows
from reward_models.data import SCHEMA_COLUMNS, build_pairs
from reward_models.score_model import ScoreModelError, load_score_model, score_texts


def score_pairs(model_path: str, data: str, kind: str | None = None, schema: str = "auto",
                column_map: dict[str, str] | None = None, batch_size: int = 16, max_length: int = 1024,
                template: str = DEFAULT_TEMPLATE, max_samples: int | None = None, device: str | None = None,
                dtype: str = "auto") -> dict[str, float]:
    from rlhf.engine import placement

    dev, dt = placement(device, dtype)
    model, tokenizer, meta = load_score_model(model_path, dtype=dt)
    model.to(dev)
    kind = kind or meta.get("kind", "reward")
    rows = load_rows(data, max_samples=max_samples)
    if schema == "auto":
        cols = set(rows.column_names) | set((column_map or {}).keys())
        schema = "pku_saferlhf" if set(SCHEMA_COLUMNS["pku_saferlhf"]) <= cols else "generic"
    pairs = build_pairs(rows, schema, kind, data, column_map)
    texts = [format_conversation(tokenizer, p.prompt, r, template) for p in pairs for r in (p.better, p.worse)]
    scores = score_texts(model, tokenizer, texts, batch_size, max_length, offset=meta.get("score_offset", 0.0))
    better, worse = scores[0::2], scores[1::2]                                               # (N,), (N,)
    margin = better - worse if kind == "reward" else worse - better
    out = {"kind": kind, "n_pairs": len(pairs), "accuracy": (margin > 0).float().mean().item(),
           "mean_score_better": better.mean().item(), "mean_score_worse": worse.mean().item(),
           "mean_score": scores.mean().item(), "std_score": scores.std().item()}
    signs = torch.tensor([[p.better_sign, p.worse_sign] for p in pairs]).reshape(-1).float()  # (2N,)
    if kind == "cost" and (signs != 0).any():
        known = signs != 0
        out["sign_accuracy"] = ((signs[known] * scores[known]) > 0).float().mean().item()
    return out


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
