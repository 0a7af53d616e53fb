"""The multi-objective block every Panacea trainer shares (PPO, DPO, Panacea-SFT): the D objectives, the SVD-LoRA
adapter whose last D singular values carry lambda, how lambda is sampled, and how the objectives aggregate. The
``pref_dim == D`` check and the other cross-field checks live here, once."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from rlhf.aggregation import AggregationConfig
from rlhf.config import check, doc_field
from rlhf.preference import PreferenceConfig
from rlhf.scoring import ObjectiveConfig
from rlhf.svd_lora import SVDLoRAConfig


@dataclass(frozen=True)
class MultiObjectiveConfig:
    """Objectives, adapter, preference sampling and aggregation (mixed into each trainer's config: top-level keys)."""

    PATH_FIELDS: ClassVar[dict[str, str]] = {'objectives[*].model': 'model'}

    objectives: tuple[ObjectiveConfig, ...] = doc_field((), "the D objectives, in lambda order")
    adapter: Optional[SVDLoRAConfig] = doc_field(factory=SVDLoRAConfig, doc="SVD-LoRA adapter (pref_dim = D)")
    preference: PreferenceConfig = doc_field(factory=PreferenceConfig, doc="lambda sampling")
    aggregation: AggregationConfig = doc_field(factory=AggregationConfig, doc="how the objectives combine")
    eval_scorers: dict[str, str] = doc_field(
        factory=dict, doc="extra scorers for evaluation, name -> 'module:function' (e.g. a ground-truth oracle)")

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

    @property
    def objective_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objectives)
