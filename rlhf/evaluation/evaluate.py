"""Evaluating trained runs (``python rlhf/evaluate.py``; its docstring has the usage): the config, the three
methods (panacea: one preference-conditioned run; dps: fixed-lambda runs; rs: Rewarded Soups), and ``evaluate``, which
writes ``pareto.json`` and its plots. The evaluation itself is ``rlhf/evaluation/front.py``'s, shared with training."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import torch

from rlhf.adapter.policy import RunInfo, load_run_model, outputs_beside, protected, read_run
from rlhf.adapter.svd_lora import PreferenceError, load_adapter, svd_lora_layers, weights_added
from rlhf.core.config import check, doc_field, load_config, split_config_arg
from rlhf.data.datasets import DataError, load_rows, other_columns, prompt_column, require_columns
from rlhf.evaluation.front import (FrontEvalFields, FrontGenerator, check_extra_scorers, fit_and_format,
                                   load_preferences, plot_record, score_responses, summarize)
from rlhf.evaluation.pareto import FrontError, parse_reference
from rlhf.runtime.engine import placement
from rlhf.scoring.objectives import OBJECTIVES, extra_scorer
from rlhf.scoring.scorer import Scorer


@dataclass(frozen=True)
class EvalConfig(FrontEvalFields):
    """A front evaluation: ``python rlhf/evaluate.py --run RUN [--key value ...]`` (or ``--config FILE``)."""

    run: tuple[str, ...] = doc_field((), "run directory (RUN, RUN/policy or a checkpoint); repeat --run for dps / rs")
    method: Optional[str] = doc_field(None, "how the runs give a front: panacea (one run), dps or rs (null: panacea "
                                            "for one run)")
    name: Optional[str] = doc_field(None, "method name written to pareto.json (null: the method)")
    out: Optional[str] = doc_field(None, "output directory (null: RUN/eval)")
    one_at_a_time: bool = doc_field(False, "one generate call per preference (slower; for checking)")
    with_base: bool = doc_field(False, "also score the base model (adapter off)")
    scorer: tuple[str, ...] = doc_field((), "extra scorer NAME=module:function or NAME=URL (repeat for several)")
    extra_reference_points: dict[str, str] = doc_field(
        factory=dict, doc="per extra scorer, its reference point (null: one derived from this front alone)")
    device: Optional[str] = doc_field(None, "where the policy and score models run (null: the GPU when there is "
                                            "one, else the CPU)")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = doc_field("auto", "weights' dtype (auto: bf16 on a GPU, fp32 "
                                                                       "on the CPU)")
    no_wandb: bool = doc_field(False, "do not log to W&B")
    wandb_project: str = doc_field("panacea-rlhf", "W&B project")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.run) >= 1, "run", "is required: --run RUN (a finished training run)")
        check(self.method is None or self.method in METHODS, "method",
              f"must be one of {sorted(METHODS)}, got {self.method!r}")
        check(self.method is not None or len(self.run) == 1, "method", "several --run given: say --method dps or rs")
        check(all("=" in s for s in self.scorer), "scorer", f"entries are NAME=module:function or NAME=URL, got {list(self.scorer)}")

    @property
    def method_name(self) -> str:
        return self.method or "panacea"

    @property
    def out_dir(self) -> Path:
        """``out``, or RUN/eval beside the run (RUN/eval/step_N for a checkpoint): never inside what was read."""
        return Path(self.out) if self.out else outputs_beside(self.run[0], "eval")


def load_generator(runs: Sequence[RunInfo], cfg: EvalConfig, device: Any, dtype: Any) -> FrontGenerator:
    """The runs' base model with the first run's adapter, on ``device`` in ``dtype``."""
    if any(r.base_model != runs[0].base_model for r in runs):
        raise ValueError(f"runs were trained from different base models: {[r.base_model for r in runs]}")
    model, tokenizer, _ = load_run_model(runs[0].path, dtype)
    return FrontGenerator(model.to(device), tokenizer, cfg, one_at_a_time=cfg.one_at_a_time)


def panacea_front(gen: FrontGenerator, runs: Sequence[RunInfo], prefs: list[list[float]], prompts: list[str]
                  ) -> tuple[list[list[float]], list[list[str]]]:
    """One preference-conditioned run: every preference through the adapter's lambda input."""
    return prefs, gen.panacea(prefs, prompts)


