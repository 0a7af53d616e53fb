"""The multi-objective block every Panacea trainer shares (PPO, DPO, Panacea-SFT): the D objectives, the SVD-LoRA
adapter whose last D singular values carry lambda, how lambda is sampled, and how the objectives aggregate. The
``pref_dim == D`` check and the other cross-field checks live here, once."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from rlhf.aggregation import AggregationConfig
from rlhf.config import check, doc_field
from rlhf.front import TrainEvalConfig
from rlhf.preference import PreferenceConfig
from rlhf.scoring import ObjectiveConfig
from rlhf.svd_lora import SVDLoRAConfig


@dataclass(frozen=True)
class MultiObjectiveConfig:
    """Objectives, adapter, preference sampling and aggregation (mixed into each trainer's config: top-level keys)."""

    PATH_FIELDS: ClassVar[dict[str, str]] = {'objectives[*].model': 'model', 'eval.prompts': 'data'}

    objectives: tuple[ObjectiveConfig, ...] = doc_field((), "the D objectives, in lambda order")
    adapter: Optional[SVDLoRAConfig] = doc_field(factory=SVDLoRAConfig, doc="SVD-LoRA adapter (pref_dim = D)")
    preference: PreferenceConfig = doc_field(factory=PreferenceConfig, doc="lambda sampling")
    aggregation: AggregationConfig = doc_field(factory=AggregationConfig, doc="how the objectives combine")
    eval_scorers: dict[str, str] = doc_field(
        factory=dict, doc="extra scorers for evaluation, name -> 'module:function' (e.g. a ground-truth oracle)")
    eval: TrainEvalConfig = doc_field(factory=TrainEvalConfig, doc="the front evaluated during training (W&B, "
                                                                   "metrics.jsonl): every N steps, off by default")

    def __post_init__(self) -> None:
        getattr(super(), "__post_init__", lambda: None)()
        names = [o.name for o in self.objectives]
        D = len(names)
        check(D >= 1, "objectives", "needs at least one objective (name, and model where one scores it)")
        check(len(set(names)) == D, "objectives", f"names must be unique, got {names}")
        if self.adapter is not None:
            check(self.adapter.pref_dim == D, "adapter.pref_dim",
                  f"is {self.adapter.pref_dim} but {D} objectives are configured ({names}); they must match")
        if self.preference.mode == "fixed":
            check(len(self.preference.fixed) == D, "preference.fixed",
                  f"has {len(self.preference.fixed)} entries but {D} objectives are configured ({names})")
        if self.aggregation.ideal is not None:
            check(len(self.aggregation.ideal) == D, "aggregation.ideal",
                  f"needs {D} entries (one per objective {names}), got {len(self.aggregation.ideal)}")

        if self.eval.every:
            check(self.adapter is not None, "eval.every", "evaluates the front over lambda, which needs the adapter "
                  "(plain SFT has none: set eval.every 0, or train Panacea-SFT with an adapter)")
            check(all(o.model for o in self.objectives), "eval.every",
                  "needs a score model for every objective (objectives[].model) to score the front")

    def training_front(self, tokenizer: Any, scorer: Any, rank: int, world: int, synced_gpus: bool = False) -> Any:
        """The in-training front evaluation (``rlhf/front.py``), or None when ``eval.every`` is 0."""
        if not self.eval.every:
            return None
        from rlhf.front import TrainingFront
        from rlhf.runs import load_callable

        extra = {name: load_callable(spec) for name, spec in self.eval_scorers.items()}
        return TrainingFront(self.eval, self.objective_names, tokenizer, scorer, extra, rank, world, synced_gpus)

    @property
    def objective_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objectives)
