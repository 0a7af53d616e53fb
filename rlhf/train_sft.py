"""Supervised fine-tuning: plain SFT (D = 1, full weights) and Panacea-SFT (D targets, SVD-LoRA, aggregated).

    deepspeed rlhf/train_sft.py --config configs/<x>.yaml [--key value ...]
    python rlhf/train_sft.py --help

Plain SFT (``adapter: null``, one response column) trains every weight and writes an ordinary HF checkpoint: it
builds the base models of the embedded benchmark. Panacea-SFT (``adapter`` set, one response column per
objective) computes one language-model loss per dimension ``L_i`` on the same prompts and aggregates them under a
sampled lambda with the registry PPO uses (``ls``: sum_i lambda_i L_i; ``tche``: max_i lambda_i L_i), the
preference written into the adapter (Panacea §3.3, chat experiments). Output: ``output_dir/policy/`` (the run
format ``evaluate.py`` reads).
"""
from __future__ import annotations

from typing import Optional

from rlhf.runtime.cli import cli
from rlhf.training.loop import dry_run
from rlhf.training.sft import SFTConfig, train


def main(argv: Optional[list[str]] = None) -> None:
    cli(SFTConfig, train, __doc__, argv, dry_run_fn=dry_run)


if __name__ == "__main__":
    main()