def dps_front(gen: FrontGenerator, runs: Sequence[RunInfo], prefs: Optional[list[list[float]]], prompts: list[str]
              ) -> tuple[list[list[float]], list[list[str]]]:
    """Fixed-lambda runs (DPS): each run evaluated at its own training preference, one point each."""
    points, out = [], []
    for run in runs:
        if run.fixed_preference is None:
            raise PreferenceError(f"--method dps needs fixed-lambda runs; {run.path} sampled lambda")
        load_adapter(gen.model, run.path)
        points.append(run.fixed_preference)
        out.append(gen.panacea([run.fixed_preference], prompts)[0])
    return points, out


def vertex_runs(runs: Sequence[RunInfo]) -> list[RunInfo]:
    """Rewarded Soups' runs ordered by objective: run i must be the one trained at vertex e_i (read from its
    run.json), whatever order they were given in."""
    D = len(runs[0].objectives)
    by_vertex: dict[int, RunInfo] = {}
    for run in runs:
        f = run.fixed_preference
        vertex = None if f is None else [i for i, x in enumerate(f) if abs(x - 1.0) < 1e-6]
        if f is None or len(vertex) != 1 or sum(abs(x) for x in f) > 1.0 + 1e-6:
            raise PreferenceError(f"--method rs needs one run per objective, each trained at a vertex of the simplex "
                                  f"(preference.mode fixed, e.g. [1, 0]); {run.path} has preference {f}")
        if vertex[0] in by_vertex:
            raise PreferenceError(f"--method rs: {by_vertex[vertex[0]].path} and {run.path} were both trained at "
                                  f"vertex {vertex[0]} ({run.objective_names[vertex[0]]})")
        by_vertex[vertex[0]] = run
    missing = [runs[0].objective_names[i] for i in range(D) if i not in by_vertex]
    if missing:
        raise PreferenceError(f"--method rs: no run trained at the vertex of objective(s) {missing}; pass one "
                              f"fixed-vertex run per objective")
    return [by_vertex[i] for i in range(D)]


@torch.no_grad()
def soups_front(gen: FrontGenerator, runs: Sequence[RunInfo], prefs: list[list[float]], prompts: list[str]
                ) -> tuple[list[list[float]], list[list[str]]]:
    """Rewarded Soups: W(lambda) = W0 + sum_i lambda_i dW_i, i.e. the lambda-weighted average of the fine-tuned
    weights theta_i = W0 + dW_i (each run's delta at its own vertex). Interpolating U and V separately would make dW
    quadratic in lambda, so the deltas are interpolated, through the adapter's merge mechanism (restored exactly)."""
    runs = vertex_runs(runs)
    layers = [layer for _, layer in svd_lora_layers(gen.model)]
    deltas = []                                                     # per run: one delta per adapted layer
    for run in runs:
        load_adapter(gen.model, run.path)
        f = torch.tensor(run.fixed_preference)
        deltas.append([layer.delta_weight(f.to(layer.lora_s.device)) for layer in layers])
    out = []
    for pref in prefs:
        soup = [sum(w * d[i] for w, d in zip(pref, deltas)) for i in range(len(layers))]
        with weights_added(gen.model, soup, torch.tensor(pref)):
            out.append(gen.unconditioned(prompts))
    return prefs, out


