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
from typing import Any, Callable, Optional

import torch

from rlhf.core.config import check, doc_field
from rlhf.core.registry import Plugin, Registry


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


class IdealPoint:
    """PPO's Tchebycheff reference: the ideal point z (D,) in score space.

    ``z`` is the user's (``ideal``) or the running max of every batch-mean score vector J seen plus ``margin``, so z
    dominates every J and ``z - J > 0``. The update takes ``seen``, the max of J over every rank's rows (the caller
    reduces it), so every rank holds the same z, and the one checkpoint (rank 0's) resumes every rank exactly.
    """

    def __init__(self, ideal: Optional[tuple[float, ...]], margin: float) -> None:
        self.margin, self.fixed = margin, ideal is not None
        self.value: Optional[torch.Tensor] = torch.tensor(ideal, dtype=torch.float32) if self.fixed else None

    def gap(self, J: torch.Tensor, seen: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``z - J`` (shaped like J), after moving the running z up to cover ``seen`` (D,): the max of J over every
        rank (default: over this J's rows)."""
        J = J.float()
        if not self.fixed:
            seen = J.reshape(-1, J.shape[-1]).max(0).values if seen is None else seen.float()
            top = seen.cpu() + self.margin                                                          # (D,)
            self.value = top if self.value is None else torch.maximum(self.value, top)
        return self.value.to(J.device) - J                                                          # (..., D)

    def state_dict(self) -> Optional[list[float]]:
        return None if self.value is None else self.value.tolist()

    def load_state_dict(self, state: Optional[list[float]]) -> None:
        if not self.fixed:
            self.value = None if state is None else torch.tensor(state, dtype=torch.float32)


class Aggregation:
    """An aggregation with its settings bound (what ``AggregationConfig.build`` returns).

    - ``loss(losses (..., D), lam (D,) | (..., D)) -> (...)``: DPO's and SFT's loss-level aggregation;
    - ``weights(lam, J) -> w``: PPO's advantage weights on the simplex (J: each preference's current values,
      shaped like lam; only read when ``uses_ideal``);
    - ``ideal``: the Tchebycheff ideal point (None for LS), whose state the trainer checkpoints.
    """

    def __init__(self, name: str, combine: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
                 weigh: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor], mu: float,
                 ideal: Optional[IdealPoint]) -> None:
        self.name, self._combine, self._weigh, self.mu, self.ideal = name, combine, weigh, mu, ideal

    @property
    def uses_ideal(self) -> bool:
        return self.ideal is not None

    def loss(self, losses: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return self._combine(losses, lam.to(losses.dtype), self.mu)

    def weights(self, lam: torch.Tensor, J: Optional[torch.Tensor] = None,
                seen: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``seen`` (D,): the max of J over every rank's rows, so that every rank moves the ideal point alike."""
        if self.ideal is None:
            return self._weigh(lam, lam, self.mu)
        return self._weigh(lam.float(), self.ideal.gap(J.to(lam.device), seen), self.mu)

    def state_dict(self) -> Optional[list[float]]:
        return None if self.ideal is None else self.ideal.state_dict()

    def load_state_dict(self, state: Optional[list[float]]) -> None:
        if self.ideal is not None:
            self.ideal.load_state_dict(state)


# ----------------------------------------------------------------------------------------------------------
# The plug-in point: ``aggregation: {name: ls | tche | stche, ...}``
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AggregationConfig(Plugin):
    """How the objectives combine into one training signal. ``aggregation: tche`` is short for ``{name: tche}``."""

    def build(self) -> Aggregation:
        raise NotImplementedError


AGGREGATIONS: Registry = Registry("aggregation", AggregationConfig, default="ls")


@AGGREGATIONS.register("ls")
@dataclass(frozen=True)
class LinearScalarisation(AggregationConfig):
    """Linear scalarisation: sum_i lambda_i A_i (losses: sum_i lambda_i L_i)."""

    def build(self) -> Aggregation:
        return Aggregation("ls", _ls_loss, _ls_weights, 0.0, None)


@dataclass(frozen=True)
class _IdealFields(AggregationConfig):
    ideal: Optional[tuple[float, ...]] = doc_field(
        None, "PPO Tchebycheff ideal point z, one entry per objective, in the units of the scores PPO trains on "
              "(normalised where objectives[].normalize; null: running max of the batch means J_i plus ideal_margin)")
    ideal_margin: float = doc_field(0.1, "how far the running ideal point sits above the best J_i seen (score units)")

    def __post_init__(self) -> None:
        check(self.ideal_margin > 0, "ideal_margin", f"must be > 0, got {self.ideal_margin}")

    def check(self, run_cfg: Any, path: str) -> None:
        D = len(getattr(run_cfg, "objectives", ()) or ())
        check(self.ideal is None or not D or len(self.ideal) == D, f"{path}.ideal",
              f"needs {D} entries (one per objective), got {len(self.ideal or ())}")


@AGGREGATIONS.register("tche")
@dataclass(frozen=True)
class Tchebycheff(_IdealFields):
    """Tchebycheff: the whole push on the dimension lagging most behind the ideal point relative to its weight."""

    def build(self) -> Aggregation:
        return Aggregation("tche", _tche_loss, _tche_weights, 0.0, IdealPoint(self.ideal, self.ideal_margin))


@AGGREGATIONS.register("stche")
@dataclass(frozen=True)
class SmoothTchebycheff(_IdealFields):
    """Smooth Tchebycheff: softmax(lambda (z - J) / mu) (losses: mu log sum_i exp(lambda_i L_i / mu))."""

    mu: float = doc_field(0.1, "temperature")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.mu > 0, "mu", f"must be > 0, got {self.mu}")

    def build(self) -> Aggregation:
        return Aggregation("stche", _stche_loss, _stche_weights, self.mu, IdealPoint(self.ideal, self.ideal_margin))
