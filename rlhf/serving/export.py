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

import json
from pathlib import Path
from typing import Any, Optional

import torch

from rlhf.adapter.policy import load_run_model
from rlhf.adapter.svd_lora import PreferenceError, svd_lora_layers, validate_preference
from rlhf.evaluation.pareto import grid as simplex_grid


def _target_modules(model: torch.nn.Module, names: list[str]) -> list[str]:
    """The shortest target list that peft matches to exactly the adapted modules: their last name segments when
    those select nothing else (what LoRA servers expect: q_proj, ...), else the full module names."""
    from rlhf.adapter.svd_lora import is_adaptable

    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    matched = {n for n, m in model.named_modules() if is_adaptable(m) and n.rsplit(".", 1)[-1] in suffixes}
    return suffixes if matched == set(names) else sorted(names)


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
                     target_modules=_target_modules(base, list(layers)), fan_in_fan_out=conv1d)
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


def export(run: str, out: str, fmt: str = "peft", preference: Optional[list[float]] = None,
           grid_step: Optional[float] = None) -> list[Path]:
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if (preference is None) == (grid_step is None):
        raise ValueError("pass exactly one of --preference L1,L2,... or --grid STEP")
    model, tokenizer, info = load_run_model(run)
    D = len(info.objectives)
    prefs = [preference] if preference is not None else simplex_grid(D, grid_step)
    for p in prefs:  # every preference checked before anything is written
        validate_preference(p, D)
    out_dir, written = Path(out), []
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
