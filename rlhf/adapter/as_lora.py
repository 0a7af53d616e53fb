"""The adapter at one preference as an ordinary LoRA, written straight to PEFT's file format.

For a fixed lambda the Panacea delta ``c U diag(sigma, s lambda) V^T`` is a LoRA of rank r = k + D:
``B = U diag(c * sv(lambda))`` (out, r) and ``A = V^T`` (r, in) with ``lora_alpha = r`` (scale 1). ``rlhf.export``
writes it through peft (a deep copy of the model wrapped by ``get_peft_model``): right for a one-off export, too slow
to repeat every PPO step. ``write_peft_adapter`` writes the same two files from the factors alone (megabytes, no
model copy): what a LoRA-serving engine (vLLM) loads each step.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import torch
from torch import nn

from rlhf.adapter.svd_lora import (PreferenceError, SVDLoRALayer, is_adaptable, svd_lora_layers,
                                   validate_preference)


def target_modules(model: nn.Module, names: list[str]) -> list[str]:
    """The shortest target list that peft matches to exactly the adapted modules ``names``: their last name segments
    when those select nothing else (what LoRA servers expect: q_proj, ...), else the full module names. ``model``
    may hold the adapter or be the plain base (the adapter's wrapped ``.base`` modules are skipped)."""
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    matched = {n for n, m in model.named_modules()
               if (is_adaptable(m) or isinstance(m, SVDLoRALayer)) and not n.endswith(".base")
               and n.rsplit(".", 1)[-1] in suffixes}
    return suffixes if matched == set(names) else sorted(names)


def lora_config(model: nn.Module, base_model: str = "") -> dict[str, Any]:
    """``adapter_config.json`` of the adapter's LoRA view (the fields peft writes for ``LoraConfig``)."""
    layers = dict(svd_lora_layers(model))
    first = next(iter(layers.values()))
    r = first.rank + first.pref_dim
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": r, "lora_dropout": 0.0,
            "bias": "none", "target_modules": target_modules(model, list(layers)),
            "fan_in_fan_out": any(layer.transposed for layer in layers.values()),
            "base_model_name_or_path": base_model, "use_rslora": False, "use_dora": False,
            "init_lora_weights": True, "modules_to_save": None, "inference_mode": True}


@torch.no_grad()
def lora_tensors(model: nn.Module, preferences: list[Any],
                 gather: Optional[Callable[[list[nn.Parameter]], ContextManager]] = None
                 ) -> list[dict[str, torch.Tensor]]:
    """PEFT's state dict of the LoRA view at each preference (D,): ``base_model.model.<module>.lora_A.weight``
    (r, in) and ``...lora_B.weight`` (out, r). ``gather``: a context giving full tensors for partitioned parameters
    (ZeRO-3: ``engine.gathered``, a collective): each layer's adapter factors are gathered once for every
    preference, in the same order on every rank whatever its preferences; W0 is never gathered."""
    out: list[dict[str, torch.Tensor]] = [{} for _ in preferences]
    for name, layer in svd_lora_layers(model):
        params = [layer.lora_U, layer.lora_V, layer.lora_sigma, layer.lora_s]
        with gather(params) if gather is not None else contextlib.nullcontext():
            A = layer.lora_V.T.detach().cpu().contiguous()                                    # (r, in)
            for tensors, pref in zip(out, preferences):
                lam = validate_preference(pref, layer.pref_dim)
                if lam.dim() != 1:
                    raise PreferenceError("a LoRA view needs one preference vector (D,), not a batch")
                sv = layer.singular_values(lam.to(layer.lora_s))                             # (k+D,)
                tensors[f"base_model.model.{name}.lora_B.weight"] = (
                    layer.lora_U * (layer.c * sv)).detach().cpu().contiguous()               # (out, r)
                tensors[f"base_model.model.{name}.lora_A.weight"] = A                         # (r, in)
    if preferences and not out[0]:
        raise ValueError("model has no SVD-LoRA adapter: call apply_svd_lora(model, cfg) first")
    return out


@torch.no_grad()
def merged_tensors(model: nn.Module, preference: Any,
                   gather: Optional[Callable[[list[nn.Parameter]], ContextManager]] = None) -> dict[str, torch.Tensor]:
    """The adapted modules' weights at ``preference``, ``W0 + dW(lambda)`` (W0 alone for None), under the base
    checkpoint's names (``<module>.weight``) and laid out like its weights: what an engine that holds the plain base
    reloads in place to decode at base speed. Only the adapted modules (never the embeddings or the LM head, which
    the adapter does not change). ``gather``: as ``lora_tensors``; here W0 of each adapted module is gathered too."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in svd_lora_layers(model):
        params = [layer.base.weight, layer.lora_U, layer.lora_V, layer.lora_sigma, layer.lora_s]
        with gather(params) if gather is not None else contextlib.nullcontext():
            w = layer.base.weight.detach()                                                    # (out, in) or (in, out)
            if preference is not None:
                lam = validate_preference(preference, layer.pref_dim)
                if lam.dim() != 1:
                    raise PreferenceError("merged weights need one preference vector (D,), not a batch")
                w = w + layer.delta_weight(lam.to(layer.lora_s)).to(w.dtype)
            out[f"{name}.weight"] = w.cpu().clone().contiguous()
    if not out:
        raise ValueError("model has no SVD-LoRA adapter: call apply_svd_lora(model, cfg) first")
    return out


def save_peft_adapter(tensors: dict[str, torch.Tensor], config: dict[str, Any], out: Path) -> int:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``out`` (the weights replaced atomically:
    a reader never sees half a file); returns the bytes of weights written."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "adapter_config.json"
    text = json.dumps(config, indent=2)
    if not cfg_path.exists() or cfg_path.read_text() != text:
        cfg_path.write_text(text)
    tmp = out / "adapter_model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "adapter_model.safetensors")
    return sum(t.numel() * t.element_size() for t in tensors.values())


def write_peft_adapter(model: nn.Module, preference: Any, out: Path, base_model: str = "") -> int:
    """The LoRA view at ``preference`` as a PEFT adapter in ``out``; returns the bytes of weights written."""
    return save_peft_adapter(lora_tensors(model, [preference])[0], lora_config(model, base_model), out)