METHODS: dict[str, Callable[..., tuple[list[list[float]], list[list[str]]]]] = {
    "panacea": panacea_front, "dps": dps_front, "rs": soups_front}


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    bad = protected(cfg.out_dir)
    if bad:
        raise FrontError(f"--out {cfg.out_dir}: {bad}; write the evaluation elsewhere (the default, RUN/eval, is "
                         f"beside the run)")
    runs = [read_run(r) for r in cfg.run]
    names = runs[0].objective_names
    for r in runs[1:]:
        if r.objective_names != names:
            raise FrontError(f"runs disagree on objectives: {names} vs {r.objective_names} ({r.path})")
    method = cfg.method_name
    D = len(names)
    prefs = load_preferences(cfg, D) if method != "dps" else None
    # Prompts, score models and extra scorers are checked before any generation.
    prompts_path = cfg.prompts
    if prompts_path is None:
        prompts_path = json.loads((runs[0].path / "run.json").read_text()).get("prompts_path")
        if prompts_path is None:
            raise DataError("pass --prompts DATA (held-out prompts to evaluate on)")
    rows = load_rows(prompts_path, cfg.split, cfg.n_prompts)
    require_columns(rows, [cfg.prompt_column], prompts_path, hint="set --prompt_column")
    raw, prompt_rows = prompt_column(rows, cfg.prompt_column, prompts_path)
    columns = other_columns(rows, cfg.prompt_column, prompt_rows)  # what function and URL sources read with a prompt
    device, dtype = placement(cfg.device, cfg.dtype)
    objectives = [OBJECTIVES.parse(o, f"{runs[0].path}/run.json objectives[{i}]") for i, o in enumerate(runs[0].objectives)]
    for i, o in enumerate(objectives):  # each source's own checks (a function's or a server's probe call) first
        o.preflight(f"{runs[0].path}/run.json objectives[{i}]", raw, f"prompts of {prompts_path!r}", prompt_rows,
                    columns)
    extra_specs = {**runs[0].eval_scorers, **dict(s.split("=", 1) for s in cfg.scorer)}
    extra = {name: extra_scorer(name, spec, D) for name, spec in extra_specs.items()}
    check_extra_scorers(extra, raw, columns)  # a quick call on two prompts: the wrong width is refused before any load
    scorer = Scorer(objectives, dtype=dtype, device=device)
    reference = parse_reference(cfg.reference_point, D)
    extra_refs = {k: parse_reference(v, D) for k, v in cfg.extra_reference_points.items()}

    gen = load_generator(runs, cfg, device, dtype)
    raw, texts = fit_and_format(cfg, gen.tokenizer, raw, f"prompts of {prompts_path!r}")
    prefs, responses = METHODS[method](gen, runs, prefs, texts)
    per_prompt = score_responses(scorer, extra, raw, responses, columns)                      # scorer -> (P, N, D)
    base_scores = score_responses(scorer, extra, raw, [gen.base(texts)], columns) if cfg.with_base else None
    if reference is None:  # summarize derives it
        warnings.warn("no --reference-point: using one derived from this front alone; to compare methods use "
                      "compare_fronts.py (one shared reference point)")
    result = {"method": cfg.name or method,
              **summarize(names, prefs, per_prompt, reference, base_scores, extra_refs),
              "n_prompts": len(raw), "seed": cfg.seed, "noise": cfg.noise, "runs": [str(r.path) for r in runs],
              "greedy": bool(cfg.greedy),
              "samples": [{"preference": list(prefs[j]), "prompt": raw[0], "response": responses[j][0]}
                          for j in range(len(prefs))]}
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "pareto.json").write_text(json.dumps(result, indent=2))
    label = result["method"]
    plot_record(result, out / "pareto.png", f"{label}: HV={result['metrics']['hypervolume']:.4g}", label=label)
    for name in result["extra_points"]:
        plot_record(result, out / f"pareto_{name}.png", f"{label} scored by {name}", scorer=name, label=label)
    if not cfg.no_wandb:
        _log_wandb(result, out, cfg)
    return result


def _log_wandb(result: dict[str, Any], out: Path, cfg: EvalConfig) -> None:
    from rlhf.runtime.tracking import Tracker, WandbConfig

    tracker = Tracker(WandbConfig(project=cfg.wandb_project, run_name=f"eval-{result['method']}"),
                      {"runs": result["runs"], "n_prompts": result["n_prompts"]}, str(out), active=True)
    if tracker.run is not None:
        import wandb

        cols = [f"lambda/{n}" for n in result["objectives"]] + [f"score/{n}" for n in result["objectives"]]
        rows = [p + q for p, q in zip(result["preferences"], result["points"])]
        tracker.run.log({"eval/pareto": wandb.Image(str(out / "pareto.png")),
                         "eval/front": wandb.Table(columns=cols, data=rows),
                         **{f"eval/{k}": v for k, v in result["metrics"].items()}})
    tracker.finish()


def parse_args(argv: Sequence[str]) -> EvalConfig:
    """``--key value`` options (``--run`` repeatable) and an optional ``--config FILE``, into an EvalConfig."""
    path, overrides = split_config_arg(list(argv))
    return load_config(EvalConfig, path, overrides)
