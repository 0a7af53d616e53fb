"""Trace the Pareto front a trained model gives as lambda moves, and its quality figures.

    python rlhf/evaluate.py --run RUN [--grid 0.1 | --preferences FILE] [--prompts DATA] [--out DIR]
    python rlhf/evaluate.py --method dps --run RUN_a --run RUN_b ...     # fixed-lambda PPO runs (one point each)
    python rlhf/evaluate.py --method rs  --run RUN_helpful --run RUN_harmless --grid 0.1   # Rewarded Soups

For every preference: generate on the same held-out prompts with the same sampling seed, score every objective
with the run's score models (costs negated: all objectives higher-is-better) and with any extra scorer (e.g. a
ground-truth oracle), and average to one point. A Panacea run evaluates all preferences of a prompt batch in one
generate call (one lambda per row). Writes DIR/pareto.json and DIR/pareto.png and logs both to W&B.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from rlhf.data import DataError, ensure_pad_token, format_prompt, load_rows, require_columns
from rlhf.generation import BACKENDS, make_backend
from rlhf.pareto import FrontError, all_metrics, default_reference, grid, plot_fronts
from rlhf.rollout import decode_responses, generate
from rlhf.runs import RunInfo, load_callable, read_run
from rlhf.scoring import ObjectiveConfig, Scorer
from rlhf.svd_lora import PreferenceError, adapter_disabled, load_adapter, svd_lora_layers, validate_preference


def load_preferences(args: argparse.Namespace, dim: int) -> list[list[float]]:
    if args.preferences:
        prefs = json.loads(Path(args.preferences).read_text())
        if not isinstance(prefs, list) or not prefs:
            raise PreferenceError(f"{args.preferences} must hold a non-empty JSON list of preference vectors")
    else:
        prefs = grid(dim, args.grid)
    for i, p in enumerate(prefs):
        try:
            validate_preference(p, dim)
        except PreferenceError as err:
            raise PreferenceError(f"preference #{i} {p}: {err}") from None
    return [list(map(float, p)) for p in prefs]


class FrontGenerator:
    """Responses per (preference, prompt) for one base model carrying the run's adapter."""

    def __init__(self, runs: Sequence[RunInfo], args: argparse.Namespace) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.runs, self.args = list(runs), args
        base = runs[0].base_model
        if any(r.base_model != base for r in runs):
            raise ValueError(f"runs were trained from different base models: {[r.base_model for r in runs]}")
        self.tokenizer = AutoTokenizer.from_pretrained(runs[0].path)
        ensure_pad_token(self.tokenizer)
        self.model = AutoModelForCausalLM.from_pretrained(base).eval()
        load_adapter(self.model, runs[0].path, expected_pref_dim=len(runs[0].objectives))
        self.gen_kwargs = dict(max_prompt_length=args.max_prompt_length, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, top_p=args.top_p, do_sample=not args.greedy,
                               backend=make_backend(args.backend, args.compile_backend))

    def _generate(self, prompts: list[str], pref: Optional[torch.Tensor], seed: int) -> list[str]:
        torch.manual_seed(seed)  # same sampling seed for every preference on this prompt batch
        seqs, _, P, _ = generate(self.model, self.tokenizer, prompts, pref, **self.gen_kwargs)
        return decode_responses(self.tokenizer, seqs, P)

    def batches(self, prompts: list[str]) -> list[tuple[int, list[str]]]:
        b = self.args.batch_size
        return [(i // b, prompts[i:i + b]) for i in range(0, len(prompts), b)]

    def panacea(self, prefs: list[list[float]], prompts: list[str], batched: bool = True) -> list[list[str]]:
        """out[j][i]: response to prompt i under preference j."""
        out: list[list[str]] = [[] for _ in prefs]
        for k, batch in self.batches(prompts):
            if batched:  # all preferences of this prompt batch in one generate call, one lambda per row
                rows = [p for _ in prefs for p in batch]
                lam = torch.tensor([pref for pref in prefs for _ in batch])                        # (P*b, D)
                texts = self._generate(rows, lam, self.args.seed + k)
                for j in range(len(prefs)):
                    out[j] += texts[j * len(batch):(j + 1) * len(batch)]
            else:
                for j, pref in enumerate(prefs):
                    out[j] += self._generate(batch, torch.tensor(pref), self.args.seed + k)
        return out

    def base(self, prompts: list[str]) -> list[str]:
        with adapter_disabled(self.model):
            return [t for k, batch in self.batches(prompts) for t in self._generate(batch, None, self.args.seed + k)]

    def dps(self, prompts: list[str]) -> tuple[list[list[float]], list[list[str]]]:
        prefs, out = [], []
        for run in self.runs:
            if run.fixed_preference is None:
                raise PreferenceError(f"--method dps needs fixed-lambda runs; {run.path} sampled lambda")
            load_adapter(self.model, run.path)
            prefs.append(run.fixed_preference)
            out.append(self.panacea([run.fixed_preference], prompts, batched=False)[0])
        return prefs, out

    @torch.no_grad()
    def soups(self, prefs: list[list[float]], prompts: list[str]) -> list[list[str]]:
        """Rewarded Soups: W(lambda) = W0 + sum_i lambda_i dW_i, i.e. the lambda-weighted average of the fine-tuned
        weights theta_i = W0 + dW_i (each run's delta at its own fixed preference). Interpolating U and V
        separately would make dW quadratic in lambda, so the deltas are interpolated instead."""
        fixed = [r.fixed_preference for r in self.runs]
        if any(f is None for f in fixed):
            raise PreferenceError("--method rs needs one fixed-lambda run per objective")
        layers = dict(svd_lora_layers(self.model))
        original = {n: l.base.weight.detach().clone() for n, l in layers.items()}
        deltas = []
        for run, f in zip(self.runs, fixed):
            load_adapter(self.model, run.path)
            deltas.append({n: l.delta_weight(torch.tensor(f)).to(l.base.weight.dtype) for n, l in layers.items()})
        out = []
        for pref in prefs:
            for n, l in layers.items():
                l.base.weight.copy_(original[n] + sum(w * d[n] for w, d in zip(pref, deltas)))
            with adapter_disabled(self.model):
                out.append([t for k, batch in self.batches(prompts)
                            for t in self._generate(batch, None, self.args.seed + k)])
        for n, l in layers.items():
            l.base.weight.copy_(original[n])
        return out


def score_front(scorer: Scorer, extra: dict[str, Callable], raw_prompts: list[str],
                responses: list[list[str]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Mean score per preference: points (P, D) from the score models, and per extra scorer."""
    points, extra_points = [], {name: [] for name in extra}
    for texts in responses:
        points.append(scorer.raw(raw_prompts, texts).float().mean(0).numpy())
        for name, fn in extra.items():
            extra_points[name].append(np.asarray(fn(raw_prompts, texts), float).mean(0))
    return np.stack(points), {k: np.stack(v) for k, v in extra_points.items()}


def parse_reference(text: Optional[str], dim: int) -> Optional[list[float]]:
    if not text:
        return None
    path = Path(text)
    if path.is_file():
        data = json.loads(path.read_text())
        ref = data["reference_point"] if isinstance(data, dict) else data
    else:
        ref = [float(x) for x in text.split(",")]
    if len(ref) != dim:
        raise FrontError(f"reference point {ref} has {len(ref)} entries but there are {dim} objectives")
    return [float(x) for x in ref]


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    runs = [read_run(r) for r in args.run]
    names = runs[0].objective_names
    for r in runs[1:]:
        if r.objective_names != names:
            raise FrontError(f"runs disagree on objectives: {names} vs {r.objective_names} ({r.path})")
    method = args.method or ("panacea" if len(runs) == 1 else None)
    if method is None:
        raise ValueError("several --run given: say --method dps or --method rs")
    D = len(names)
    prefs = load_preferences(args, D) if method != "dps" else None
    # Prompts, score models and extra scorers are checked before any generation.
    prompts_path = args.prompts
    if prompts_path is None:
        prompts_path = json.loads((runs[0].path / "run.json").read_text()).get("prompts_path")
        if prompts_path is None:
            raise DataError("pass --prompts DATA (held-out prompts to evaluate on)")
    rows = load_rows(prompts_path, args.split, args.n_prompts)
    require_columns(rows, [args.prompt_column], prompts_path, hint="set --prompt_column")
    raw = [str(p) for p in rows[args.prompt_column]]
    scorer = Scorer([ObjectiveConfig(**o) for o in runs[0].objectives])
    extra_specs = {**runs[0].eval_scorers, **dict(s.split("=", 1) for s in args.scorer)}
    extra = {name: load_callable(spec) for name, spec in extra_specs.items()}
    reference = parse_reference(args.reference_point, D)

    gen = FrontGenerator(runs, args)
    texts = [format_prompt(gen.tokenizer, p) for p in raw]
    if method == "panacea":
        responses = gen.panacea(prefs, texts, batched=not args.one_at_a_time)
    elif method == "dps":
        prefs, responses = gen.dps(texts)
    else:
        responses = gen.soups(prefs, texts)
    points, extra_points = score_front(scorer, extra, raw, responses)
    base_point, base_extra = None, {}
    if args.with_base:
        bp, be = score_front(scorer, extra, raw, [gen.base(texts)])
        base_point, base_extra = bp[0].tolist(), {k: v[0].tolist() for k, v in be.items()}
    prefs_np = np.asarray(prefs, float)
    if reference is None:
        reference = default_reference([points])
        warnings.warn("no --reference-point: using one derived from this front alone; to compare methods use "
                      "compare_fronts.py (one shared reference point)")
    result = {
        "method": args.name or method, "objectives": names, "preferences": prefs_np.tolist(),
        "points": points.tolist(), "extra_points": {k: v.tolist() for k, v in extra_points.items()},
        "reference_point": reference, "metrics": all_metrics(prefs_np, points, reference),
        "extra_metrics": {k: all_metrics(prefs_np, v, default_reference([v])) for k, v in extra_points.items()},
        "base_point": base_point, "base_extra_points": base_extra,
        "n_prompts": len(raw), "seed": args.seed, "runs": [str(r.path) for r in runs],
        "greedy": bool(args.greedy), "samples": [{"preference": prefs_np[j].tolist(), "prompt": raw[0],
                                                 "response": responses[j][0]} for j in range(len(prefs))],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pareto.json").write_text(json.dumps(result, indent=2))
    plot_fronts({result["method"]: (prefs_np, points)}, names, str(out / "pareto.png"),
                title=f"{result['method']}: HV={result['metrics']['hypervolume']:.4g}", base_point=base_point)
    for name, pts in extra_points.items():
        plot_fronts({result["method"]: (prefs_np, pts)}, names, str(out / f"pareto_{name}.png"),
                    title=f"{result['method']} scored by {name}", base_point=base_extra.get(name))
    if not args.no_wandb:
        _log_wandb(result, out, args)
    return result


def _log_wandb(result: dict[str, Any], out: Path, args: argparse.Namespace) -> None:
    from rlhf.tracking import Tracker, WandbConfig

    tracker = Tracker(WandbConfig(project=args.wandb_project, run_name=f"eval-{result['method']}"),
                      {"runs": result["runs"], "n_prompts": result["n_prompts"]}, str(out), active=True)
    if tracker.run is not None:
        import wandb

        cols = [f"lambda/{n}" for n in result["objectives"]] + [f"score/{n}" for n in result["objectives"]]
        rows = [p + q for p, q in zip(result["preferences"], result["points"])]
        tracker.run.log({"eval/pareto": wandb.Image(str(out / "pareto.png")),
                         "eval/front": wandb.Table(columns=cols, data=rows),
                         **{f"eval/{k}": v for k, v in result["metrics"].items()}})
    tracker.finish()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="run directory (repeat for dps / rs)")
    ap.add_argument("--method", choices=["panacea", "dps", "rs"], default=None)
    ap.add_argument("--name", default=None, help="method name written to pareto.json (default: --method)")
    ap.add_argument("--grid", type=float, default=0.1, help="simplex grid step (D=2: 11 points, D=3: 66)")
    ap.add_argument("--preferences", default=None, help="JSON list of preference vectors (overrides --grid)")
    ap.add_argument("--prompts", default=None, help="held-out prompts: hub name or local file")
    ap.add_argument("--split", default="test")
    ap.add_argument("--prompt_column", default="prompt")
    ap.add_argument("--n_prompts", type=int, default=64)
    ap.add_argument("--out", default=None, help="output directory (default: RUN/eval)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch_size", type=int, default=16, help="prompts per generate call")
    ap.add_argument("--max_prompt_length", type=int, default=128)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top_p", type=float, default=1.0)
    ap.add_argument("--greedy", action="store_true", help="greedy decoding instead of seeded sampling")
    ap.add_argument("--backend", default="hf", choices=list(BACKENDS), help="decoder (rlhf/generation.py)")
    ap.add_argument("--compile_backend", default="inductor", help="torch.compile backend for hf_static_compile")
    ap.add_argument("--one_at_a_time", action="store_true", help="one generate call per preference (slower)")
    ap.add_argument("--with_base", action="store_true", help="also score the base model (adapter off)")
    ap.add_argument("--scorer", action="append", default=[], help="extra scorer NAME=module:function")
    ap.add_argument("--reference-point", "--reference_point", dest="reference_point", default=None,
                    help="comma-separated values, or a JSON file holding one (shared across methods)")
    ap.add_argument("--no_wandb", action="store_true")
    ap.add_argument("--wandb_project", default="panacea-rlhf")
    return ap


def main(argv: Optional[list[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.out is None:
        args.out = str(Path(args.run[0]) / "eval")
    try:
        result = evaluate(args)
    except (FrontError, PreferenceError, DataError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    m = result["metrics"]
    print(f"[evaluate] {result['method']}: {len(result['points'])} points on {result['n_prompts']} prompts -> "
          f"{Path(args.out) / 'pareto.json'}, {Path(args.out) / 'pareto.png'}")
    print("  " + ", ".join(f"{k}={v:.4g}" for k, v in m.items()))


if __name__ == "__main__":
    main()
