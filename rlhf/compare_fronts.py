"""Compare fronts of several methods with one shared reference point.

    python rlhf/compare_fronts.py A/pareto.json B/pareto.json ... --out DIR [--reference-point 0.1,-2.0]
           [--scorer NAME]

Recomputes hypervolume, inner product, sparsity and spacing for every method from its points (or from
``extra_points[NAME]``, e.g. the oracle) with ONE reference point: the one given, or one derived once from all
fronts together. Writes DIR/compare.md, DIR/compare.json and DIR/compare.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from rlhf.evaluation.compare import compare
from rlhf.evaluation.pareto import FrontError


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fronts", nargs="+", help="pareto.json files")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reference-point", "--reference_point", dest="reference_point", default=None)
    ap.add_argument("--scorer", default=None, help="use extra_points[NAME] (e.g. oracle) instead of points")
    args = ap.parse_args(argv)
    try:
        compare(args.fronts, args.out, args.reference_point, args.scorer)
    except FrontError as err:
        sys.exit(f"error: {err}")
    print((Path(args.out) / "compare.md").read_text())


if __name__ == "__main__":
    main()
