"""Front quality metrics (DESIGN.md §1 "Evaluation") and front plots. Objectives are all higher-is-better.

- hypervolume: volume dominated by the points w.r.t. one reference point shared by every method compared
  (computed exactly by moocore, a maintained library);
- inner product: mean over lambda of <lambda, xi(lambda)>;
- sparsity: 1/(D (N-1)) * sum_j ||xi^j - xi^{j+1}||^2 over points sorted along the front (lexicographically:
  by the first objective, ties by the next);
- spacing: std over j of min_{l != j} ||xi^j - xi^l||.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from rlhf.core.errors import InputError


class FrontError(InputError, ValueError):
    """A front or reference point is malformed; the message names the offending points."""


def check_reference(points: np.ndarray, ref: np.ndarray) -> None:
    """Every point must strictly dominate the reference point, or its volume is silently lost."""
    points, ref = np.asarray(points, float), np.asarray(ref, float)
    bad = np.where(~np.isfinite(points).all(axis=1))[0]
    if bad.size:
        raise FrontError(f"front points {bad[:5].tolist()} are NaN/inf ({np.round(points[bad[0]], 4).tolist()}, ...): "
                         f"a scorer produced non-finite scores; re-evaluate with a working scorer")
    if not np.isfinite(ref).all():
        raise FrontError(f"reference point {ref.tolist()} is not finite")
    if ref.shape != (points.shape[1],):
        raise FrontError(f"reference point has {ref.size} entries but the front has {points.shape[1]} objectives")
    bad = np.where((points <= ref).any(axis=1))[0]
    if bad.size:
        worst = [f"point {i} {np.round(points[i], 4).tolist()} is below the reference by "
                 f"{np.round(np.maximum(ref - points[i], 0), 4).tolist()}" for i in bad[:5]]
        raise FrontError(f"reference point {ref.tolist()} is not dominated by every point: " + "; ".join(worst) +
                         (f" (and {bad.size - 5} more)" if bad.size > 5 else "") +
                         ". Pass a lower --reference-point shared by every method compared")


def parse_reference(text: Optional[str], dim: int) -> Optional[list[float]]:
    """A reference point from ``"0.1,-2.0"`` or a JSON file holding a list or ``{"reference_point": [...]}``."""
    import json
    from pathlib import Path

    if not text:
        return None
    path = Path(text)
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except ValueError as err:
            raise FrontError(f"reference point file {path} is not JSON: {err}") from None
        ref = data["reference_point"] if isinstance(data, dict) else data
    else:
        try:
            ref = [float(x) for x in str(text).split(",")]
        except ValueError:
            raise FrontError(f"reference point {text!r} is neither comma-separated numbers nor a JSON file") from None
    if len(ref) != dim:
        raise FrontError(f"reference point {ref} has {len(ref)} entries but there are {dim} objectives")
    return [float(x) for x in ref]


def hypervolume(points: np.ndarray, ref: Sequence[float], strict: bool = True) -> float:
    """Volume dominated by ``points`` above ``ref``. ``strict``: every point must dominate ref (comparing methods);
    else points that do not add nothing (a fixed reference over a whole training run, where a point may fall below)."""
    import moocore

    points, ref = np.asarray(points, float), np.asarray(ref, float)
    if not strict:
        points = points[np.isfinite(points).all(axis=1) & (points > ref).all(axis=1)]
        if not len(points):
            return 0.0
    check_reference(points, ref)
    return float(moocore.hypervolume(points, ref=ref, maximise=True))


def inner_product(preferences: np.ndarray, points: np.ndarray) -> float:
    return float(np.mean(np.sum(np.asarray(preferences, float) * np.asarray(points, float), axis=1)))


def sort_along_front(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, float)
    return points[np.lexsort(points.T[::-1])]


def sparsity(points: np.ndarray) -> float:
    p = sort_along_front(points)
    n, d = p.shape
    if n < 2:
        return 0.0
    return float(np.sum(np.sum(np.diff(p, axis=0) ** 2, axis=1)) / (d * (n - 1)))


def spacing(points: np.ndarray) -> float:
    p = np.asarray(points, float)
    if len(p) < 2:
        return 0.0
    dist = np.linalg.norm(p[:, None, :] - p[None, :, :], axis=-1)
    np.fill_diagonal(dist, np.inf)
    return float(np.std(dist.min(axis=1)))


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Boolean mask of points not dominated by any other (maximisation)."""
    p = np.asarray(points, float)
    ge = (p[None, :, :] >= p[:, None, :]).all(-1)   # ge[i, j]: j >= i everywhere
    gt = (p[None, :, :] > p[:, None, :]).any(-1)
    return ~(ge & gt).any(axis=1)


