"""How D objectives become one training signal under lambda: a registry shared by PPO, DPO and SFT.

Every aggregator turns per-dimension *losses* ``L (..., D)`` (lower is better) into one loss per row:
- ``ls``    linear scalarisation          sum_i lambda_i L_i
- ``tche``  Tchebycheff                   max_i lambda_i (L_i - z_i)          (z: ideal point, a lower bound)
- ``stche`` smooth Tchebycheff            mu * log sum_i exp(lambda_i (L_i - z_i) / mu)
For PPO, ``L_i = -J_i`` with J_i the clipped surrogate on dimension i, so Tche maximises
``min_i lambda_i (J_i - z_i)`` (Panacea §3.3, DESIGN.md §1). LS is linear, so PPO applies it to the advantages
before the clipped surrogate (``advantage_level``), exactly ``sum_i lambda_i A_i``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass(frozen=True)
class Aggregator:
    name: str
    advantage_level: bool   # True: PPO combines advantages (B, T, D) -> (B, T) before one clipped surrogate
    combine: Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor], float], torch.Tensor]

    def __call__(self, losses: torch.Tensor, lam: torch.Tensor, ideal: Optional[torch.Tensor] = None,
                 mu: float = 0.1) -> torch.Tensor:
        """losses (..., D), lam (D,) or (..., D) -> (...)."""
        return self.combine(losses, lam.to(losses.dtype), ideal, mu)


def _ls(losses: torch.Tensor, lam: torch.Tensor, ideal: Optional[torch.Tensor], mu: float) -> torch.Tensor:
    return (lam * losses).sum(-1)


def _gap(losses: torch.Tensor, lam: torch.Tensor, ideal: Optional[torch.Tensor]) -> torch.Tensor:
    return lam * (losses - (ideal.to(losses) if ideal is not None else 0.0))


def _tche(losses: torch.Tensor, lam: torch.Tensor, ideal: Optional[torch.Tensor], mu: float) -> torch.Tensor:
    return _gap(losses, lam, ideal).max(-1).values


def _stche(losses: torch.Tensor, lam: torch.Tensor, ideal: Optional[torch.Tensor], mu: float) -> torch.Tensor:
    return mu * torch.logsumexp(_gap(losses, lam, ideal) / mu, dim=-1)


AGGREGATORS: dict[str, Aggregator] = {
    "ls": Aggregator("ls", advantage_level=True, combine=_ls),
    "tche": Aggregator("tche", advantage_level=False, combine=_tche),
    "stche": Aggregator("stche", advantage_level=False, combine=_stche),
}


def get_aggregator(name: str) -> Aggregator:
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregation {name!r}; choose one of {sorted(AGGREGATORS)}")
    return AGGREGATORS[name]
