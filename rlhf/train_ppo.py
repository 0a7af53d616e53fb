"""Panacea multi-objective PPO.

    deepspeed rlhf/train_ppo.py --config configs/<x>.yaml [--key value ...]     # 1..N GPUs, ZeRO 1/2/3
    python rlhf/train_ppo.py --config ... --dry_run                              # validate, load nothing
    python rlhf/train_ppo.py --help                                              # every field, documented
"""
from __future__ import annotations

import json
import sys
from typing import Optional

from rlhf.config import ConfigError, describe, load_config, split_config_arg
from rlhf.ppo_config import PPOConfig


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(__doc__ + "\nFields (YAML keys / --overrides):\n" + describe(PPOConfig))
        return
    path, overrides = split_config_arg(argv)
    try:
        cfg = load_config(PPOConfig, path, overrides)
    except ConfigError as err:
        sys.exit(f"config error: {err}")
    from rlhf.trainer import PPOTrainer, dry_run

    if cfg.dry_run:
        print(json.dumps({"dry_run": "ok", **dry_run(cfg)}, indent=2))
        return
    PPOTrainer(cfg).train()


if __name__ == "__main__":
    main()
