"""How D objectives become one training signal under lambda: a registry shared by PPO, DPO and SFT.

Offline trainers (DPO, SFT) combine per-dimension *losses* ``L (..., D)`` (lower is better) into one loss per row:
- ``ls``    linear scalarisation          sum_i lambda_i L_i
- ``tche``  Tchebycheff                   max_i lambda_i L_i        (losses are >= 0: the ideal point is 0)
- ``stche`` smooth Tchebycheff            mu * log sum_i exp(lambda_i L_i / mu)

PPO maximises the objectives' *values* J_i (expected normalised score) and combines advantages with weights ``w``
on the simplex, ``A = sum_i w_i A_i`` (plus the KL term once, outside: DESIGN.md §1):
- ``ls``    w = lambda (exactly sum_i lambda_i A_i);
- ``tche``  w = onehot(argmax_i lambda_i (z_i - J_i)): the policy gradient of max min_i lambda_i (J_i - z_i) goes to
            the dimension that lags most relative to its weight;
- ``stche`` w = softmax(lambda (z - J) / mu).
J_i lives in score space (the batch's mean of the scores PPO trains on, under this batch's lambda), and the ideal
point z dominates every J seen (running max plus a margin, or the user's; ``IdealPoint``). The naive reading
(J_i = the clipped surrogate, near 0 at the old policy) makes z_i - J_i change sign and the max pick the dimension
with the *smallest* weight, which is why it is not used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import torch

from rlhf.config import check, doc_field


@dataclass(frozen=True)
class Aggregator:
    name: str
    combine: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]    # (losses (..., D), lam, mu) -> (...)
    weights: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]    # (lam, gap = z - J, mu) -> w, like lam
    uses_ideal: bool                                                         # PPO needs J and z for the weights

    def __call__(self, losses: torch.Tensor, lam: torch.Tensor, mu: float = 0.1) -> torch.Tensor:
        """losses (..., D), lam (D,) or (..., D) -> (...): the loss-level aggregation of DPO and SFT."""
        return self.combine(losses, lam.to(losses.dtype), mu)


def _ls_loss(losses: torch.Tensor, lam: torch.Tensor, mu: float) -> torch.Tensor:
    return (lam * losses).sum(-1)


def _tche_loss(losses: torch.Tensor, lam: torch.Tensor, mu: float) -> torch.Tensor:
    return (lam * losses).max(-1).values


def _stche_loss(losses: torch.Tensor, lam: torch.Tensor, mu: float) -> torch.Tensor:
    return mu * torch.logsumexp(lam * losses / mu, dim=-1)


def _ls_weights(lam: torch.Tensor, gap: torch.Tensor, mu: float) -> torch.Tensor:
    return lam


def _tche_weights(lam: torch.Tensor, gap: torch.Tensor, mu: float) -> torch.Tensor:
    lagging = lam * gap                                                                   # (..., D)
    return torch.nn.functional.one_hot(lagging.argmax(-1), lam.shape[-1]).to(lam.dtype)


def _stche_weights(lam: torch.Tensor, gap: torch.Tensor, mu: float) -> torch.Tensor:
    return torch.softmax(lam * gap / mu, dim=-1)


AGGREGATORS: dict[str, Aggregator] = {
    "ls": Aggregator("ls", _ls_loss, _ls_weights, uses_ideal=False),
    "tche": Aggregator("tche", _tche_loss, _tche_weights, uses_ideal=True),
    "stche": Aggregator("stche", _stche_loss, _stche_weights, uses_ideal=True),
}


def get_aggregator(name: str) -> Aggregator:
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregation {name!r}; choose one of {sorted(AGGREGATORS)}")
    return AGGREGATORS[name]


@dataclass(frozen=True)
class AggregationConfig:
    """How the objectives combine into one training signal. ``aggregation: tche`` is short for ``{name: tche}``."""

    SCALAR_FIELD: ClassVar[str] = "name"

    name: str = doc_field("ls", f"one of {sorted(AGGREGATORS)}: ls = sum_i lambda_i A_i; tche = Tchebycheff; "
                                f"stche = smooth Tchebycheff")
    mu: float = doc_field(0.1, "temperature of smooth Tchebycheff (stche)")
    ideal: Optional[tuple[float, ...]] = doc_field(
        None, "PPO Tchebycheff ideal point z, one entry per objective, in the units of the scores PPO trains on "
              "(normalised where objectives[].normalize; null: running max of the batch means J_i plus ideal_margin)")
    ideal_margin: float = doc_field(0.1, "how far the running ideal point sits above the best J_i seen (score units)")

    def __post_init__(self) -> None:
        check(self.name in AGGREGATORS, "aggregation.name", f"must be one of {sorted(AGGREGATORS)}, got {self.name!r}")
        check(self.mu > 0, "aggregation.mu", f"must be > 0, got {self.mu}")
        check(self.ideal_margin > 0, "aggregation.ideal_margin", f"must be > 0, got {self.ideal_margin}")

    def build(self) -> Aggregator:
        return get_aggregator(self.name)


class IdealPoint:
    """PPO's Tchebycheff reference: the ideal point z (D,) in score space and the advantage weights it gives.

    ``z`` is the user's (``aggregation.ideal``) or the running max of every batch-mean score vector J seen plus
    ``ideal_margin``, so z dominates every J and ``z - J > 0``. Updated from rank-averaged J, so every rank holds the
    same z; part of the trainer state (resume continues it).
    """

    def __init__(self, cfg: AggregationConfig) -> None:
        self.aggregator, self.mu, self.margin = cfg.build(), cfg.mu, cfg.ideal_margin
        self.fixed = cfg.ideal is not None
        self.value: Optional[torch.Tensor] = torch.tensor(cfg.ideal, dtype=torch.float32) if self.fixed else None

    def weights(self, lam: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
        """lam (D,) or (B, D); J (D,) or (B, D): each preference's current values. Returns w shaped like lam."""
        if not self.aggregator.uses_ideal:
            return self.aggregator.weights(lam, lam, self.mu)
        J = J.float().to(lam.device)
        if not self.fixed:
            seen = J.reshape(-1, J.shape[-1]).max(0).values + self.margin                          # (D,)
            self.value = seen.cpu() if self.value is None else torch.maximum(self.value, seen.cpu())
        gap = self.value.to(lam.device) - J                                                          # (..., D)
        return self.aggregator.weights(lam.float(), gap, self.mu)

    def state_dict(self) -> Optional[list[float]]:
        return None if self.value is None else self.value.tolist()

    def load_state_dict(self, state: Optional[list[float]]) -> None:
        if not self.fixed:
            self.value = None if state is None else torch.tensor(state, dtype=torch.float32)
