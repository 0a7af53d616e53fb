"""Panacea's preference-conditioned SVD-LoRA adapter (Zhong et al. 2024, §3.2; DESIGN.md §1).

Every adapted linear map becomes

    h = W0 x + c * U diag(sigma_1..sigma_k, s*lambda_1..s*lambda_D) V^T x

with ``W0`` frozen, ``U: (out, k+D)``, ``V: (in, k+D)``, ``sigma: (k,)`` and one scalar ``s`` per layer learnable,
and ``lambda`` (the user's preference on the simplex) written into every layer as runtime state — never a
parameter, never in a state dict. At init ``sigma = s = 0`` so the delta is exactly zero and the policy starts as
the base (SFT) model.

Works for ``nn.Linear`` (Llama/Qwen2/Mistral) and HF ``Conv1D`` (GPT-2, whose weight is stored ``(in, out)``).
This module imports only torch (plus safetensors for I/O); DeepSpeed-specific handling lives in ``engine.py``.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from rlhf.core.config import check, doc_field, from_dict, to_dict
from rlhf.core.errors import InputError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT_VERSION = 1
PREF_SUM_TOL = 1e-4


class PreferenceError(InputError, ValueError):
    """A preference vector is malformed, off the simplex, or was never set."""


class AdapterMismatchError(InputError, ValueError):
    """A saved adapter does not fit the model it is being loaded into."""


@dataclass(frozen=True)
class SVDLoRAConfig:
    """Hyper-parameters of the SVD-LoRA adapter. Defaults follow DESIGN.md §1 (k = 8, c = 512 / k)."""

    rank: int = doc_field(8, "k: number of learned singular values sigma_1..sigma_k")
    pref_dim: int = doc_field(2, "D: number of preference dimensions (objectives); lambda has D entries")
    scaling: Optional[float] = doc_field(None, "c, the delta's multiplier; null means 512 / rank (the paper's setting)")
    target_modules: Optional[tuple[str, ...]] = doc_field(
        None, "names (last segment or dotted suffix) of linear maps to adapt; null = every linear in the decoder blocks")
    init_std: float = doc_field(0.02, "U and V are initialised from N(0, init_std^2)")
    init_sigma: float = doc_field(0.0, "initial value of every sigma_i (0 keeps the start model unchanged)")
    init_s: float = doc_field(0.0, "initial value of the per-layer preference scale s (0 keeps the start model unchanged)")
    dropout: float = doc_field(0.0, "dropout on the adapter's input (the paper uses 0)")

    def __post_init__(self) -> None:
        check(self.rank >= 0, "rank", f"must be >= 0, got {self.rank}")
        check(self.pref_dim >= 1, "pref_dim", f"must be >= 1 (one per objective), got {self.pref_dim}")
        check(self.scaling is None or (self.scaling > 0 and math.isfinite(self.scaling)), "scaling",
              f"must be a positive number or null, got {self.scaling}")
        check(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.target_modules is None or len(self.target_modules) > 0, "target_modules",
              "must be null (every decoder linear) or a non-empty list of module names")

    @property
    def c(self) -> float:
        """The delta's multiplier: ``scaling`` if given, else 512 / rank (512 when rank = 0)."""
        if self.scaling is not None:
            return float(self.scaling)
        return 512.0 / max(self.rank, 1)


# ----------------------------------------------------------------------------------------------------------
# Preference validation
# ----------------------------------------------------------------------------------------------------------

def _shown(t: torch.Tensor) -> Any:
    """A tensor as the numbers a user wrote (six significant digits), not float32 noise like 0.30000001192092896."""
    return [_shown(row) for row in t] if t.dim() > 1 else [float(f"{x:.6g}") for x in t.reshape(-1).tolist()]


