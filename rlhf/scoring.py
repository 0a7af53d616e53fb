"""Scoring: every objective's score model on the decoded text -> end scores (B, D), higher = better everywhere.

Each score model re-tokenises the conversation with its own tokenizer (it may differ from the policy's). Cost
models are negated so that "higher is better" holds in every dimension (DESIGN.md §1). Optional per-dimension
running normalisation (statistics shared across ranks), then clipping to +-score_clip.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional, Sequence

import torch

from rlhf import engine
from rlhf.config import check, doc_field
from rlhf.data import DEFAULT_TEMPLATE, format_conversation


@dataclass(frozen=True)
class ObjectiveConfig:
    """One preference dimension and the model that scores it. ``- helpful`` is short for ``- {name: helpful}``."""

    SCALAR_FIELD: ClassVar[str] = "name"

    name: str = doc_field("", "objective name (helpful, harmless, ...); used in logs and pareto.json")
    model: str = doc_field("", "score model: hub name or path (AutoModelForSequenceClassification, num_labels=1); "
                               "required by PPO and by evaluation")
    kind: Literal["reward", "cost"] = doc_field("reward", "reward: higher = better; cost: higher = worse (negated)")
    normalize: bool = doc_field(False, "divide by a running std and subtract a running mean (per dimension)")
    batch_size: int = doc_field(16, "sequences per score-model forward pass")
    max_length: int = doc_field(1024, "max tokens the score model reads (left-truncated)")
    prompt_template: str = doc_field(DEFAULT_TEMPLATE, "conversation layout if the score tokenizer has no chat template")

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "is required")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.max_length >= 1, "max_length", f"must be >= 1 token, got {self.max_length}")


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
        culprits = [f"{o.name} ({o.model})" for o, b in zip(self.objectives, bad_dims.tolist()) if b > 0]
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
    """Holds the D score models; ``raw(prompts, responses) -> (B, D)`` with costs negated."""

    def __init__(self, objectives: Sequence[ObjectiveConfig], dtype: Optional[torch.dtype] = None,
                 ds_config: Optional[dict[str, Any]] = None, device: Optional[torch.device] = None) -> None:
        from reward_models.score_model import load_score_model

        self.objectives = tuple(objectives)
        self.models, self.tokenizers, self.offsets = [], [], []
        for obj in self.objectives:
            model, tok, meta = load_score_model(obj.model, dtype=dtype)
            if meta.get("kind") and meta["kind"] != obj.kind:
                import warnings

                warnings.warn(f"objective '{obj.name}' is configured as kind={obj.kind} but {obj.model}'s "
                              f"dimension.json says {meta['kind']}; using the config's kind")
            if ds_config is not None:  # training: placed (and partitioned under ZeRO-3) like the actor
                model = engine.initialize_inference(model, ds_config)
            elif device is not None:
                model = model.to(device)
            self.models.append(model)
            self.tokenizers.append(tok)
            self.offsets.append(float(meta.get("score_offset", 0.0)))

    @torch.no_grad()
    def raw(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        from reward_models.score_model import score_texts

        cols = []
        for obj, model, tok, offset in zip(self.objectives, self.models, self.tokenizers, self.offsets):
            texts = [format_conversation(tok, p, r, obj.prompt_template) for p, r in zip(prompts, responses)]
            s = score_texts(model, tok, texts, obj.batch_size, obj.max_length, offset=offset)    # (B,)
            cols.append(-s if obj.kind == "cost" else s)
        return torch.stack(cols, dim=-1)                                                            # (B, D)
