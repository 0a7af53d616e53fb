"""Train a reward (higher = better) or cost (higher = worse) model.

    deepspeed reward_models/train.py --config configs/<rm>.yaml [--key value ...]
    python reward_models/train.py --config ... (one process, no launcher needed)

Data flows: preference rows -> pairs -> tokenised (better, worse) batches -> end scores (2B,) -> loss -> DeepSpeed
step; every ``eval_every`` optimiser steps, pairwise (and for costs, sign) accuracy on the held-out split.
The output directory is an ordinary HF sequence-classification model + tokenizer + ``dimension.json``.
"""
from __future__ import annotations

from typing import Optional

from rlhf.runtime.cli import cli
from rlhf.training.loop import dry_run
from rlhf.training.reward import ScoreTrainConfig, train


def main(argv: Optional[list[str]] = None) -> None:
    cli(ScoreTrainConfig, train, __doc__, argv, dry_run_fn=dry_run)


if __name__ == "__main__":
    main()
