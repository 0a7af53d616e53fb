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
from typing import Callable, ClassVar, Optional

import torch

from rlhf.config import check, doc_field


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


@dataclass(frozen=True)
class AggregationConfig:
    """How the D objectives combine into one training signal. ``aggregation: tche`` is short for ``{name: tche}``."""

    SCALAR_FIELD: ClassVar[str] = "name"

    name: str = doc_field("ls", f"one of {sorted(AGGREGATORS)}: ls = sum_i lambda_i A_i; tche = Tchebycheff; "
                                f"stche = smooth Tchebycheff")
    mu: float = doc_field(0.1, "temperature of smooth Tchebycheff (stche)")
    ideal: Optional[tuple[float, ...]] = doc_field(None, "Tchebycheff ideal point z, one entry per objective (null: "
                                                         "running max of J_i)")

    def __post_init__(self) -> None:
        check(self.name in AGGREGATORS, "aggregation.name", f"must be one of {sorted(AGGREGATORS)}, got {self.name!r}")
        check(self.mu > 0, "aggregation.mu", f"must be > 0, got {self.mu}")

    def build(self) -> Aggregator:
        return get_aggregator(self.name)


class IdealPoint:
    """The Tchebycheff ideal point z: the user's (``aggregation.ideal``) or a running max of the batch-mean per-dim
    surrogates J_i, kept identical on every rank (updated from rank-averaged values). Part of the trainer state."""

    def __init__(self, cfg: AggregationConfig) -> None:
        self.fixed = cfg.ideal is not None
        self.tracks = cfg.name != "ls" and not self.fixed
        self.value: Optional[torch.Tensor] = torch.tensor(cfg.ideal) if self.fixed else None          # (D,)

    def update(self, surrogate: torch.Tensor) -> None:
        """surrogate: (D,) this step's rank-averaged per-dimension surrogate."""
        if self.tracks:
            s = surrogate.float()
            self.value = s if self.value is None else torch.maximum(self.value, s)

    def state_dict(self) -> Optional[list[float]]:
        return None if self.value is None else self.value.tolist()

    def load_state_dict(self, state: Optional[list[float]]) -> None:
        self.value = None if state is None else torch.tensor(state)
