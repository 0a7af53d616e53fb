"""Trace the Pareto front a trained model gives as lambda moves, and its quality figures.

    python rlhf/evaluate.py --run RUN [--grid 0.1 | --preferences FILE] [--prompts DATA] [--out DIR]
    python rlhf/evaluate.py --method dps --run RUN_a --run RUN_b ...     # fixed-lambda PPO runs (one point each)
    python rlhf/evaluate.py --method rs  --run RUN_helpful --run RUN_harmless --grid 0.1   # Rewarded Soups
    python rlhf/evaluate.py --help                                       # every option, documented

For every preference: generate on the same held-out prompts with the same sampling seed, score every objective
with the run's score models (costs negated: all objectives higher-is-better) and with any extra scorer (e.g. a
ground-truth oracle), and average to one point. A Panacea run evaluates all preferences of a prompt batch in one
generate call (one lambda per row). Writes DIR/pareto.json and DIR/pareto.png and logs both to W&B.
"""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
import torch

from rlhf.config import ConfigError, check, describe, doc_field, load_config, split_config_arg
from rlhf.engine import placement
from rlhf.data import (DEFAULT_TEMPLATE, DataError, check_tokenizer_fits, ensure_pad_token, fit_prompts, format_prompt,
                       load_rows, prompt_column, require_columns)
from rlhf.generation import SamplingFields, make_backend, row_seeds
from rlhf.pareto import FrontError, all_metrics, default_reference, grid, parse_reference, plot_fronts
from rlhf.rollout import decode_responses, generate
from rlhf.runs import RunInfo, load_callable, read_run
from rlhf.scoring import ObjectiveConfig, Scorer
from rlhf.svd_lora import (PreferenceError, adapter_disabled, load_adapter, svd_lora_layers, validate_preference,
                           weights_added)


@dataclass(frozen=True)
class EvalConfig(SamplingFields):
    """A front evaluation: ``python rlhf/evaluate.py --run RUN [--key value ...]`` (or ``--config FILE``)."""

    run: tuple[str, ...] = doc_field((), "run directory (RUN or RUN/policy); repeat --run for dps / rs")
    method: Optional[str] = doc_field(None, "how the runs give a front: panacea (one run), dps or rs (null: panacea "
                                            "for one run)")
    name: Optional[str] = doc_field(None, "method name written to pareto.json (null: the method)")
    grid: float = doc_field(0.1, "simplex grid step (D=2: 11 points, D=3: 66)")
    preferences: Optional[str] = doc_field(None, "JSON list of preference vectors (overrides grid)")
    prompts: Optional[str] = doc_field(None, "held-out prompts: hub name or local file (null: the run's prompts)")
    split: str = doc_field("test", "split (hub datasets)")
    prompt_column: str = doc_field("prompt", "prompt column")
    n_prompts: int = doc_field(64, "prompts evaluated (the first N)")
    out: Optional[str] = doc_field(None, "output directory (null: RUN/eval)")
    seed: int = doc_field(0, "sampling seed (prompt batch k uses seed + k for every preference)")
    batch_size: int = doc_field(16, "prompts per generate call")
    max_prompt_length: int = doc_field(128, "prompt tokens kept")
    greedy: bool = doc_field(False, "greedy decoding instead of seeded sampling")
    noise: Literal["per_prompt", "per_batch"] = doc_field(
        "per_prompt", "sampling noise: per_prompt = each prompt draws from its own seed, the same under every "
                      "preference and method (common random numbers; batched = one at a time); per_batch = one "
                      "RNG stream per generate call (HF sampling)")
    one_at_a_time: bool = doc_field(False, "one generate call per preference (slower; for checking)")
    with_base: bool = doc_field(False, "also score the base model (adapter off)")
    scorer: tuple[str, ...] = doc_field((), "extra scorer NAME=module:function (repeat for several)")
    reference_point: Optional[str] = doc_field(None, "comma-separated values, or a JSON file holding one (shared "
                                                     "across methods)")
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
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(0 < self.grid <= 1 and abs(round(1 / self.grid) * self.grid - 1) < 1e-9, "grid",
              f"must divide 1 (e.g. 0.1, 0.25, 0.5), got {self.grid}")
        check(self.n_prompts >= 1, "n_prompts", f"must be >= 1, got {self.n_prompts}")
        check(all("=" in s for s in self.scorer), "scorer", f"entries are NAME=module:function, got {list(self.scorer)}")

    @property
    def method_name(self) -> str:
        return self.method or "panacea"

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run[0]) / "eval"


