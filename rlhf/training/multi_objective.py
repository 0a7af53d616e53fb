"""The multi-objective block every Panacea trainer shares (PPO, DPO, Panacea-SFT): the D objectives, the SVD-LoRA
adapter whose last D singular values carry lambda, how lambda is sampled, and how the objectives aggregate. The
``pref_dim == D`` check and the other cross-field checks live here, once."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from rlhf.adapter.svd_lora import SVDLoRAConfig
from rlhf.algo.aggregation import AGGREGATIONS, AggregationConfig
from rlhf.algo.preference import PREFERENCES, PreferenceConfig
from rlhf.core.config import check, doc_field
from rlhf.evaluation.training import TrainEvalConfig
from rlhf.scoring.objectives import ObjectiveConfig


@dataclass(frozen=True)
class MultiObjectiveConfig:
    """Objectives, adapter, preference sampling and aggregation (mixed into each trainer's config: top-level keys)."""

    PATH_FIELDS: ClassVar[dict[str, str]] = {'eval.prompts': 'data'}

    objectives: tuple[ObjectiveConfig, ...] = doc_field((), "the D objectives, in lambda order")
    adapter: Optional[SVDLoRAConfig] = doc_field(factory=SVDLoRAConfig, doc="SVD-LoRA adapter (pref_dim = D)")
    preference: PreferenceConfig = doc_field(factory=PREFERENCES.default_block, doc="lambda sampling")
    aggregation: AggregationConfig = doc_field(factory=AGGREGATIONS.default_block,
                                                  doc="how the objectives combine")
    eval_scorers: dict[str, str] = doc_field(
        factory=dict, doc="extra scorers for evaluation, name -> 'module:function' or an http(s) URL, scoring every "
                          "objective at once (one row of D numbers per response; e.g. a ground-truth oracle)")
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
        if self.eval.every:
            check(self.adapter is not None, "eval.every", "evaluates the front over lambda, which needs the adapter "
                  "(plain SFT has none: set eval.every 0, or train Panacea-SFT with an adapter)")
            check(all(o.SCORES for o in self.objectives), "eval.every",
                  "needs a source of scores for every objective (e.g. objectives[].model) to score the front")

    def extra_scorers(self) -> dict[str, Any]:
        """``eval_scorers`` as score sources (``rlhf/scoring/objectives.py`` ``extra_scorer``), each of width D."""
        from rlhf.scoring.objectives import extra_scorer

        return {name: extra_scorer(name, spec, len(self.objectives)) for name, spec in self.eval_scorers.items()}

    def check_eval_scorers(self, prompts: Any, columns: Optional[dict[str, list]] = None) -> None:
        """Before any model loads: every extra scorer imports (or its server answers) and gives D numbers per row on
        two of ``prompts``. Only where the front is evaluated during training (``eval.every``)."""
        from rlhf.scoring.objectives import probe

        if self.eval.every:
            for source in self.extra_scorers().values():
                probe(source, prompts, columns)

    def training_front(self, tokenizer: Any, scorer: Any, rank: int, world: int, synced_gpus: bool = False) -> Any:
        """The in-training front evaluation (``rlhf/evaluation/front.py``), or None when ``eval.every`` is 0."""
        if not self.eval.every:
            return None
        from rlhf.evaluation.training import TrainingFront

        return TrainingFront(self.eval, self.objective_names, tokenizer, scorer, self.extra_scorers(), rank, world,
                             synced_gpus)

    def run_info(self, trainer: str, base_model: str, **extra: Any) -> dict[str, Any]:
        """What a saved policy's run.json records of this run (``rlhf/adapter/policy.py`` ``write_run_info``)."""
        return dict(trainer=trainer, base_model=base_model, objectives=self.objectives, preference=self.preference,
                    eval_scorers=self.eval_scorers, **extra)

    @property
    def objective_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objectives)
