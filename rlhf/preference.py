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
from typing import Literal, Optional

import torch

from rlhf.config import check, doc_field
from rlhf.svd_lora import PREF_SUM_TOL


@dataclass(frozen=True)
class PreferenceConfig:
    """How lambda is chosen during training."""

    mode: Literal["dirichlet", "fixed"] = doc_field("dirichlet", "dirichlet: sample each step; fixed: one lambda (DPS/RS baselines)")
    alpha: float = doc_field(1.0, "Dirichlet concentration (1 = uniform on the simplex)")
    vertex_prob: float = doc_field(0.2, "probability of drawing a simplex vertex (one objective only) instead")
    fixed: Optional[tuple[float, ...]] = doc_field(None, "the preference for mode=fixed, e.g. [0.3, 0.7]")
    per: Literal["batch", "sample"] = doc_field("batch", "one lambda per rollout batch, or one per prompt")

    def __post_init__(self) -> None:
        check(self.alpha > 0, "preference.alpha", f"must be > 0, got {self.alpha}")
        check(0.0 <= self.vertex_prob <= 1.0, "preference.vertex_prob", f"must be in [0, 1], got {self.vertex_prob}")
        if self.mode == "fixed":
            check(self.fixed is not None, "preference.fixed", "is required when preference.mode is 'fixed'")
            check(all(x >= 0 and math.isfinite(x) for x in self.fixed), "preference.fixed",
                  f"entries must be finite and >= 0 (a point on the simplex), got {list(self.fixed)}")
            check(abs(sum(self.fixed) - 1.0) <= PREF_SUM_TOL, "preference.fixed",
                  f"entries must sum to 1, got {list(self.fixed)} (sum {sum(self.fixed):.6g})")


def _draw(cfg: PreferenceConfig, dim: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(n, D) preferences on the simplex."""
    if cfg.mode == "fixed":
        return torch.tensor(cfg.fixed, dtype=torch.float32).expand(n, dim).clone()
    gamma = torch._standard_gamma(torch.full((n, dim), cfg.alpha, dtype=torch.float64), generator=gen)  # (n, D)
    pref = (gamma / gamma.sum(-1, keepdim=True)).float()                                                   # (n, D)
    vertex = torch.rand(n, generator=gen) < cfg.vertex_prob                                                # (n,)
    corners = torch.nn.functional.one_hot(torch.randint(0, dim, (n,), generator=gen), dim).float()         # (n, D)
    return torch.where(vertex[:, None], corners, pref)


def _mix(seed: int, step: int, stream: int) -> int:
    # Deterministic across processes (Python's hash() of str is salted per process, so it is not used).
    return ((seed * 1_000_003 + step) * 1_009 + stream) % (2**63 - 1)


def sample_preference(cfg: PreferenceConfig, dim: int, seed: int, step: int, rank: int = 0,
                      batch_size: int = 1) -> torch.Tensor:
    """lambda for this step: (D,) per batch (identical on every rank) or (batch_size, D) per sample."""
    if cfg.mode == "fixed" and len(cfg.fixed) != dim:
        raise ValueError(f"preference.fixed has {len(cfg.fixed)} entries but there are {dim} objectives")
    if cfg.per == "batch":
        gen = torch.Generator().manual_seed(_mix(seed, step, 0))
        return _draw(cfg, dim, 1, gen)[0]                                                                    # (D,)
    gen = torch.Generator().manual_seed(_mix(seed, step, 1 + rank))
    return _draw(cfg, dim, batch_size, gen)                                                                  # (B, D)


def sample_for_micro_batch(cfg: PreferenceConfig, dim: int, seed: int, micro: int, grad_accum: int, rank: int,
                           rows: int) -> torch.Tensor:
    """lambda for one micro-batch of a supervised trainer: (D,) per optimiser step (every micro-batch of a step and
    every rank share it), or (rows, D) per sample (fresh rows for each micro-batch and rank). Reproducible on resume:
    it depends only on the seed and the micro-batch counter."""
    if cfg.per == "batch":
        return sample_preference(cfg, dim, seed, micro // grad_accum)                                       # (D,)
    return sample_preference(cfg, dim, seed, micro, rank, batch_size=rows)                                  # (B, D)
