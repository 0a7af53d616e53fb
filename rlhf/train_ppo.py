"""Panacea multi-objective PPO.

    deepspeed rlhf/train_ppo.py --config configs/<x>.yaml [--key value ...]     # 1..N GPUs, ZeRO 1/2/3
    python rlhf/train_ppo.py --config ... --dry_run                              # validate, load nothing
    python rlhf/train_ppo.py --help                                              # every field, documented
"""
from __future__ import annotations

from typing import Any, Optional

from rlhf.runtime.cli import cli
from rlhf.training.ppo_config import PPOConfig


def run(cfg: PPOConfig) -> None:
    from rlhf.training.ppo import PPOTrainer

    PPOTrainer(cfg).train()


def dry_run(cfg: PPOConfig) -> dict[str, Any]:
    from rlhf.training.ppo import dry_run as check

    return check(cfg)


def main(argv: Optional[list[str]] = None) -> None:
    cli(PPOConfig, run, __doc__, argv, dry_run_fn=dry_run)


if __name__ == "__main__":
    main()
