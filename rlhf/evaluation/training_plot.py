"""Drawing the front over training from ``metrics.jsonl`` alone (``python rlhf/plot_training.py`` has the usage):
the front at several steps coloured by step, the base point, and the hypervolume against the run's fixed reference."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from rlhf.runtime.run import METRICS_FILE, read_metrics


def evaluations(run: Path) -> list[dict]:
    rows = [r for r in read_metrics(Path(run) / METRICS_FILE) if "eval/front" in r]
    if not rows:
        raise SystemExit(f"error: {Path(run) / METRICS_FILE} holds no front evaluations: train with eval.every > 0")
    return rows


def plot(run: Path, out: Path, scorer: Optional[str] = None, steps: Optional[Sequence[int]] = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = evaluations(run)
    key = scorer or "score_models"
    if steps:
        rows_shown = [r for r in rows if r["step"] in set(steps)]
    else:  # up to six, evenly spread, first and last included
        idx = sorted(set(np.linspace(0, len(rows) - 1, min(6, len(rows))).round().astype(int)))
        rows_shown = [rows[i] for i in idx]
    front0 = rows[0]["eval/front"]
    names = front0["objectives"]
    if scorer is not None and scorer not in front0["extra_points"]:
        raise SystemExit(f"error: no scorer {scorer!r} in the evaluations (have {sorted(front0['extra_points'])})")
    fig, (ax, hv) = plt.subplots(1, 2, figsize=(12, 5))
    cmap = plt.get_cmap("viridis")
    base = front0["base_point"] if scorer is None else front0["base_extra_points"].get(scorer)
    if len(names) == 1:  # one objective: its score over the steps
        pick = lambda f: np.asarray(f["points"] if scorer is None else f["extra_points"][scorer], float)  # noqa: E731
        ax.plot([r["step"] for r in rows], [pick(r["eval/front"])[:, 0].mean() for r in rows], "-o", label=names[0])
        if base is not None:
            ax.axhline(base[0], color="black", linestyle="--", label="base (SFT)")
        ax.set_xlabel("step"), ax.set_ylabel(names[0])
    else:
        for n, r in enumerate(rows_shown):
            f = r["eval/front"]
            pts = np.asarray(f["points"] if scorer is None else f["extra_points"][scorer], float)
            order = np.lexsort(np.asarray(f["preferences"]).T[::-1])
            colour = cmap(n / max(len(rows_shown) - 1, 1))
            ax.plot(pts[order, 0], pts[order, 1], "-o", color=colour, alpha=0.85, label=f"step {r['step']}")
        if base is not None:
            ax.scatter([base[0]], [base[1]], marker="X", s=140, c="black", zorder=5, label="base (SFT)")
        ax.set_xlabel(names[0]), ax.set_ylabel(names[1])
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    ax.set_title(f"front over training ({key})")
    hv_key = f"eval/{key}/hypervolume"
    hv.plot([r["step"] for r in rows], [r[hv_key] for r in rows], "-o")
    ref = front0["reference_point"] if scorer is None else front0["extra_reference_points"][scorer]
    hv.set_xlabel("step"), hv.set_ylabel("hypervolume"), hv.grid(alpha=0.3)
    hv.set_title(f"hypervolume ({key}; reference {np.round(ref, 3).tolist()}, fixed for the run)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
