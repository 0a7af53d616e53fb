"""Panacea multi-objective PPO.

    deepspeed rlhf/train_ppo.py --config configs/<x>.yaml [--key value ...]     # 1..N GPUs, ZeRO 1/2/3
    python rlhf/train_ppo.py --config ... --dry_run                              # validate, load nothing
    python rlhf/train_ppo.py --help                                              # every field, documented
"""
from __future__ import annotations

import json
from typing import Optional

from rlhf.loop import cli
from rlhf.ppo_config import PPOConfig


def run(cfg: PPOConfig) -> None:
    from rlhf.trainer import PPOTrainer, dry_run

    if cfg.dry_run:
        print(json.dumps({"dry_run": "ok", **dry_run(cfg)}, indent=2))
        return
    PPOTrainer(cfg).train()


def main(argv: Optional[list[str]] = None) -> None:
    cli(PPOConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
