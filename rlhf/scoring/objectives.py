"""Objectives: the D preference dimensions and where each one's scores come from (the objective-source plug-in
point). An objective names exactly one source by its key:

    objectives:
      - {name: helpful, model: runs/rm_helpful}               # a score model (its own tokenizer, batching, length)
      - {name: harmless, model: runs/cm_harmless, kind: cost}

``kind``, ``normalize`` and the score clipping apply to every source alike (``rlhf/scoring/scorer.py``). An objective
with no source (``- sft``) only names a dimension (plain or Panacea-SFT and DPO without an in-training front); a
trainer that scores (PPO, evaluation) refuses it. Each source's ``build(...)`` returns a ``ScoreSource``:
``score(prompts, responses) -> (B,)`` raw scores in the source's own orientation (a cost's higher = worse).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional, Protocol, Sequence

import torch

from rlhf.core.config import check, doc_field
from rlhf.core.registry import Plugin, Registry
from rlhf.data.chat import DEFAULT_TEMPLATE, Prompt


class ScoreSource(Protocol):
    """What the scorer calls: one raw score per (prompt, response), a (B,) float tensor."""

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor: ...


@dataclass(frozen=True)
class ObjectiveConfig(Plugin):
    """One preference dimension and its source of scores. ``- helpful`` is short for ``- {name: helpful}``."""

    SCORES: ClassVar[bool] = False   # True when the objective has a source that can score responses

    name: str = doc_field("", "objective name (helpful, harmless, ...); used in logs and pareto.json")
    kind: Literal["reward", "cost"] = doc_field("reward", "reward: higher = better; cost: higher = worse (negated)")
    normalize: bool = doc_field(False, "divide by a running std and subtract a running mean (per dimension)")

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "is required")

    def describe(self) -> str:
        """The objective and its source, for messages: ``helpful (model runs/rm)``."""
        return self.name

    def preflight(self, path: str, prompts: Sequence[Prompt], what: str, rows: Optional[Sequence[int]] = None
                  ) -> None:
        """Checks that need the source's files but no weights, run before any model loads: ``path`` is this
        objective's config field, ``prompts`` every prompt it will score (from ``what``, rows ``rows``)."""

    def build(self, *, dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None,
              ds_config: Optional[dict[str, Any]] = None) -> ScoreSource:
        raise ValueError(f"objective {self.name!r} names no source of scores: give it one of "
                         f"{OBJECTIVES.names()} (e.g. model: PATH of a score model)")


OBJECTIVES: Registry = Registry("objective source", ObjectiveConfig, default=None, key=None)


@OBJECTIVES.register("model")
@dataclass(frozen=True)
class ModelObjective(ObjectiveConfig):
    """A score model (AutoModelForSequenceClassification, num_labels = 1) with its own tokenizer."""

    SCORES: ClassVar[bool] = True
    PATH_FIELDS: ClassVar[dict[str, str]] = {"model": "model"}

    model: str = doc_field("", "score model: hub name or path (AutoModelForSequenceClassification, num_labels=1)")
    batch_size: int = doc_field(16, "sequences per score-model forward pass")
    max_length: Optional[int] = doc_field(None, "max tokens the score model reads (left-truncated); null: as many as "
                                                "the model's positions allow (1024 when its config does not say)")
    prompt_template: str = doc_field(DEFAULT_TEMPLATE, "conversation layout if the score tokenizer has no chat template")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.model), "model", "is required: a score model's path or hub name")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.max_length is None or self.max_length >= 1, "max_length",
              f"must be >= 1 token or null, got {self.max_length}")

    def describe(self) -> str:
        return f"{self.name} (model {self.model})"

    def preflight(self, path: str, prompts: Sequence[Prompt], what: str, rows: Optional[Sequence[int]] = None
                  ) -> None:
        """Its max_length fits the score model's positions, and its tokenizer's chat template renders every prompt."""
        from transformers import AutoConfig, AutoTokenizer

        from rlhf.data.chat import preflight_lengths, render_each

        from rlhf.scoring.score_model import check_score_config

        config = AutoConfig.from_pretrained(self.model)
        if not _is_safe_rlhf_dir(self.model):
            check_score_config(config, self.model)
        if self.max_length is not None:
            preflight_lengths(config, f"{path}.model", self.model, self.max_length, f"{path}.max_length")
        render_each(AutoTokenizer.from_pretrained(self.model), prompts, self.prompt_template, what, f"{path}.model",
                    rows)

    def build(self, *, dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None,
              ds_config: Optional[dict[str, Any]] = None) -> ScoreSource:
        """Load the score model; under training (``ds_config``) placed (and partitioned under ZeRO-3) like the actor,
        else on ``device``."""
        from rlhf.runtime import engine
        from rlhf.scoring.score_model import load_score_model

        model, tokenizer, meta = load_score_model(self.model, dtype=dtype)
        if meta.get("kind") and meta["kind"] != self.kind:
            warnings.warn(f"objective '{self.name}' is configured as kind={self.kind} but {self.model}'s "
                          f"dimension.json says {meta['kind']}; using the config's kind")
        if ds_config is not None:
            model = engine.initialize_inference(model, ds_config)
        elif device is not None:
            model = model.to(device)
        from rlhf.data.chat import model_positions

        max_length = self.max_length or model_positions(model.config) or 1024
        return ModelSource(model, tokenizer, float(meta.get("score_offset", 0.0)), self.batch_size, max_length,
                           self.prompt_template)


def _is_safe_rlhf_dir(path: str) -> bool:
    import json
    from pathlib import Path

    from rlhf.scoring.score_model import SAFE_RLHF_ARCHS

    f = Path(path) / "config.json"
    return f.is_file() and bool(SAFE_RLHF_ARCHS & set(json.loads(f.read_text()).get("architectures") or []))


class ModelSource:
    """A loaded score model: the conversation re-rendered with its own tokenizer, batched by length."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, offset: float, batch_size: int, max_length: int,
                 template: str) -> None:
        self.model, self.tokenizer, self.offset = model, tokenizer, offset
        self.batch_size, self.max_length, self.template = batch_size, max_length, template

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        from rlhf.data.chat import format_conversation
        from rlhf.scoring.score_model import score_texts

        texts = [format_conversation(self.tokenizer, p, r, self.template) for p, r in zip(prompts, responses)]
        return score_texts(self.model, self.tokenizer, texts, self.batch_size, self.max_length,
                           offset=self.offset)                                                # (B,)