def validate_preference(pref: Any, pref_dim: int) -> torch.Tensor:
    """Return ``pref`` as a float32 tensor ``(D,)`` or ``(B, D)`` after checking it lies on the simplex."""
    if pref is None:
        raise PreferenceError("preference is None: pass a vector of length pref_dim on the simplex")
    t = torch.as_tensor(pref, dtype=torch.float32).detach()
    if t.dim() not in (1, 2):
        raise PreferenceError(f"preference must have shape (D,) or (B, D); got shape {tuple(t.shape)}")
    if t.shape[-1] != pref_dim:
        raise PreferenceError(
            f"preference has {t.shape[-1]} entries but the adapter has pref_dim={pref_dim} "
            f"(one weight per objective); got {_shown(t)}")
    if not torch.isfinite(t).all():
        raise PreferenceError(f"preference contains NaN or inf: {_shown(t)}")
    if (t < 0).any():
        raise PreferenceError(f"preference entries must be >= 0 (a point on the simplex); got {_shown(t)}")
    sums = t.sum(-1)
    if ((sums - 1.0).abs() > PREF_SUM_TOL).any():
        raise PreferenceError(
            f"preference entries must sum to 1 (tolerance {PREF_SUM_TOL}); got sums {_shown(sums)} for {_shown(t)}")
    return t


# ----------------------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------------------

def _weight_shape(weight: torch.Tensor) -> tuple[int, ...]:
    # Under ZeRO-3 a partitioned parameter's .shape is empty; its true shape is in ds_shape (DESIGN.md §1).
    return tuple(getattr(weight, "ds_shape", weight.shape))


def _is_conv1d(module: nn.Module) -> bool:
    # HF's GPT-2 Conv1D: y = x @ W + b with W stored (in, out). Matched by name so that we need no import.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


@dataclass(frozen=True)
class AdapterState:
    """What a forward of an adapted layer runs under. Frozen: a context replaces it and puts the old one back, so a
    forward never sees a value some earlier caller left behind (DESIGN.md §2)."""

    preference: Optional[torch.Tensor] = None   # (D,) or (B, D) lambda, on the layer's device and dtype
    disabled: bool = False                      # True: the frozen base weights alone (reference log-probs)
    merged: Optional[torch.Tensor] = None       # what W0 currently holds a delta of (a (D,) lambda or soup weights)
    row_gate: Optional[torch.Tensor] = None     # (N,) per row of the batch: 1 adapter on, 0 base weights alone