def all_metrics(preferences: np.ndarray, points: np.ndarray, ref: Sequence[float], strict: bool = True
                ) -> dict[str, float]:
    return {"hypervolume": hypervolume(points, ref, strict), "inner_product": inner_product(preferences, points),
            "sparsity": sparsity(points), "spacing": spacing(points)}


def default_reference(fronts: Sequence[np.ndarray], margin: float = 0.1) -> list[float]:
    """One reference point for all fronts together: below every point by ``margin`` of the joint range."""
    allp = np.concatenate([np.asarray(f, float) for f in fronts])
    lo, hi = allp.min(0), allp.max(0)
    return (lo - margin * np.maximum(hi - lo, 1e-6)).tolist()


def grid(dim: int, step: float) -> list[list[float]]:
    """Simplex lattice with spacing ``step`` (D=2, 0.1: 11 points; D=3, 0.1: 66 points)."""
    n = int(round(1.0 / step))
    if abs(n * step - 1.0) > 1e-9 or n < 1:
        raise FrontError(f"--grid {step} must divide 1 (e.g. 0.1, 0.25, 0.5)")

    def rec(remaining: int, d: int) -> list[list[int]]:
        if d == 1:
            return [[remaining]]
        return [[i] + rest for i in range(remaining, -1, -1) for rest in rec(remaining - i, d - 1)]

    return [[round(c / n, 10) for c in combo] for combo in rec(n, dim)]


def plot_fronts(fronts: dict[str, tuple[np.ndarray, np.ndarray]], names: Sequence[str], path: str,
                title: str = "", base_point: Optional[Sequence[float]] = None) -> None:
    """fronts: method -> (preferences (N, D), points (N, D)). One method: points coloured by lambda_1, joined in
    lambda order, non-dominated points ringed. D=3: a 3-D scatter plus the three pairwise projections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    D = len(names)
    single = len(fronts) == 1
    markers = "osD^v<>*"
    if D == 1:  # one objective: no trade-off to draw, each method's points on a line of their own
        fig, ax = plt.subplots(figsize=(6.5, 2.5 + 0.4 * len(fronts)))
        for k, (method, (prefs, pts)) in enumerate(fronts.items()):
            ax.scatter(pts[:, 0], np.full(len(pts), k), marker=markers[k % len(markers)], s=60, label=method)
        if base_point is not None:
            ax.axvline(base_point[0], color="black", linestyle="--", label="base (SFT)")
        ax.set_yticks(range(len(fronts)), list(fronts)), ax.set_xlabel(names[0]), ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return
    if D == 2:
        fig, ax = plt.subplots(figsize=(6.5, 5))
        axes_pairs = [(ax, 0, 1)]
    else:
        fig = plt.figure(figsize=(18, 4.5))
        ax3 = fig.add_subplot(1, 4, 1, projection="3d")
        for k, (method, (prefs, pts)) in enumerate(fronts.items()):
            ax3.scatter(pts[:, 0], pts[:, 1], pts[:, 2], **(dict(c=prefs[:, 0], cmap="viridis") if single else {}),
                        marker=markers[k % len(markers)], label=method)
        ax3.set_xlabel(names[0]), ax3.set_ylabel(names[1]), ax3.set_zlabel(names[2])
        axes_pairs = [(fig.add_subplot(1, 4, 2 + j), a, b) for j, (a, b) in enumerate([(0, 1), (0, 2), (1, 2)])]
    for ax, a, b in axes_pairs:
        for k, (method, (prefs, pts)) in enumerate(fronts.items()):
            order = np.lexsort(prefs.T[::-1])
            line, = ax.plot(pts[order, a], pts[order, b], "-", alpha=0.4, label=None if single else method)
            # one front: coloured by lambda; several: each in its line's colour (color=, so no colormap is asked for)
            colour = dict(c=prefs[:, 0], cmap="viridis") if single else dict(color=line.get_color())
            sc = ax.scatter(pts[:, a], pts[:, b], **colour, marker=markers[k % len(markers)], zorder=3,
                            label=method if single else None)
            nd = non_dominated(pts[:, [a, b]])
            ax.scatter(pts[nd, a], pts[nd, b], s=140, facecolors="none", edgecolors="red", zorder=4,
                       label="non-dominated" if (k == 0 and ax is axes_pairs[0][0]) else None)
            if single:
                plt.colorbar(sc, ax=ax, label=f"lambda[{names[0]}]")
        if base_point is not None:
            ax.scatter([base_point[a]], [base_point[b]], marker="X", s=120, c="black", label="base (SFT)", zorder=5)
        ax.set_xlabel(names[a]), ax.set_ylabel(names[b])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    # a 3-D panel's z label reaches into its neighbour unless the row is spread out
    fig.tight_layout(w_pad=1.0 if D == 2 else 5.0)
    fig.savefig(path, dpi=110)
    plt.close(fig)
