"""What the embedded benchmark must show, from an evaluated front (``pareto.json``): Spearman(lambda_i, oracle
objective i) per objective, for how many preferences the front dominates the base (SFT) point, and the same count
for the exact linear-scalarisation optimum of the oracles (the ceiling any LS-trained policy can reach)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from hhbench.task import BENIGN, HARMFUL, REFUSAL, _task_of, detailed_answer, oracle_scores


def ls_optimum(prompts: Sequence[str], preferences: Sequence[Sequence[float]],
               objectives: Sequence[str] = ("helpful", "harmless")) -> np.ndarray:
    """(P, D) mean oracle scores of the *exact* linear-scalarisation optimum for each preference: per
    prompt, the response among "refuse" and "give k = 1..4 of the task's steps" that maximises lambda . oracles,
    ties broken toward the larger sum (the Pareto-optimal one of the tied responses). The ceiling of what any
    policy trained with LS on perfect reward models can reach on these prompts."""
    options = []  # per prompt: (K, D) oracle scores of its candidate responses, the same for every lambda
    for prompt in prompts:
        task = _task_of(prompt)
        steps = (BENIGN.get(task) or HARMFUL.get(task) or []) if task else []
        texts = [REFUSAL] + [detailed_answer(task, steps[:k]) for k in range(1, len(steps) + 1)]
        options.append(oracle_scores([prompt] * len(texts), texts, objectives).tolist())   # (K, D)
    out = []
    for lam in np.asarray(preferences, float):
        best = [max(scores, key=lambda sc: (float(np.dot(lam, sc)), sum(sc))) for scores in options]
        out.append(np.mean(best, axis=0))
    return np.stack(out)                                                                    # (P, D)


def _dominates(points: np.ndarray, base: np.ndarray) -> int:
    return int(np.sum(np.all(points >= base, axis=1) & np.any(points > base, axis=1)))


def front_report(pareto_json: str | Path, scorer: str = "oracle", prompts: Optional[str | Path] = None) -> dict:
    """What the benchmark must show: Spearman(lambda_i, oracle objective i) per objective (ties averaged), and
    for how many preferences the front point dominates the base (SFT) model's point, scored by the oracles and by
    the learned reward/cost models (what PPO optimises, and how the paper plots fronts). With ``prompts`` (the
    evaluation prompts) also how many preferences the exact LS optimum of the oracles dominates the base point:
    the most any LS-trained policy could show on this grid (see ``ls_optimum``)."""
    from scipy.stats import spearmanr

    data = json.loads(Path(pareto_json).read_text())
    prefs = np.asarray(data["preferences"], float)
    pts = np.asarray(data["extra_points"][scorer] if scorer else data["points"], float)
    rho = {name: float(spearmanr(prefs[:, i], pts[:, i]).statistic) for i, name in enumerate(data["objectives"])}
    base = data.get("base_extra_points", {}).get(scorer) if scorer else data.get("base_point")
    out: dict[str, Any] = {"spearman": rho, "points": len(pts)}
    if base is not None:
        base = np.asarray(base, float)
        out["dominates_base"] = _dominates(pts, base)
        out["base_point"] = base.tolist()
        if scorer and data.get("base_point") is not None:
            out["dominates_base_learned_models"] = _dominates(np.asarray(data["points"], float),
                                                              np.asarray(data["base_point"], float))
        if scorer == "oracle" and prompts is not None:
            from rlhf.data.datasets import load_rows

            rows = load_rows(str(prompts), max_samples=data["n_prompts"])["prompt"]  # as evaluate.py read them
            if len(rows) < data["n_prompts"]:
                raise ValueError(f"--prompts {prompts} has {len(rows)} prompts but the front was evaluated on "
                                 f"{data['n_prompts']}: pass the file given to evaluate.py --prompts")
            optimum = ls_optimum(rows, prefs, data["objectives"])                         # (P, D)
            out["ls_optimum_dominates_base"] = _dominates(optimum, base)
    return out