class SVDLoRALayer(nn.Module):
    """Wraps one frozen linear map with the preference-conditioned SVD delta."""

    def __init__(self, base: nn.Module, cfg: SVDLoRAConfig) -> None:
        super().__init__()
        if not is_adaptable(base):
            raise TypeError(f"SVD-LoRA adapts nn.Linear or Conv1D, got {type(base).__name__}")
        self.base = base
        self.transposed = _is_conv1d(base)
        shape = _weight_shape(base.weight)
        self.in_features, self.out_features = (shape[0], shape[1]) if self.transposed else (shape[1], shape[0])
        self.rank, self.pref_dim, self.c = cfg.rank, cfg.pref_dim, cfg.c
        r = cfg.rank + cfg.pref_dim
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_U = nn.Parameter(torch.randn(self.out_features, r, **factory) * cfg.init_std)  # (out, k+D)
        self.lora_V = nn.Parameter(torch.randn(self.in_features, r, **factory) * cfg.init_std)   # (in, k+D)
        self.lora_sigma = nn.Parameter(torch.full((cfg.rank,), cfg.init_sigma, **factory))    # (k,)
        # Shape (1,), not (): DeepSpeed broadcasts parameters through a byte view, impossible for 0-dim tensors.
        self.lora_s = nn.Parameter(torch.full((1,), cfg.init_s, **factory))                   # (1,)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        # Runtime state, never a parameter nor in a state dict; written only by the contexts below.
        self.state = AdapterState()

    @property
    def preference(self) -> Optional[torch.Tensor]:
        return self.state.preference

    def singular_values(self, pref: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(sigma_1..sigma_k, s*lambda_1..s*lambda_D)``: shape (k+D,) or (B, k+D) for per-sample lambda."""
        pref = self.state.preference if pref is None else pref
        if pref is None:
            raise PreferenceError("no preference set: run the forward inside scoped_preference(model, lambda) "
                                  "(or call set_preference(model, lambda) for interactive use)")
        pref = pref.to(self.lora_s.dtype)
        sigma = self.lora_sigma.expand(*pref.shape[:-1], self.rank)                 # (k,) or (B, k)
        return torch.cat([sigma, self.lora_s * pref], dim=-1)                          # (k+D,) or (B, k+D)

    def delta_weight(self, pref: torch.Tensor) -> torch.Tensor:
        """``c U diag(sv) V^T`` laid out like the base weight: (out, in) for Linear, (in, out) for Conv1D."""
        sv = self.singular_values(pref)                                                # (k+D,)
        if sv.dim() != 1:
            raise PreferenceError("a weight delta needs one preference vector (D,), not a batch")
        delta = self.c * (self.lora_U * sv) @ self.lora_V.T                            # (out, in)
        return delta.T if self.transposed else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)                                                             # (..., out)
        state = self.state
        if state.disabled or state.merged is not None:
            return out
        sv = self.singular_values()                                                    # (k+D,) or (B, k+D)
        if sv.dim() == 2:
            if sv.shape[0] != x.shape[0]:
                raise PreferenceError(
                    f"per-sample preference has batch {sv.shape[0]} but the input has batch {x.shape[0]}")
        if state.row_gate is not None:
            if state.row_gate.shape[0] != x.shape[0]:
                raise ValueError(f"adapter row gate has {state.row_gate.shape[0]} rows but the input has {x.shape[0]}")
            sv = sv * state.row_gate.unsqueeze(-1)                                     # (B, k+D): 0 rows = W0 alone
        if sv.dim() == 2:
            sv = sv.view(sv.shape[0], *([1] * (x.dim() - 2)), sv.shape[1])             # (B, 1.., k+D)
        h = self.dropout(x).to(self.lora_V.dtype) @ self.lora_V                        # (..., k+D)
        # c folded into the (k+D) singular values: one multiply on a vector, not on the (..., out) output
        delta = (h * (self.c * sv)) @ self.lora_U.T                                    # (..., out)
        return out + delta.to(out.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, k={self.rank}, D={self.pref_dim}, c={self.c:g}"


# ----------------------------------------------------------------------------------------------------------
# Whole-model functions
# ----------------------------------------------------------------------------------------------------------

def svd_lora_layers(model: nn.Module) -> Iterator[tuple[str, SVDLoRALayer]]:
    for name, module in model.named_modules():
        if isinstance(module, SVDLoRALayer):
            yield name, module


def _layers_or_raise(model: nn.Module) -> list[SVDLoRALayer]:
    layers = [m for _, m in svd_lora_layers(model)]
    if not layers:
        raise ValueError("model has no SVD-LoRA adapter: call apply_svd_lora(model, cfg) first")
    return layers


def adapter_config(model: nn.Module) -> SVDLoRAConfig:
    cfg = getattr(model, "svd_lora_config", None)
    if cfg is None:
        raise ValueError("model has no SVD-LoRA adapter: call apply_svd_lora(model, cfg) first")
    return cfg


def _in_decoder_blocks(name: str) -> bool:
    # A repeated block lives in a ModuleList, so its qualified name has a numeric segment (model.layers.3.mlp...).
    return any(part.isdigit() for part in name.split("."))


def find_target_modules(model: nn.Module, target_modules: Optional[Sequence[str]] = None) -> list[str]:
    """Qualified names of the linear maps the adapter will wrap.

    Default: every ``nn.Linear``/``Conv1D`` inside the repeated decoder blocks (never the LM head, embeddings or
    a score head, which sit outside the blocks). With ``target_modules``, a module matches when its name equals
    an entry or ends with ``.<entry>``; an entry that matches nothing is an error.
    """
    names = [n for n, m in model.named_modules() if is_adaptable(m)]
    if target_modules is None:
        chosen = [n for n in names if _in_decoder_blocks(n)]
        if not chosen:
            raise ValueError("found no linear maps inside repeated decoder blocks; set target_modules explicitly")
        return chosen
    chosen = [n for n in names if any(n == t or n.endswith("." + t) for t in target_modules)]
    unmatched = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in chosen)]
    if unmatched:
        sample = sorted({n.split(".")[-1] for n in names})
        raise ValueError(f"target_modules {unmatched} match no nn.Linear/Conv1D in the model; candidates: {sample}")
    return chosen


def apply_svd_lora(model: nn.Module, cfg: SVDLoRAConfig) -> nn.Module:
    """Wrap the target linear maps in place, freeze every other parameter, and return the model."""
    if any(True for _ in svd_lora_layers(model)):
        raise ValueError("model already carries an SVD-LoRA adapter")
    targets = find_target_modules(model, cfg.target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SVDLoRALayer(getattr(parent, child), cfg))
    model.svd_lora_config = cfg
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, reading ZeRO-3 ``ds_numel`` where present."""
    def numel(p: torch.Tensor) -> int:
        return int(getattr(p, "ds_numel", p.numel()))
    params = list(model.parameters())
    return sum(numel(p) for p in params if p.requires_grad), sum(numel(p) for p in params)


def _per_layer(layers: list[SVDLoRALayer], t: torch.Tensor) -> Iterator[tuple[SVDLoRALayer, torch.Tensor]]:
    """Each layer with ``t`` on its device and dtype, one copy per (device, dtype): runtime state for every layer."""
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
    for layer in layers:
        key = (layer.lora_s.device, layer.lora_s.dtype)
        if key not in cache:
            cache[key] = t.to(device=key[0], dtype=key[1])
        yield layer, cache[key]


def _write_state(layers: list[SVDLoRALayer], **changes: Any) -> None:
    """Replace one field of every layer's state; tensors go to each layer's device and dtype."""
    for name, value in changes.items():
        if torch.is_tensor(value):
            for layer, copy_ in _per_layer(layers, value):
                layer.state = replace(layer.state, **{name: copy_})
        else:
            for layer in layers:
                layer.state = replace(layer.state, **{name: value})


@contextlib.contextmanager
def _scoped_state(model: nn.Module, **changes: Any) -> Iterator[list[SVDLoRALayer]]:
    """Inside the block every layer's state carries ``changes``; on exit (normal or not) the previous states return."""
    layers = _layers_or_raise(model)
    saved = [layer.state for layer in layers]
    _write_state(layers, **changes)
    try:
        yield layers
    finally:
        for layer, state in zip(layers, saved):
            layer.state = state


def _refuse_merged(layers: list[SVDLoRALayer], what: str) -> None:
    if any(layer.state.merged is not None for layer in layers):
        raise RuntimeError(f"adapter is merged into the base weights; unmerge_preference(model) before {what}")


@contextlib.contextmanager
def scoped_preference(model: nn.Module, pref: Any) -> Iterator[nn.Module]:
    """Every forward inside the block runs under ``lambda``: (D,) for the batch or (B, D) one per sample. On exit the
    preference that was there before returns. Every internal caller sets lambda this way, from the batch object
    that carries it, so no forward reads a preference left behind by an earlier caller."""
    t = validate_preference(pref, adapter_config(model).pref_dim)
    with _scoped_state(model, preference=t):
        yield model


def set_preference(model: nn.Module, pref: Any) -> torch.Tensor:
    """Interactive use: write ``lambda`` into every adapted layer until the next call (``(D,)`` or ``(B, D)``).
    Library code uses ``scoped_preference`` instead."""
    t = validate_preference(pref, adapter_config(model).pref_dim)
    _write_state(_layers_or_raise(model), preference=t)
    return t


def get_preference(model: nn.Module) -> Optional[torch.Tensor]:
    """The preference the next forward runs under (None: none set)."""
    return _layers_or_raise(model)[0].state.preference


@contextlib.contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the frozen base weights alone: reference log-probs with no second copy of the model (§1)."""
    _refuse_merged(_layers_or_raise(model), "disabling it")
    with _scoped_state(model, disabled=True):
        yield model


@contextlib.contextmanager
def adapter_rows(model: nn.Module, enabled: torch.Tensor) -> Iterator[nn.Module]:
    """Per row of the batch, the adapter on (``enabled`` True) or off (False: the frozen base weights alone).

    One forward over ``[batch; batch]`` with ``enabled = [1..1, 0..0]`` yields the policy's and the reference's
    outputs together: the reference rows' delta is exactly zero, so they equal an ``adapter_disabled`` pass, and the
    two passes become one batched call (fewer kernel launches; DESIGN.md §4).
    """
    _refuse_merged(_layers_or_raise(model), "gating rows")
    if enabled.dim() != 1:
        raise ValueError(f"enabled must be one flag per row, shape (N,); got {tuple(enabled.shape)}")
    with _scoped_state(model, row_gate=enabled):
        yield model


@torch.no_grad()
def merge_preference(model: nn.Module, pref: Any) -> None:
    """Interactive use: add ``dW(lambda)`` into every base weight in place (undo with ``unmerge_preference``).
    Library code uses the ``merged`` context, which restores W0 bit-exactly."""
    cfg = adapter_config(model)
    t = validate_preference(pref, cfg.pref_dim)
    if t.dim() != 1:
        raise PreferenceError("merging needs one preference vector (D,), not a per-sample batch")
    layers = _layers_or_raise(model)
    _refuse_merged(layers, "merging again")
    for layer in layers:
        layer.base.weight.add_(layer.delta_weight(t.to(layer.lora_s.device)).to(layer.base.weight.dtype))
    _write_state(layers, merged=t)


@torch.no_grad()
def unmerge_preference(model: nn.Module) -> None:
    """Subtract the merged delta again (exact in fp32; within rounding in bf16/fp16)."""
    layers = _layers_or_raise(model)
    for layer in layers:
        if layer.state.merged is not None:
            layer.base.weight.sub_(layer.delta_weight(layer.state.merged).to(layer.base.weight.dtype))
    _write_state(layers, merged=None)


@contextlib.contextmanager
def weights_added(model: nn.Module, deltas: Sequence[torch.Tensor], label: torch.Tensor) -> Iterator[nn.Module]:
    """Inside the block each adapted layer's base weight holds ``W0 + deltas[i]`` (laid out like the weight) and the
    adapter's own path is off; on exit W0 is restored bit-exactly from a copy (subtracting again is not exact in
    bf16, and the error would accumulate over thousands of PPO steps). ``label`` records what was merged (a lambda,
    or Rewarded Soups' interpolation weights). The one mechanism behind ``merged`` and Rewarded Soups."""
    layers = _layers_or_raise(model)
    _refuse_merged(layers, "merging again")
    if len(deltas) != len(layers):
        raise ValueError(f"{len(deltas)} weight deltas for {len(layers)} adapted layers")
    saved = [layer.base.weight.detach().clone() for layer in layers]
    try:
        with torch.no_grad():
            for layer, delta in zip(layers, deltas):
                layer.base.weight.add_(delta.to(device=layer.base.weight.device, dtype=layer.base.weight.dtype))
        with _scoped_state(model, merged=label):
            yield model
    finally:
        with torch.no_grad():
            for layer, weight in zip(layers, saved):
                layer.base.weight.copy_(weight)


@contextlib.contextmanager
def merged(model: nn.Module, pref: Any) -> Iterator[nn.Module]:
    """Inside the block the base weights hold ``W0 + dW(lambda)``: a plain HF model to the decoder (no adapter
    overhead: ~2x faster HF generate on an H200, benchmarks/RESULTS.md). Costs one copy of the adapted weights."""
    t = validate_preference(pref, adapter_config(model).pref_dim)
    if t.dim() != 1:
        raise PreferenceError("merging needs one preference vector (D,), not a per-sample batch")
    layers = _layers_or_raise(model)
    with torch.no_grad():
        deltas = [layer.delta_weight(t.to(layer.lora_s.device)) for layer in layers]
    with weights_added(model, deltas, t):
        yield model


@torch.no_grad()
def merge_and_unload(model: nn.Module, pref: Any, inplace: bool = False) -> nn.Module:
    """A plain HF model with ``W0 + dW(lambda)`` baked in: ``save_pretrained`` writes an ordinary checkpoint.

    With ``inplace=False`` (default) the adapted model is left untouched and a copy is returned.
    """
    target = model if inplace else copy.deepcopy(model)
    merge_preference(target, pref)
    for name, layer in list(svd_lora_layers(target)):
        parent_name, _, child = name.rpartition(".")
        parent = target.get_submodule(parent_name) if parent_name else target
        setattr(parent, child, layer.base)
    del target.svd_lora_config
    return target


# ----------------------------------------------------------------------------------------------------------
# Save / load the adapter alone
# ----------------------------------------------------------------------------------------------------------

def _base_identity(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "n_embd", "n_layer")
    ident = {k: getattr(config, k) for k in keys if config is not None and getattr(config, k, None) is not None}
    ident["name_or_path"] = getattr(config, "_name_or_path", "") if config is not None else ""
    return ident


def base_fingerprint(model: nn.Module, gather: Optional[Any] = None) -> str:
    """A short hash of the base weights under the adapter: a strided sample of three adapted weights (first, middle,
    last), rounded to bf16 so that the same base loaded in fp32 or bf16 agrees. Catches an adapter loaded onto other
    weights of the same shapes. ``gather(params)``: a context giving full ZeRO-3 tensors (``engine.gathered``)."""
    layers = _layers_or_raise(model)
    h = hashlib.sha256()
    for layer in (layers[0], layers[len(layers) // 2], layers[-1]):
        w = layer.base.weight
        with gather([w]) if gather is not None else contextlib.nullcontext():
            flat = w.detach().reshape(-1)
            idx = torch.linspace(0, flat.numel() - 1, steps=min(4096, flat.numel()), device=flat.device).long()
            h.update(flat[idx].to(torch.bfloat16).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The learnable adapter tensors (U, V, sigma, s of every layer), keyed by qualified name."""
    return {f"{name}.{p}": getattr(layer, p).detach()
            for name, layer in svd_lora_layers(model) for p in ("lora_U", "lora_V", "lora_sigma", "lora_s")}


def save_adapter(model: nn.Module, path: str | Path, state_dict: Optional[dict[str, torch.Tensor]] = None,
                 fingerprint: Optional[str] = None) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` into directory ``path``.

    ``state_dict`` and ``fingerprint`` let a caller (e.g. under ZeRO-3) pass gathered tensors and the base fingerprint.
    """
    from safetensors.torch import save_file

    cfg = adapter_config(model)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else adapter_state_dict(model)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path / ADAPTER_WEIGHTS))
    meta = {
        "format_version": FORMAT_VERSION,
        "adapter": to_dict(cfg),
        "base_model": {**_base_identity(model),
                       "fingerprint": fingerprint if fingerprint is not None else base_fingerprint(model)},
        "modules": {name: [layer.out_features, layer.in_features] for name, layer in svd_lora_layers(model)},
    }
    (path / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2))
    return path


class AdapterFileError(InputError, ValueError):
    """An adapter's files are truncated, zeroed or not what they claim to be (the message names the file)."""


def safetensors_problem(path: Path) -> Optional[str]:
    """Why a ``.safetensors`` file cannot be whole, read from its header alone (no tensor is loaded), or None: the
    8-byte header length, the JSON header, and the file size the header's data offsets imply."""
    size = path.stat().st_size
    if size < 8:
        return f"it has {size} bytes (truncated)"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n == 0 or 8 + n > size:
            return f"its header claims {n} bytes but the file has {size} (truncated or zeroed)"
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return "its header is not valid safetensors JSON (corrupted or zeroed)"
    if 8 + n + end != size:
        return f"it has {size} bytes but its header describes {8 + n + end} (truncated or corrupted)"
    return None


def read_adapter_config(path: str | Path) -> tuple[SVDLoRAConfig, dict[str, Any]]:
    """An adapter directory's config, after checking that both its files are whole (before any model loads)."""
    path = Path(path)
    cfg_file = path / ADAPTER_CONFIG
    if not cfg_file.is_file() or not (path / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not an adapter directory: expected {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} inside")
    problem = safetensors_problem(path / ADAPTER_WEIGHTS)
    if problem:
        raise AdapterFileError(f"{path / ADAPTER_WEIGHTS}: {problem}. Restore it (a checkpoint's policy/ holds a copy: "
                               f"RUN/checkpoints/step_N/policy) or re-run training")
    try:
        meta = json.loads(cfg_file.read_text())
        return from_dict(SVDLoRAConfig, meta["adapter"]), meta
    except (ValueError, KeyError, TypeError) as err:
        raise AdapterFileError(f"{cfg_file}: not a valid adapter config ({type(err).__name__}: {err}); restore it "
                               f"from a checkpoint's policy/") from None


def load_adapter(model: nn.Module, path: str | Path, expected_pref_dim: Optional[int] = None) -> nn.Module:
    """Load a saved adapter into ``model`` (applying it first if the model is plain), refusing any mismatch."""
    from safetensors.torch import load_file

    cfg, meta = read_adapter_config(path)
    if expected_pref_dim is not None and cfg.pref_dim != expected_pref_dim:
        raise AdapterMismatchError(
            f"adapter at {str(path)!r} has pref_dim={cfg.pref_dim} but {expected_pref_dim} objectives are configured")
    ident, saved_ident = _base_identity(model), meta.get("base_model", {})
    diffs = [f"{k}: adapter was trained on {saved_ident[k]!r}, model has {ident.get(k)!r}"
             for k in saved_ident if k not in ("name_or_path", "fingerprint") and ident.get(k) != saved_ident[k]]
    if diffs:
        raise AdapterMismatchError(f"adapter at {str(path)!r} does not fit this base model: " + "; ".join(diffs))
    existing = getattr(model, "svd_lora_config", None)
    if existing is None:
        apply_svd_lora(model, cfg)
    elif existing != cfg:
        raise AdapterMismatchError(
            f"model already carries an adapter with a different config ({existing}) than {str(path)!r} ({cfg})")
    layers = dict(svd_lora_layers(model))
    saved_modules = {k: tuple(v) for k, v in meta["modules"].items()}
    have_modules = {k: (v.out_features, v.in_features) for k, v in layers.items()}
    if saved_modules != have_modules:
        missing = sorted(set(saved_modules) - set(have_modules))[:5]
        extra = sorted(set(have_modules) - set(saved_modules))[:5]
        bad = [k for k in set(saved_modules) & set(have_modules) if saved_modules[k] != have_modules[k]][:5]
        raise AdapterMismatchError(
            f"adapter at {str(path)!r} does not fit this model's layers: missing in model {missing}, "
            f"not in adapter {extra}, shape differs {bad}")
    saved_fp = saved_ident.get("fingerprint")
    if saved_fp and base_fingerprint(model) != saved_fp:
        raise AdapterMismatchError(
            f"adapter at {str(path)!r} was trained on other base weights than this model's (base fingerprint "
            f"{saved_fp} vs {base_fingerprint(model)}; shapes agree, values do not). Load the base it was trained on: "
            f"{saved_ident.get('name_or_path') or 'see run.json base_model'}")
    state = load_file(str(Path(path) / ADAPTER_WEIGHTS))
    with torch.no_grad():
        for key, tensor in state.items():
            name, _, pname = key.rpartition(".")
            param = getattr(layers[name], pname)
            param.copy_(tensor.to(device=param.device, dtype=param.dtype))
    return model
