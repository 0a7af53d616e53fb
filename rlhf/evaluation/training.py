"""A Pareto front's evaluation, one implementation for ``rlhf/evaluate.py`` and the evaluation inside training.

For every preference: generate on the same held-out prompts with per-prompt sampling noise (common random
numbers), score every objective with the score models (costs negated: all higher-is-better) and with any extra
scorer (e.g. a ground-truth oracle), and average over prompts into one point; then the front's metrics against one
reference point (``rlhf/evaluation/pareto.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from rlhf.core.config import check, doc_field
from rlhf.data.datasets import take_columns
from rlhf.evaluation.front import (FrontEvalFields, FrontGenerator, fit_and_format, front_points, load_preferences,
                                   plot_record, score_responses, summarize)
from rlhf.scoring.scorer import Scorer

# ----------------------------------------------------------------------------------------------------------
# The front during training (PPO, DPO, Panacea-SFT): the same evaluation on a schedule, logged every time
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainEvalConfig(FrontEvalFields):
    """The front evaluated while training (``eval.every`` steps), by the same code as ``rlhf/evaluate.py``: a fixed
    prompt subset and per-prompt noise, so points are comparable over steps; one reference point for the run."""

    every: int = doc_field(0, "evaluate the front every N steps (and at step 0 and the end); 0: never")
    grid: float = doc_field(0.25, "simplex grid step (D=2: 5 points, D=3: 15)")
    n_prompts: int = doc_field(32, "held-out prompts evaluated (the first N)")
    with_base: bool = doc_field(True, "also score the base model once (adapter off) and mark it on the plots")
    reference_margin: float = doc_field(0.5, "null reference_point: derived at the first evaluation, this many standard "
                                             "deviations of the responses' scores below its lowest point (kept for "
                                             "the whole run)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.every >= 0, "every", f"must be >= 0 (0: never), got {self.every}")
        check(self.every == 0 or self.prompts is not None, "prompts",
              "is required when eval.every > 0: the held-out prompts to evaluate the front on")
        check(self.reference_margin > 0, "reference_margin", f"must be > 0, got {self.reference_margin}")

    def due(self, step: int, last: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == last)


class TrainingFront:
    """Evaluates the live model's front on a fixed prompt subset; rank r takes prompts r, r + world, ...; the
    per-prompt scores are gathered so every rank returns the same record as ``evaluate.py`` on the checkpoint."""

    def __init__(self, cfg: TrainEvalConfig, names: Sequence[str], tokenizer: Any, scorer: Scorer,
                 extra: dict[str, Any], rank: int = 0, world: int = 1, synced_gpus: bool = False) -> None:
        from rlhf.data.datasets import load_rows, other_columns, prompt_column, require_columns

        self.cfg, self.names, self.tokenizer, self.scorer, self.extra = cfg, list(names), tokenizer, scorer, extra
        self.rank, self.world, self.synced = rank, world, synced_gpus
        rows = load_rows(cfg.prompts, cfg.split, cfg.n_prompts)
        require_columns(rows, [cfg.prompt_column], cfg.prompts, hint="set eval.prompt_column")
        values, kept = prompt_column(rows, cfg.prompt_column, cfg.prompts)
        raw, texts = fit_and_format(cfg, tokenizer, values, f"eval prompts of {cfg.prompts!r}")
        self.columns = other_columns(rows, cfg.prompt_column, kept)  # column -> one value per prompt
        if len(raw) < world:
            from rlhf.data.datasets import DataError

            raise DataError(f"eval.n_prompts gives {len(raw)} prompts for {world} processes: give each at least one")
        self.raw, self.texts = raw, texts
        self.prefs = load_preferences(cfg, len(self.names))
        # this rank's prompts, padded (repeating its first) so that every rank makes as many generate calls: under
        # ZeRO-3 generation is collective
        per = -(-len(raw) // world)
        mine = list(range(rank, len(raw), world))
        self.keys = mine + mine[:1] * (per - len(mine))
        self.reference: Optional[list[float]] = None
        self.base: Optional[dict[str, np.ndarray]] = None                              # scorer -> (1, N, D)
        # one decoder for the run (an engine such as vLLM starts once, not at every evaluation), told before each
        # evaluation that the model changed since the last
        self.backend: Any = None

    def due(self, step: int, last: int) -> bool:
        """Whether the schedule (``eval.every``, and the last step) evaluates after step ``step``."""
        return self.cfg.due(step, last)

    def _gather(self, local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per scorer (P, N_local, D) -> (P, N, D) in prompt order (padding dropped)."""
        from rlhf.runtime import engine

        parts = engine.gather_objects((self.keys, local))
        out: dict[str, np.ndarray] = {}
        for name in local:
            full = np.full((local[name].shape[0], len(self.raw), local[name].shape[2]), np.nan)
            for keys, scores in parts:
                for i, k in enumerate(keys):
                    full[:, k] = scores[name][:, i]
            out[name] = full
        return out

    def __call__(self, model: torch.nn.Module) -> dict[str, Any]:
        """The front's record (``summarize``), with the run's fixed reference point. Collective: every rank calls."""
        if self.backend is None:
            self.backend = self.cfg.backend.build()
        else:
            self.backend.after_update(model)
        gen = FrontGenerator(model, self.tokenizer, self.cfg, synced_gpus=self.synced, backend=self.backend)
        texts, raw = [self.texts[k] for k in self.keys], [self.raw[k] for k in self.keys]
        columns = take_columns(self.columns, self.keys)
        was_training = model.training
        model.eval()
        try:
            per_prompt = self._gather(score_responses(self.scorer, self.extra, raw, gen.panacea(self.prefs, texts,
                                                                                                 self.keys), columns))
            if self.cfg.with_base and self.base is None:  # the adapter off does not change: once per run
                self.base = self._gather(score_responses(self.scorer, self.extra, raw, [gen.base(texts, self.keys)],
                                                         columns))
        finally:
            model.train(was_training)
        if self.reference is None:
            self.reference = self._derive_reference(per_prompt)
        return summarize(self.names, self.prefs, per_prompt, self.reference["score models"], self.base,
                         {k: v for k, v in self.reference.items() if k != "score models"}, strict=False)

    def _derive_reference(self, per_prompt: dict[str, np.ndarray]) -> dict[str, list[float]]:
        """Per scorer a point below this first front (and the base) by ``reference_margin`` times the spread (std)
        of the individual responses' scores per objective. At step 0 the adapter is zero and every point is the base
        point, so the front's own range is 0: a margin of that range would put the reference right under the base,
        and the curve would count only points that dominate it. The responses' spread measures how far a point can
        move, so later fronts get volume for what they gain even where they give up some of another objective."""
        from rlhf.evaluation.pareto import parse_reference

        given = parse_reference(self.cfg.reference_point, len(self.names))
        fronts = front_points(per_prompt, self.prefs)
        bases = front_points(self.base) if self.base is not None else {}
        refs = {}
        for k, v in fronts.items():
            lowest = np.min(np.concatenate([v] + ([bases[k]] if k in bases else [])), axis=0)      # (D,)
            spread = np.nanstd(per_prompt[k].reshape(-1, v.shape[1]), axis=0)                     # (D,)
            refs[k] = (lowest - self.cfg.reference_margin * np.maximum(spread, 1e-6)).tolist()
        if given is not None:
            refs["score models"] = given
        return refs

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference,
                "base": None if self.base is None else {k: v.tolist() for k, v in self.base.items()}}

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        if state:
            self.reference = state["reference"]
            self.base = None if state["base"] is None else {k: np.asarray(v, float) for k, v in state["base"].items()}

    def eval_yaml(self) -> dict[str, Any]:
        """``evaluate.py --config`` values that reproduce this evaluation on a checkpoint (same prompts, noise and
        reference points)."""
        from rlhf.core.config import to_dict

        cfg = {k: v for k, v in to_dict(self.cfg).items() if k in {f for f in FrontEvalFields.__dataclass_fields__}}
        ref = self.reference or {}
        cfg["reference_point"] = ",".join(map(str, ref["score models"])) if "score models" in ref else None
        cfg["extra_reference_points"] = {k: ",".join(map(str, v)) for k, v in ref.items() if k != "score models"}
        cfg["with_base"] = self.cfg.with_base
        return cfg


