"""Scoring: every objective's source on the decoded text -> end scores (B, D), higher = better everywhere.

Each source scores in its own way (``rlhf/scoring/objectives.py``: a score model re-tokenises the conversation with
its own tokenizer, a function reads the text, a server answers over HTTP). Costs are negated so that "higher is better" holds in every dimension (DESIGN.md §1). Optional per-dimension
running normalisation (statistics shared across ranks), then clipping to +-score_clip.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from rlhf.runtime import engine
from rlhf.scoring.objectives import ObjectiveConfig


class RunningMeanStd:
    """Per-dimension running mean/variance (Chan et al. parallel update), identical on every rank."""

    def __init__(self, dim: int) -> None:
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.var = torch.ones(dim, dtype=torch.float64)
        self.count = 0.0

    def update(self, x: torch.Tensor) -> None:
        """x: (B, D) local scores; statistics are summed over ranks first."""
        x = x.detach().double().cpu()
        stats = torch.cat([x.sum(0), (x ** 2).sum(0), torch.tensor([float(x.shape[0])], dtype=torch.float64)])
        stats = engine.all_reduce_sum(stats.to(engine.device())).cpu()
        D = x.shape[1]
        n = stats[-1].item()
        if n == 0:
            return
        batch_mean = stats[:D] / n
        batch_var = (stats[D:2 * D] / n - batch_mean ** 2).clamp(min=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta ** 2 * self.count * n / total) / total
        self.count = total

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean.to(x.device)) / (self.var.to(x.device).sqrt() + 1e-8)).to(x.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = torch.tensor(state["mean"], dtype=torch.float64)
        self.var = torch.tensor(state["var"], dtype=torch.float64)
        self.count = float(state["count"])


class ScoreProcessor:
    """Raw end scores (B, D) -> the scores PPO trains on: per-dimension running normalisation where the objective
    asks for it (statistics shared across ranks), then clipping to +-clip."""

    def __init__(self, objectives: Sequence[ObjectiveConfig], clip: float) -> None:
        self.use = torch.tensor([o.normalize for o in objectives])                                 # (D,)
        self.norm = RunningMeanStd(len(objectives))
        self.clip = clip

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        scores = raw                                                                                # (B, D)
        if bool(self.use.any()):
            self.norm.update(raw)
            scores = torch.where(self.use.to(raw.device), self.norm.normalize(raw), raw)
        return scores.clamp(-self.clip, self.clip)                                                  # (B, D)

    def state_dict(self) -> dict[str, Any]:
        return self.norm.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.norm.load_state_dict(state)


class NonFiniteScoresError(RuntimeError):
    """Too many consecutive batches had NaN/inf scores; the run stops without writing a checkpoint."""


class FiniteGuard:
    """Skips batches whose scores are NaN/inf on any rank (naming the score model) and stops after ``max_bad`` in a
    row. The counters are part of the trainer state (a resumed run counts on)."""

    def __init__(self, objectives: Sequence[ObjectiveConfig], max_bad: int) -> None:
        self.objectives, self.max_bad = tuple(objectives), max_bad
        self.in_row, self.total = 0, 0

    def ok(self, raw: torch.Tensor, step: int) -> bool:
        """raw: (B, D). True when every rank's scores are finite."""
        bad_dims = (~torch.isfinite(raw)).any(0).double()                                           # (D,)
        bad_dims = engine.all_reduce_sum(bad_dims.to(engine.device())).cpu()
        if not bool(bad_dims.any()):
            self.in_row = 0
            return True
        self.in_row += 1
        self.total += 1
        culprits = [o.describe() for o, b in zip(self.objectives, bad_dims.tolist()) if b > 0]
        import warnings

        warnings.warn(f"step {step}: NaN/inf scores from score model(s) {culprits} ({self.in_row} batch(es) in a "
                      f"row, {self.total} in total); batch skipped")
        if self.in_row >= self.max_bad:
            raise NonFiniteScoresError(
                f"{self.in_row} consecutive batches had NaN/inf scores (max_bad_batches={self.max_bad}) from "
                f"{culprits}; stopping without a checkpoint. Check those score models")
        return False

    def state_dict(self) -> dict[str, int]:
        return {"bad_in_row": self.in_row, "bad_total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.in_row, self.total = state["bad_in_row"], state["bad_total"]


class Scorer:
    """Every objective's source, built once; ``raw(prompts, responses, columns) -> (B, D)`` with costs negated."""

    def __init__(self, objectives: Sequence[ObjectiveConfig], dtype: Optional[torch.dtype] = None,
                 ds_config: Optional[dict[str, Any]] = None, device: Optional[torch.device] = None) -> None:
        self.objectives = tuple(objectives)
        self.sources = [o.build(dtype=dtype, device=device, ds_config=ds_config) for o in self.objectives]

    @torch.no_grad()
    def raw(self, prompts: Sequence[Any], responses: Sequence[str],
            columns: Optional[dict[str, Sequence[Any]]] = None) -> torch.Tensor:
        """``columns``: the prompts' other dataset columns (column -> B values), for the sources that read them."""
        cols = []
        for obj, source in zip(self.objectives, self.sources):
            s = source.score(prompts, responses, columns).float()                                   # (B,)
            cols.append(-s if obj.kind == "cost" else s)
        return torch.stack(cols, dim=-1)                                                            # (B, D)
