"""One-time conversion of a safe-rlhf score model (``LlamaModelForScore``, e.g. beaver-7b-v1.0-reward/cost) to
an ordinary HF ``LlamaForSequenceClassification`` directory that ``AutoModelForSequenceClassification`` loads.

    python reward_models/convert_safe_rlhf.py SRC_DIR DST_DIR --name harmless --kind cost

``load_score_model`` also reads the safe-rlhf layout directly; converting once saves that work at every start.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rlhf.scoring.score_model import safe_rlhf_to_hf, write_dimension


def convert(src: str | Path, dst: str | Path, name: str, kind: str) -> Path:
    from transformers import AutoTokenizer

    src, dst = Path(src), Path(dst)
    model, extra = safe_rlhf_to_hf(src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    write_dimension(dst, name=name, kind=kind, **extra)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--name", required=True, help="objective name, e.g. helpful or harmless")
    ap.add_argument("--kind", required=True, choices=["reward", "cost"])
    args = ap.parse_args()
    print(f"converted -> {convert(args.src, args.dst, args.name, args.kind)}")


if __name__ == "__main__":
    main()