def front_metrics(record: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """Scalars to log from a front record: per scorer the hypervolume, inner product, sparsity and spacing, and each
    objective's score at every vertex and at the centre of the simplex (the preference nearest to it)."""
    prefs = np.asarray(record["preferences"], float)
    D = len(names)
    vertices = {i: int(np.argmax(prefs[:, i])) for i in range(D)}
    centre = int(np.argmin(np.abs(prefs - 1.0 / D).sum(1)))
    out: dict[str, Any] = {}
    scorers = {"score_models": (record["points"], record["metrics"]),
               **{k: (record["extra_points"][k], record["extra_metrics"][k]) for k in record["extra_points"]}}
    for scorer, (points, metrics) in scorers.items():
        pts = np.asarray(points, float)
        for k, v in metrics.items():
            out[f"eval/{scorer}/{k}"] = v
        for i, j in vertices.items():
            for d, name in enumerate(names):
                out[f"eval/{scorer}/vertex_{names[i]}/{name}"] = float(pts[j, d])
        for d, name in enumerate(names):
            out[f"eval/{scorer}/centre/{name}"] = float(pts[centre, d])
    return out


def compact(record: dict[str, Any]) -> dict[str, Any]:
    """What metrics.jsonl keeps of a front (enough to plot it later without W&B): preferences, points and base
    point per scorer, reference points."""
    return {"preferences": record["preferences"], "points": record["points"], "extra_points": record["extra_points"],
            "base_point": record["base_point"], "base_extra_points": record["base_extra_points"],
            "reference_point": record["reference_point"], "extra_reference_points": record["extra_reference_points"],
            "objectives": record["objectives"]}


def log_front(run: Any, record: dict[str, Any], step: int, seconds: float) -> dict[str, Any]:
    """One evaluation into metrics.jsonl (scalars and the compact front) and W&B (scalars, a front image per
    scorer, and a table of the points that W&B can compare across steps). Rank 0 writes."""
    from rlhf.runtime import engine

    names = record["objectives"]
    metrics = {**front_metrics(record, names), "time/eval": round(seconds, 3)}
    run.log(metrics, step, jsonl_extra={"eval/front": compact(record)})
    tracker = run.tracker
    if engine.is_main() and tracker is not None and tracker.run is not None:
        out = run.dir / "eval_fronts"
        out.mkdir(exist_ok=True)
        for scorer in [None, *record["extra_points"]]:
            label = scorer or "score_models"
            png = plot_record(record, out / f"{label}_step_{step:08d}.png", f"step {step}: {label}", scorer)
            tracker.image(f"eval/{label}/front_plot", str(png), step)
        cols = ["step"] + [f"lambda/{n}" for n in names] + [f"{s}/{n}" for s in ["score_models", *record["extra_points"]]
                                                            for n in names]
        rows = [[step, *p, *record["points"][j], *[x for k in record["extra_points"] for x in record["extra_points"][k][j]]]
                for j, p in enumerate(record["preferences"])]
        tracker.table("eval/front_table", cols, rows, step)
    return metrics


def evaluate_and_log(front: "TrainingFront", model: torch.nn.Module, run: Any, step: int) -> dict[str, Any]:
    """Evaluate the front now and log it; the training RNG streams are left exactly as they were (evaluation
    must not change what training samples next, or a resumed run would diverge). Collective."""
    import time

    from rlhf.runtime.checkpoint import rng_state, set_rng_state

    saved = rng_state()
    t0 = time.perf_counter()
    try:
        record = front(model)
    finally:
        set_rng_state(saved)
    return log_front(run, record, step, time.perf_counter() - t0)
