"""Export a trained front at fixed preferences into the serving ecosystem's formats.

    python -m rlhf.export --run RUN --preference 0.7,0.3 --format peft --out DIR      # a standard PEFT LoRA adapter
    python -m rlhf.export --run RUN --preference 0.7,0.3 --format merged --out DIR    # a plain HF checkpoint
    python -m rlhf.export --run RUN --grid 0.1 --format peft --out DIR                # one per grid point

For a fixed lambda the Panacea delta ``c U diag(sigma, s lambda) V^T`` is an ordinary LoRA of rank k + D:
``B = U diag(c * sv(lambda))`` (out, k + D) and ``A = V^T`` (k + D, in), with ``lora_alpha = r`` (scale 1). peft
itself writes the adapter (safetensors + adapter_config.json, the adapted modules as ``target_modules``,
``fan_in_fan_out`` for GPT-2's Conv1D), so ``PeftModel.from_pretrained`` and LoRA servers (vLLM multi-LoRA) load
it; ``merged`` bakes W0 + dW(lambda) into an ordinary checkpoint. ``--grid`` writes one directory per preference,
``DIR/lambda_<l1>_<l2>...``, and ``DIR/front.json`` listing them.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from rlhf.core.errors import InputError
from rlhf.serving.export import FORMATS, export


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished run (RUN or RUN/policy)")
    ap.add_argument("--preference", default=None, help="comma-separated weights on the simplex, e.g. 0.7,0.3")
    ap.add_argument("--grid", type=float, default=None, help="export every point of a simplex grid with this step")
    ap.add_argument("--format", default="peft", choices=sorted(FORMATS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--overwrite", action="store_true", help="move an existing --out aside to <out>.replaced-<time>")
    args = ap.parse_args(argv)
    try:
        written = export(args.run, args.out, args.format, args.preference, args.grid, args.overwrite)
    except (InputError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    for w in written:
        print(w)


if __name__ == "__main__":
    main()
