"""Several fronts against one shared reference point (``python rlhf/compare_fronts.py`` has the usage): metrics
per method from its points (or an extra scorer's), ``compare.md``, ``compare.json`` and ``compare.png``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from rlhf.evaluation.pareto import FrontError, all_metrics, default_reference, parse_reference, plot_fronts


def compare(paths: list[str], out: str, reference: Optional[str] = None, scorer: Optional[str] = None
            ) -> dict[str, Any]:
    fronts = []
    for p in paths:
        try:
            fronts.append(json.loads(Path(p).read_text()))
        except (OSError, ValueError) as err:
            raise FrontError(f"cannot read front {p}: {err}") from None
    names = fronts[0]["objectives"]
    for p, f in zip(paths, fronts):
        if f["objectives"] != names:
            raise FrontError(f"{p} has objectives {f['objectives']} but {paths[0]} has {names}; "
                             f"fronts must share objective names and order")
    methods: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for p, f in zip(paths, fronts):
        if scorer is not None and scorer not in f.get("extra_points", {}):
            raise FrontError(f"{p} has no extra_points[{scorer!r}] (it has {sorted(f.get('extra_points', {}))})")
        pts = np.asarray(f["extra_points"][scorer] if scorer else f["points"], float)
        if not np.isfinite(pts).all():
            bad = np.where(~np.isfinite(pts).all(axis=1))[0].tolist()
            raise FrontError(f"{p} ({f['method']}): points {bad[:5]} scored by {scorer or 'the score models'} are "
                             f"NaN/inf; re-evaluate that front (evaluate.py leaves non-finite scores out of its means)")
        name = f["method"]
        while name in methods:
            name += "'"
        methods[name] = (np.asarray(f["preferences"], float), pts)
    ref = parse_reference(reference, len(names)) or default_reference([v[1] for v in methods.values()])
    result = {"reference_point": ref, "scorer": scorer or "score_models", "objectives": names,
              "methods": {m: all_metrics(prefs, pts, ref) for m, (prefs, pts) in methods.items()}}
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "compare.json").write_text(json.dumps(result, indent=2))
    lines = [f"Reference point {np.round(ref, 4).tolist()}, scored by {result['scorer']}.", "",
             "| method | hypervolume | inner product | sparsity | spacing |", "|---|---|---|---|---|"]
    for m, v in result["methods"].items():
        lines.append(f"| {m} | {v['hypervolume']:.4g} | {v['inner_product']:.4g} | {v['sparsity']:.4g} | "
                     f"{v['spacing']:.4g} |")
    (outdir / "compare.md").write_text("\n".join(lines) + "\n")
    plot_fronts(methods, names, str(outdir / "compare.png"), title=f"fronts ({result['scorer']})")
    return result
