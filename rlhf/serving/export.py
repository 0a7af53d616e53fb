"""Exports of a trained front at fixed preferences (``python -m rlhf.export``; ``rlhf/export.py`` has the usage).

For a fixed lambda the Panacea delta ``c U diag(sigma, s lambda) V^T`` is an ordinary LoRA of rank k + D:
``B = U diag(c * sv(lambda))`` (out, k + D) and ``A = V^T`` (k + D, in), with ``lora_alpha = r`` (scale 1). peft itself
writes the adapter, so ``PeftModel.from_pretrained`` and LoRA servers load it; ``merged`` bakes W0 + dW(lambda) into an
ordinary checkpoint."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import torch

from rlhf.adapter.as_lora import target_modules
from rlhf.adapter.policy import load_run_model, read_run
from rlhf.adapter.svd_lora import PREF_SUM_TOL, PreferenceError, svd_lora_layers, validate_preference
from rlhf.core.errors import InputError
from rlhf.evaluation.pareto import grid as simplex_grid


@torch.no_grad()
def to_peft(model: torch.nn.Module, preference: Any, out: Path) -> Path:
    """Write the adapter at ``preference`` as a PEFT LoRA adapter of rank k + D into ``out``."""
    import copy

    from peft import LoraConfig, get_peft_model

    layers = dict(svd_lora_layers(model))
    first = next(iter(layers.values()))
    lam = validate_preference(preference, first.pref_dim)
    if lam.dim() != 1:
        raise PreferenceError("export needs one preference vector (D,), not a batch")
    r = first.rank + first.pref_dim
    base = copy.deepcopy(model)
    for name, layer in list(svd_lora_layers(base)):  # unwrap: peft adapts the plain base
        parent_name, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent_name) if parent_name else base, child, layer.base)
    del base.svd_lora_config
    conv1d = any(layer.transposed for layer in layers.values())
    cfg = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=target_modules(base, list(layers)), fan_in_fan_out=conv1d)
    peft_model = get_peft_model(base, cfg)
    for name, layer in layers.items():
        target = peft_model.base_model.model.get_submodule(name)
        sv = layer.singular_values(lam.to(layer.lora_s))                                # (k+D,)
        target.lora_B["default"].weight.copy_(layer.lora_U * (layer.c * sv))            # (out, k+D)
        target.lora_A["default"].weight.copy_(layer.lora_V.T)                           # (k+D, in)
    peft_model.save_pretrained(out)
    return out


def to_merged(model: torch.nn.Module, preference: Any, out: Path) -> Path:
    from rlhf.adapter.svd_lora import merge_and_unload

    merge_and_unload(model, preference).save_pretrained(out)
    return out


FORMATS = {"peft": to_peft, "merged": to_merged}


class ExportError(InputError, ValueError):
    """An export that would lose files or cannot be made; refused before the model loads."""


def parse_preference(text: str, names: list[str]) -> list[float]:
    """``--preference 0.7,0.3`` checked against the run's objectives, the message quoting what was written."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ExportError(f"--preference {text!r}: write {len(names)} comma-separated numbers, one per objective "
                          f"{names}, e.g. {','.join(['0.5'] + ['0.5'] * (len(names) - 1))}") from None
    if len(values) != len(names):
        raise ExportError(f"--preference {text!r} has {len(values)} weights but the run has {len(names)} objectives "
                          f"{names}")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ExportError(f"--preference {text!r}: every weight must be a finite number >= 0")
    if abs(math.fsum(values) - 1.0) > PREF_SUM_TOL:
        raise ExportError(f"--preference {text!r} sums to {math.fsum(values):g}; the weights must sum to 1")
    return values


def prepare_out(out: str, overwrite: bool) -> Path:
    """The output directory, refused when it is (inside) a checkpoint or a run's policy, or when it already exists
    (``overwrite`` moves it aside to ``<out>.replaced-<time>``; nothing is deleted)."""
    from rlhf.adapter.policy import protected
    from rlhf.runtime.run import move_aside

    target = Path(out)
    bad = protected(target)
    if bad:
        raise ExportError(f"--out {out}: {bad}; export somewhere else")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        if not overwrite:
            raise ExportError(f"--out {out} already exists; pass --overwrite to move it aside to "
                              f"{target.name}.replaced-<time> (nothing is deleted), or choose another --out")
        print(f"[export] --overwrite: moved {out} to {move_aside(target)}", flush=True)
    return target


def export(run: str, out: str, fmt: str = "peft", preference: Optional[str | list[float]] = None,
           grid_step: Optional[float] = None, overwrite: bool = False) -> list[Path]:
    """Every input is checked (format, preferences against the run's objectives, the output directory) before the
    model loads; then one export per preference."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if (preference is None) == (grid_step is None):
        raise ExportError("pass exactly one of --preference L1,L2,... or --grid STEP")
    info = read_run(run)
    names = info.objective_names
    if preference is not None:
        prefs = [parse_preference(preference if isinstance(preference, str) else ",".join(map(repr, preference)),
                                  names)]
    else:
        if not (0 < grid_step <= 1) or abs(round(1 / grid_step) * grid_step - 1) > 1e-9:
            raise ExportError(f"--grid {grid_step:g}: the step must divide 1 (e.g. 0.1, 0.25, 0.5)")
        prefs = simplex_grid(len(names), grid_step)
    out_dir = prepare_out(out, overwrite)
    model, tokenizer, info = load_run_model(run)
    written = []
    for p in prefs:
        target = out_dir if grid_step is None else out_dir / ("lambda_" + "_".join(f"{x:g}" for x in p))
        target.mkdir(parents=True, exist_ok=True)
        FORMATS[fmt](model, p, target)
        tokenizer.save_pretrained(target)
        (target / "panacea_preference.json").write_text(json.dumps(
            {"preference": list(p), "objectives": info.objective_names, "run": str(info.path),
             "base_model": info.base_model, "format": fmt}, indent=2))
        written.append(target)
    if grid_step is not None:
        (out_dir / "front.json").write_text(json.dumps(
            {"objectives": info.objective_names, "base_model": info.base_model, "format": fmt,
             "adapters": [{"preference": list(p), "path": str(t)} for p, t in zip(prefs, written)]}, indent=2))
    return written
