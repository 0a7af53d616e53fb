"""Score-model losses: pure torch functions on end scores.

Reward model (higher = better): Bradley-Terry ``-log sigmoid(r_w - r_l)`` plus ``coef * mean(r^2)`` to keep
scores near zero (safe-rlhf's score regulariser). Cost model (higher = worse, safe-rlhf §3): the pairwise term on
which response is safer, plus a per-response sign term ``-log sigmoid(sign * c)`` with sign = +1 for unsafe and
-1 for safe responses, so that unsafe responses get positive cost and safe ones negative.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_margin(better: torch.Tensor, worse: torch.Tensor, kind: str) -> torch.Tensor:
    """``(B,)`` margin that should be positive: ``r_w - r_l`` for rewards, ``c_l - c_w`` for costs."""
    return better - worse if kind == "reward" else worse - better


def score_model_loss(better: torch.Tensor, worse: torch.Tensor, kind: str, reg_coef: float,
                     better_sign: torch.Tensor | None = None, worse_sign: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and detached metrics for one batch of pairs.

    better, worse: (B,) end scores of the preferred (reward: more helpful; cost: safer) and the other response.
    better_sign, worse_sign: (B,) +1 unsafe, -1 safe, 0 unknown (cost models only; 0 drops the sign term).
    """
    margin = pairwise_margin(better, worse, kind)                                          # (B,)
    loss = -F.logsigmoid(margin).mean()
    scores = torch.cat([better, worse])                                                    # (2B,)
    loss = loss + reg_coef * scores.pow(2).mean()
    metrics = {"accuracy": (margin > 0).float().mean().detach()}
    if kind == "cost" and better_sign is not None and worse_sign is not None:
        signs = torch.cat([better_sign, worse_sign]).to(scores.dtype)                      # (2B,)
        known = signs != 0
        if known.any():
            loss = loss - F.logsigmoid(signs[known] * scores[known]).mean()
            metrics["sign_accuracy"] = ((signs[known] * scores[known]) > 0).float().mean().detach()
    return loss, metrics
