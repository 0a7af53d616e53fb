"""The optimiser settings every trainer shares (AdamW through DeepSpeed; a transformers warm-up + decay schedule)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rlhf.core.config import check, doc_field


@dataclass(frozen=True)
class OptimizerFields:
    """Weight decay, clipping and the learning-rate schedule (mixed into the supervised config and PPO's ``ppo``)."""

    weight_decay: float = doc_field(0.0, "AdamW weight decay")
    max_grad_norm: float = doc_field(1.0, "gradient clipping (global norm)")
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = doc_field("cosine", "decay after warm-up")
    warmup_ratio: float = doc_field(0.0, "fraction of optimiser steps with linear warm-up")
    warmup_steps: int = doc_field(0, "linear warm-up optimiser steps; when > 0 it overrides warmup_ratio")

    def __post_init__(self) -> None:
        getattr(super(), "__post_init__", lambda: None)()
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.max_grad_norm > 0, "max_grad_norm", f"must be > 0 (the clipping threshold), got {self.max_grad_norm}")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")

    def scheduler(self, total_steps: int) -> Any:
        """``optimizer -> LR scheduler`` for ``engine.initialize`` over ``total_steps`` optimiser steps."""
        from transformers import get_scheduler

        warmup = self.warmup_steps or int(self.warmup_ratio * total_steps)
        return lambda opt: get_scheduler(self.lr_scheduler, opt, num_warmup_steps=warmup,
                                         num_training_steps=total_steps)
