"""Preference sampling: which lambda each rollout batch is trained under (Panacea §3.3, DESIGN.md §1).

One lambda per rollout batch by default, drawn from Dirichlet(alpha) with extra mass on the simplex vertices (the
paper samples the vertices more often, so that the ends of the front are learned). It stays fixed from generation
through old log-probs, GAE and every PPO epoch on that batch.

Data parallelism: every rank draws the *same* lambda per step, from a generator seeded by (seed, step) — no
communication, reproducible on resume, and the step's gradient average is then a gradient of one scalarised
objective. ``per: sample`` instead draws one lambda per prompt (seeded by seed, step and rank).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch

from rlhf.adapter.svd_lora import PREF_SUM_TOL
from rlhf.core.config import check, doc_field
from rlhf.core.registry import Plugin, Registry


def _mix(seed: int, step: int, stream: int) -> int:
    # Deterministic across processes (Python's hash() of str is salted per process, so it is not used).
    return ((seed * 1_000_003 + step) * 1_009 + stream) % (2**63 - 1)


class PreferenceSampler:
    """A sampler with its settings, the preference dimension D and the run's seed bound (``build``'s result).

    ``draw(n, gen) -> (n, D)`` is the variant's; the draws below are shared: ``for_step`` and ``for_micro_batch``
    depend only on (seed, counter, rank), so every rank agrees where it must and a resumed run draws the same."""

    def __init__(self, dim: int, seed: int, per_row: bool) -> None:
        self.dim, self.seed, self.per_row = dim, seed, per_row

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def for_step(self, step: int, rank: int = 0, rows: int = 1) -> torch.Tensor:
        """lambda for rollout step ``step``: (D,) per batch (identical on every rank) or (rows, D) per sample."""
        if not self.per_row:
            gen = torch.Generator().manual_seed(_mix(self.seed, step, 0))
            return self.draw(1, gen)[0]                                                              # (D,)
        gen = torch.Generator().manual_seed(_mix(self.seed, step, 1 + rank))
        return self.draw(rows, gen)                                                                  # (B, D)

    def for_micro_batch(self, micro: int, grad_accum: int, rank: int, rows: int) -> torch.Tensor:
        """lambda for one micro-batch of a supervised trainer: (D,) per optimiser step (every micro-batch of a step
        and every rank share it), or (rows, D) per sample (fresh rows for each micro-batch and rank)."""
        if not self.per_row:
            return self.for_step(micro // grad_accum)                                               # (D,)
        return self.for_step(micro, rank, rows)                                                      # (B, D)


# ----------------------------------------------------------------------------------------------------------
# The plug-in point: ``preference: {name: dirichlet | fixed, ...}``
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreferenceConfig(Plugin):
    """How lambda is chosen during training. ``preference: fixed`` is short for ``{name: fixed}``."""

    @property
    def per_row(self) -> bool:
        """True when each prompt (row) gets its own lambda rather than the whole batch one."""
        return False

    @property
    def fixed_value(self) -> Optional[tuple[float, ...]]:
        """The one lambda of a fixed-preference run (a DPS / Rewarded-Soups baseline), else None."""
        return None

    def build(self, dim: int, seed: int) -> PreferenceSampler:
        raise NotImplementedError


PREFERENCES: Registry = Registry("preference sampler", PreferenceConfig, default="dirichlet")


@PREFERENCES.register("dirichlet")
@dataclass(frozen=True)
class DirichletPreference(PreferenceConfig):
    """Dirichlet(alpha) on the simplex with extra mass on its vertices (the paper's sampling)."""

    alpha: float = doc_field(1.0, "Dirichlet concentration (1 = uniform on the simplex)")
    vertex_prob: float = doc_field(0.2, "probability of drawing a simplex vertex (one objective only) instead")
    per: Literal["batch", "sample"] = doc_field("batch", "one lambda per rollout batch, or one per prompt")

    def __post_init__(self) -> None:
        check(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        check(0.0 <= self.vertex_prob <= 1.0, "vertex_prob", f"must be in [0, 1], got {self.vertex_prob}")

    @property
    def per_row(self) -> bool:
        return self.per == "sample"

    def build(self, dim: int, seed: int) -> PreferenceSampler:
        return _Dirichlet(dim, seed, self.per_row, self.alpha, self.vertex_prob)


class _Dirichlet(PreferenceSampler):
    def __init__(self, dim: int, seed: int, per_row: bool, alpha: float, vertex_prob: float) -> None:
        super().__init__(dim, seed, per_row)
        self.alpha, self.vertex_prob = alpha, vertex_prob

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, D) preferences on the simplex."""
        dim = self.dim
        gamma = torch._standard_gamma(torch.full((n, dim), self.alpha, dtype=torch.float64), generator=gen)  # (n, D)
        pref = (gamma / gamma.sum(-1, keepdim=True)).float()                                                   # (n, D)
        vertex = torch.rand(n, generator=gen) < self.vertex_prob                                               # (n,)
        corners = torch.nn.functional.one_hot(torch.randint(0, dim, (n,), generator=gen), dim).float()         # (n, D)
        return torch.where(vertex[:, None], corners, pref)


@PREFERENCES.register("fixed")
@dataclass(frozen=True)
class FixedPreference(PreferenceConfig):
    """One lambda for the whole run (the DPS and Rewarded-Soups baselines)."""

    value: tuple[float, ...] = doc_field((), "the preference, e.g. [0.3, 0.7] (one weight per objective)")

    def __post_init__(self) -> None:
        check(len(self.value) >= 1, "value", "is required: one weight per objective, e.g. [0.3, 0.7]")
        check(all(x >= 0 and math.isfinite(x) for x in self.value), "value",
              f"entries must be finite and >= 0 (a point on the simplex), got {list(self.value)}")
        check(abs(sum(self.value) - 1.0) <= PREF_SUM_TOL, "value",
              f"entries must sum to 1, got {list(self.value)} (sum {sum(self.value):.6g})")

    @property
    def fixed_value(self) -> Optional[tuple[float, ...]]:
        return self.value

    def check(self, run_cfg: Any, path: str) -> None:
        names = [o.name for o in getattr(run_cfg, "objectives", ())]
        check(not names or len(self.value) == len(names), f"{path}.value",
              f"has {len(self.value)} entries but {len(names)} objectives are configured ({names})")

    def build(self, dim: int, seed: int) -> PreferenceSampler:
        if len(self.value) != dim:
            raise ValueError(f"preference.value has {len(self.value)} entries but there are {dim} objectives")
        return _Fixed(dim, seed, self.value)


class _Fixed(PreferenceSampler):
    def __init__(self, dim: int, seed: int, value: tuple[float, ...]) -> None:
        super().__init__(dim, seed, per_row=False)
        self.value = value

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.tensor(self.value, dtype=torch.float32).expand(n, self.dim).clone()
