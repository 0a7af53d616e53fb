"""A Pareto front's evaluation, one implementation for ``rlhf/evaluate.py`` and the evaluation inside training.

For every preference: generate on the same held-out prompts with per-prompt sampling noise (common random
numbers), score every objective with the score models (costs negated: all higher-is-better) and with any extra
scorer (e.g. a ground-truth oracle), and average over prompts into one point; then the front's metrics against one
reference point (``rlhf/evaluation/pareto.py``).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch

from rlhf.adapter.svd_lora import PreferenceError, adapter_disabled, validate_preference
from rlhf.core.config import check, doc_field
from rlhf.data.chat import DEFAULT_TEMPLATE
from rlhf.evaluation.pareto import FrontError, all_metrics, grid
from rlhf.rollout.backends import SamplingFields
from rlhf.rollout.rollout import decode_responses, generate
from rlhf.rollout.sampling import row_seeds
from rlhf.scoring.scorer import Scorer


@dataclass(frozen=True)
class FrontEvalFields(SamplingFields):
    """What a front evaluation samples and scores: shared by ``evaluate.py`` and in-training evaluation."""

    grid: float = doc_field(0.1, "simplex grid step (D=2: 11 points, D=3: 66)")
    preferences: Optional[str] = doc_field(None, "JSON list of preference vectors (overrides grid)")
    prompts: Optional[str] = doc_field(None, "held-out prompts: hub name or local file (null: the run's prompts)")
    split: str = doc_field("test", "split (hub datasets)")
    prompt_column: str = doc_field("prompt", "prompt column")
    n_prompts: int = doc_field(64, "prompts evaluated (the first N)")
    seed: int = doc_field(0, "sampling seed: each prompt's noise comes from (seed, prompt index)")
    batch_size: int = doc_field(16, "prompts per generate call")
    max_prompt_length: int = doc_field(128, "prompt tokens kept (the end of a longer prompt)")
    greedy: bool = doc_field(False, "greedy decoding instead of seeded sampling")
    noise: Literal["per_prompt", "per_batch"] = doc_field(
        "per_prompt", "sampling noise: per_prompt = each prompt draws from its own seed, the same under every "
                      "preference and method (common random numbers; batched = one at a time); per_batch = one "
                      "RNG stream per generate call (HF sampling)")
    reference_point: Optional[str] = doc_field(None, "comma-separated values, or a JSON file holding one (shared "
                                                     "across methods and steps)")
    prompt_template: str = doc_field(DEFAULT_TEMPLATE, "prompt layout when the policy tokenizer has no chat template")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(0 < self.grid <= 1 and abs(round(1 / self.grid) * self.grid - 1) < 1e-9, "grid",
              f"must divide 1 (e.g. 0.1, 0.25, 0.5), got {self.grid}")
        check(self.n_prompts >= 1, "n_prompts", f"must be >= 1, got {self.n_prompts}")


def fit_and_format(cfg: FrontEvalFields, tokenizer: Any, raw: list[Any], what: str) -> tuple[list[Any], list[str]]:
    """(the prompts fitted to ``max_prompt_length``, their end kept; the texts the policy continues, laid out with
    ``prompt_template``): what evaluate.py and the in-training front both generate from."""
    from rlhf.data.chat import fit_prompts, format_prompt

    raw = fit_prompts(tokenizer, raw, cfg.max_prompt_length, cfg.prompt_template, what)
    return raw, [format_prompt(tokenizer, p, cfg.prompt_template) for p in raw]


def load_preferences(cfg: FrontEvalFields, dim: int) -> list[list[float]]:
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
    """Responses per (preference, prompt) from one model carrying an SVD-LoRA adapter (evaluation loads it from a
    run; training passes its live actor). Prompts are given with their global indices, which key their noise."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: FrontEvalFields, one_at_a_time: bool = False,
                 synced_gpus: bool = False, backend: Any = None) -> None:
        """``backend``: a decoder built from ``cfg.backend`` already (the training front keeps one for the run);
        None builds one."""
        self.model, self.tokenizer, self.cfg, self.one_at_a_time = model, tokenizer, cfg, one_at_a_time
        self.gen_kwargs = dict(max_prompt_length=cfg.max_prompt_length, max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature, top_p=cfg.top_p, do_sample=not cfg.greedy,
                               backend=backend if backend is not None else cfg.backend.build(),
                               synced_gpus=synced_gpus)

    def _generate(self, prompts: list[str], pref: Optional[torch.Tensor], keys: list[int], k: int) -> list[str]:
        """Responses to ``prompts`` (global prompt indices ``keys``, from prompt batch ``k``) under ``pref``."""
        seeds = None
        if self.cfg.noise == "per_prompt":  # the same noise for a prompt under every preference, method and batch
            seeds = row_seeds(self.cfg.seed, keys)
        else:                               # one RNG stream per generate call (rows of a batch draw in turn)
            torch.manual_seed(self.cfg.seed + k)
        seqs, _, P, _ = generate(self.model, self.tokenizer, prompts, pref, seeds=seeds, **self.gen_kwargs)
        return decode_responses(self.tokenizer, seqs, P)

    def batches(self, prompts: list[str], keys: Optional[list[int]] = None) -> list[tuple[int, list[int], list[str]]]:
        keys = list(range(len(prompts))) if keys is None else keys
        b = self.cfg.batch_size
        return [(keys[i] // b, keys[i:i + b], prompts[i:i + b]) for i in range(0, len(prompts), b)]

    @torch.no_grad()
    def panacea(self, prefs: list[list[float]], prompts: list[str], keys: Optional[list[int]] = None
                ) -> list[list[str]]:
        """out[j][i]: response to prompt i under preference j."""
        out: list[list[str]] = [[] for _ in prefs]
        for k, ks, batch in self.batches(prompts, keys):
            if not self.one_at_a_time:  # all preferences of this prompt batch in one generate call, one per row
                rows = [p for _ in prefs for p in batch]
                lam = torch.tensor([pref for pref in prefs for _ in batch])                        # (P*b, D)
                texts = self._generate(rows, lam, ks * len(prefs), k)
                for j in range(len(prefs)):
                    out[j] += texts[j * len(batch):(j + 1) * len(batch)]
            else:
                for j, pref in enumerate(prefs):
                    out[j] += self._generate(batch, torch.tensor(pref), ks, k)
        return out

    @torch.no_grad()
    def unconditioned(self, prompts: list[str], keys: Optional[list[int]] = None) -> list[str]:
        """Responses of the model as it is (no preference input): the base under ``adapter_disabled``, or a merged
        set of weights."""
        return [t for k, ks, batch in self.batches(prompts, keys) for t in self._generate(batch, None, ks, k)]

    def base(self, prompts: list[str], keys: Optional[list[int]] = None) -> list[str]:
        with adapter_disabled(self.model):
            return self.unconditioned(prompts, keys)


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


def check_extra_scorers(extra: dict[str, Any], prompts: Sequence[Any], columns: Optional[dict[str, list]] = None
                        ) -> None:
    """Call each extra scorer (a score source of width D) once on (up to) two prompts with placeholder responses,
    before anything loads: one that fails or returns the wrong shape is refused naming it."""
    from rlhf.scoring.objectives import probe

    for source in extra.values():
        probe(source, prompts, columns)


def score_responses(scorer: Scorer, extra: dict[str, Any], raw_prompts: list[Any], responses: list[list[str]],
                    columns: Optional[dict[str, list]] = None) -> dict[str, np.ndarray]:
    """Per scorer ("score models", the objectives' sources, and each extra one) the (P, N, D) scores of N prompts'
    responses under P preferences (``columns``: the prompts' other dataset columns)."""
    out: dict[str, list] = {"score models": [], **{name: [] for name in extra}}
    for texts in responses:
        out["score models"].append(scorer.raw(raw_prompts, texts, columns).float().numpy())       # (N, D)
        for name, source in extra.items():
            out[name].append(source.score(raw_prompts, texts, columns).numpy())                 # (N, D)
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


def summarize(names: Sequence[str], prefs: Sequence[Sequence[float]], per_prompt: dict[str, np.ndarray],
              reference: Optional[Sequence[float]], base_per_prompt: Optional[dict[str, np.ndarray]] = None,
              extra_references: Optional[dict[str, Sequence[float]]] = None, strict: bool = True) -> dict[str, Any]:
    """The front's record: points per scorer, the base point, paired margin SEs and metrics (score models against
    ``reference``, None: one derived from this front; each extra scorer against ``extra_references[name]`` or one
    derived from its own front).
    ``strict``: refuse points below the reference (comparing methods); else they add no volume (training)."""
    from rlhf.evaluation.pareto import default_reference

    prefs_np = np.asarray(prefs, float)
    fronts = front_points(per_prompt, prefs)
    points, extra_points = fronts.pop("score models"), fronts
    reference = list(reference) if reference is not None else list(default_reference([points]))
    base_point, base_extra, margin_se = None, {}, {}
    if base_per_prompt is not None:
        base = front_points(base_per_prompt)
        base_point, base_extra = base.pop("score models")[0].tolist(), {k: v[0].tolist() for k, v in base.items()}
        margin_se = {k: paired_margin_se(per_prompt[k], base_per_prompt[k][0]).tolist() for k in per_prompt}
    extra_references = extra_references or {}
    extra_refs = {k: list(extra_references.get(k) or default_reference([v])) for k, v in extra_points.items()}
    return {
        "objectives": list(names), "preferences": prefs_np.tolist(),
        "points": points.tolist(), "extra_points": {k: v.tolist() for k, v in extra_points.items()},
        "reference_point": list(reference), "metrics": all_metrics(prefs_np, points, reference, strict),
        "extra_reference_points": extra_refs,
        "extra_metrics": {k: all_metrics(prefs_np, v, extra_refs[k], strict) for k, v in extra_points.items()},
        "base_point": base_point, "base_extra_points": base_extra,
        "base_margin_se": margin_se,  # scorer -> (P, D) paired standard error of (point - base point)
        "per_prompt": {k: v.tolist() for k, v in per_prompt.items()},  # scorer -> (P, N, D)
    }


def plot_record(record: dict[str, Any], path: Path, title: str, scorer: Optional[str] = None,
                label: str = "front") -> Path:
    """The front (coloured by lambda, the base point marked, ``label`` in the legend) of one scorer as a PNG."""
    from rlhf.evaluation.pareto import plot_fronts

    points = record["points"] if scorer is None else record["extra_points"][scorer]
    base = record["base_point"] if scorer is None else record["base_extra_points"].get(scorer)
    plot_fronts({label: (np.asarray(record["preferences"]), np.asarray(points))}, record["objectives"], str(path),
                title=title, base_point=base)
    return path