def load_preferences(cfg: EvalConfig, dim: int) -> list[list[float]]:
    if cfg.preferences:
        try:
            prefs = json.loads(Path(cfg.preferences).read_text())
        except (OSError, ValueError) as err:
            raise PreferenceError(f"cannot read preferences file {cfg.preferences}: {err}") from None
        if not isinstance(prefs, list) or not prefs:
            raise PreferenceError(f"{cfg.preferences} must hold a non-empty JSON list of preference vectors")
    else:
        prefs = grid(dim, cfg.grid)
    for i, p in enumerate(prefs):
        try:
            validate_preference(p, dim)
        except PreferenceError as err:
            raise PreferenceError(f"preference #{i} {p}: {err}") from None
    return [list(map(float, p)) for p in prefs]


class FrontGenerator:
    """Responses per (preference, prompt) for one base model carrying the run's adapter."""

    def __init__(self, runs: Sequence[RunInfo], cfg: EvalConfig) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.runs, self.cfg = list(runs), cfg
        base = runs[0].base_model
        if any(r.base_model != base for r in runs):
            raise ValueError(f"runs were trained from different base models: {[r.base_model for r in runs]}")
        self.tokenizer = AutoTokenizer.from_pretrained(runs[0].path)
        ensure_pad_token(self.tokenizer)
        check_tokenizer_fits(self.tokenizer, AutoConfig.from_pretrained(base), f"base model {base!r}")
        self.device, self.dtype = placement(cfg.device, cfg.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(base, dtype=self.dtype).to(self.device).eval()
        load_adapter(self.model, runs[0].path, expected_pref_dim=len(runs[0].objectives))
        self.gen_kwargs = dict(max_prompt_length=cfg.max_prompt_length, max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature, top_p=cfg.top_p, do_sample=not cfg.greedy,
                               backend=make_backend(cfg.backend, cfg.compile_backend))

    def _generate(self, prompts: list[str], pref: Optional[torch.Tensor], keys: list[int], k: int) -> list[str]:
        """Responses to ``prompts`` (global prompt indices ``keys``, from prompt batch ``k``) under ``pref``."""
        seeds = None
        if self.cfg.noise == "per_prompt":  # the same noise for a prompt under every preference, method and batch
            seeds = row_seeds(self.cfg.seed, keys)
        else:                               # one RNG stream per generate call (rows of a batch draw in turn)
            torch.manual_seed(self.cfg.seed + k)
        seqs, _, P, _ = generate(self.model, self.tokenizer, prompts, pref, seeds=seeds, **self.gen_kwargs)
        return decode_responses(self.tokenizer, seqs, P)

    def batches(self, prompts: list[str]) -> list[tuple[int, list[int], list[str]]]:
        b = self.cfg.batch_size
        return [(i // b, list(range(i, min(i + b, len(prompts)))), prompts[i:i + b]) for i in range(0, len(prompts), b)]

    def panacea(self, prefs: list[list[float]], prompts: list[str], batched: bool = True) -> list[list[str]]:
        """out[j][i]: response to prompt i under preference j."""
        out: list[list[str]] = [[] for _ in prefs]
        for k, keys, batch in self.batches(prompts):
            if batched:  # all preferences of this prompt batch in one generate call, one lambda per row
                rows = [p for _ in prefs for p in batch]
                lam = torch.tensor([pref for pref in prefs for _ in batch])                        # (P*b, D)
                texts = self._generate(rows, lam, keys * len(prefs), k)
                for j in range(len(prefs)):
                    out[j] += texts[j * len(batch):(j + 1) * len(batch)]
            else:
                for j, pref in enumerate(prefs):
                    out[j] += self._generate(batch, torch.tensor(pref), keys, k)
        return out

    def unconditioned(self, prompts: list[str]) -> list[str]:
        """Responses of the model as it is (no preference input): the base under ``adapter_disabled``, or a merged
        set of weights."""
        return [t for k, keys, batch in self.batches(prompts) for t in self._generate(batch, None, keys, k)]

    def base(self, prompts: list[str]) -> list[str]:
        with adapter_disabled(self.model):
            return self.unconditioned(prompts)


def panacea_front(gen: FrontGenerator, prefs: list[list[float]], prompts: list[str]
                  ) -> tuple[list[list[float]], list[list[str]]]:
    """One preference-conditioned run: every preference through the adapter's lambda input."""
    return prefs, gen.panacea(prefs, prompts, batched=not gen.cfg.one_at_a_time)


def dps_front(gen: FrontGenerator, prefs: Optional[list[list[float]]], prompts: list[str]
              ) -> tuple[list[list[float]], list[list[str]]]:
    """Fixed-lambda runs (DPS): each run evaluated at its own training preference, one point each."""
    points, out = [], []
    for run in gen.runs:
        if run.fixed_preference is None:
            raise PreferenceError(f"--method dps needs fixed-lambda runs; {run.path} sampled lambda")
        load_adapter(gen.model, run.path)
        points.append(run.fixed_preference)
        out.append(gen.panacea([run.fixed_preference], prompts, batched=False)[0])
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
def soups_front(gen: FrontGenerator, prefs: list[list[float]], prompts: list[str]
                ) -> tuple[list[list[float]], list[list[str]]]:
    """Rewarded Soups: W(lambda) = W0 + sum_i lambda_i dW_i, i.e. the lambda-weighted average of the fine-tuned
    weights theta_i = W0 + dW_i (each run's delta at its own vertex). Interpolating U and V separately would make dW
    quadratic in lambda, so the deltas are interpolated, through the adapter's merge mechanism (restored exactly)."""
    runs = vertex_runs(gen.runs)
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


class _FiniteMeans:
    """Means over (prompt) rows that leave out rows with NaN/inf scores, counted per scorer and reported once."""

    def __init__(self) -> None:
        self.skipped: dict[str, list[int]] = {}

    def __call__(self, values: np.ndarray, scorer: str, pref: Any) -> np.ndarray:
        """values: (N, D) one scorer's scores of N responses -> (D,) the mean over rows that are finite."""
        ok = np.isfinite(values).all(axis=1)                                                   # (N,)
        counts = self.skipped.setdefault(scorer, [0, 0])
        counts[0] += int((~ok).sum())
        counts[1] += len(ok)
        if not ok.any():
            raise FrontError(f"scorer {scorer!r} gave NaN/inf scores for every response at preference {pref}; "
                             f"check that scorer (a score model's weights, or an extra scorer's code)")
        return values[ok].mean(0)

    def warn(self) -> None:
        for scorer, (bad, total) in self.skipped.items():
            if bad:
                warnings.warn(f"scorer {scorer!r} gave NaN/inf scores for {bad} of {total} (preference, prompt) "
                              f"pairs; those pairs were left out of its means")


def score_responses(scorer: Scorer, extra: dict[str, Callable], raw_prompts: list[str], responses: list[list[str]]
                    ) -> dict[str, np.ndarray]:
    """Per scorer ("score models" and each extra one) the (P, N, D) scores of N prompts' responses under P
    preferences."""
    out: dict[str, list] = {"score models": [], **{name: [] for name in extra}}
    for texts in responses:
        out["score models"].append(scorer.raw(raw_prompts, texts).float().numpy())
        for name, fn in extra.items():
            out[name].append(np.asarray(fn(raw_prompts, texts), float))
    return {k: np.stack(v) for k, v in out.items()}


def front_points(per_prompt: dict[str, np.ndarray], prefs: Optional[Sequence[Any]] = None) -> dict[str, np.ndarray]:
    """Per scorer the (P, D) front: each preference's mean over prompts. Responses with non-finite scores are left
    out of a point's mean (counted, named by scorer); a point with none left is refused."""
    mean = _FiniteMeans()
    points = {k: np.stack([mean(v[j], k, prefs[j] if prefs is not None else "base") for j in range(len(v))])
              for k, v in per_prompt.items()}
    mean.warn()
    return points


def paired_margin_se(per_prompt: np.ndarray, base: np.ndarray) -> np.ndarray:
    """(P, D) standard error of each point's margin over the base point, paired by prompt: std over prompts of
    (score under lambda - base score) / sqrt(N). Shared sampling noise (``noise: per_prompt``) shrinks it."""
    diff = per_prompt - base[None]                                                            # (P, N, D)
    n = np.isfinite(diff).sum(1)                                                              # (P, D)
    return np.nanstd(diff, axis=1, ddof=1) / np.sqrt(np.maximum(n, 1))


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
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
    raw = list(prompt_column(rows, cfg.prompt_column, prompts_path))
    device, dtype = placement(cfg.device, cfg.dtype)
    scorer = Scorer([ObjectiveConfig(**o) for o in runs[0].objectives], dtype=dtype, device=device)
    extra_specs = {**runs[0].eval_scorers, **dict(s.split("=", 1) for s in cfg.scorer)}
    extra = {name: load_callable(spec) for name, spec in extra_specs.items()}
    reference = parse_reference(cfg.reference_point, D)

    gen = FrontGenerator(runs, cfg)
    raw = fit_prompts(gen.tokenizer, raw, cfg.max_prompt_length, DEFAULT_TEMPLATE, f"prompts of {prompts_path!r}")
    texts = [format_prompt(gen.tokenizer, p) for p in raw]
    prefs, responses = METHODS[method](gen, prefs, texts)
    per_prompt = score_responses(scorer, extra, raw, responses)                               # scorer -> (P, N, D)
    fronts = front_points(per_prompt, prefs)
    points, extra_points = fronts.pop("score models"), fronts
    base_point, base_extra, margin_se = None, {}, {}
    if cfg.with_base:
        base_scores = score_responses(scorer, extra, raw, [gen.base(texts)])                 # scorer -> (1, N, D)
        base = front_points(base_scores)
        base_point, base_extra = base.pop("score models")[0].tolist(), {k: v[0].tolist() for k, v in base.items()}
        margin_se = {k: paired_margin_se(per_prompt[k], base_scores[k][0]).tolist() for k in per_prompt}
    prefs_np = np.asarray(prefs, float)
    if reference is None:
        reference = default_reference([points])
        warnings.warn("no --reference-point: using one derived from this front alone; to compare methods use "
                      "compare_fronts.py (one shared reference point)")
    result = {
        "method": cfg.name or method, "objectives": names, "preferences": prefs_np.tolist(),
        "points": points.tolist(), "extra_points": {k: v.tolist() for k, v in extra_points.items()},
        "reference_point": reference, "metrics": all_metrics(prefs_np, points, reference),
        "extra_metrics": {k: all_metrics(prefs_np, v, default_reference([v])) for k, v in extra_points.items()},
        "base_point": base_point, "base_extra_points": base_extra, "noise": cfg.noise,
        "base_margin_se": margin_se,  # scorer -> (P, D) paired standard error of (point - base point)
        "per_prompt": {k: v.tolist() for k, v in per_prompt.items()},  # scorer -> (P, N, D)
        "n_prompts": len(raw), "seed": cfg.seed, "runs": [str(r.path) for r in runs],
        "greedy": bool(cfg.greedy), "samples": [{"preference": prefs_np[j].tolist(), "prompt": raw[0],
                                                "response": responses[j][0]} for j in range(len(prefs))],
    }
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "pareto.json").write_text(json.dumps(result, indent=2))
    plot_fronts({result["method"]: (prefs_np, points)}, names, str(out / "pareto.png"),
                title=f"{result['method']}: HV={result['metrics']['hypervolume']:.4g}", base_point=base_point)
    for name, pts in extra_points.items():
        plot_fronts({result["method"]: (prefs_np, pts)}, names, str(out / f"pareto_{name}.png"),
                    title=f"{result['method']} scored by {name}", base_point=base_extra.get(name))
    if not cfg.no_wandb:
        _log_wandb(result, out, cfg)
    return result


def _log_wandb(result: dict[str, Any], out: Path, cfg: EvalConfig) -> None:
    from rlhf.tracking import Tracker, WandbConfig

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


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(__doc__ + "\nOptions (--key value, or keys of a --config YAML):\n" + describe(EvalConfig))
        return
    try:
        cfg = parse_args(argv)
        result = evaluate(cfg)
    except (ConfigError, FrontError, PreferenceError, DataError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    m = result["metrics"]
    print(f"[evaluate] {result['method']}: {len(result['points'])} points on {result['n_prompts']} prompts -> "
          f"{cfg.out_dir / 'pareto.json'}, {cfg.out_dir / 'pareto.png'}")
    print("  " + ", ".join(f"{k}={v:.4g}" for k, v in m.items()))


if __name__ == "__main__":
    main()
