"""Score models: any HF backbone read as one scalar per sequence at the last non-pad token ("end score").

A trained model is an ordinary ``AutoModelForSequenceClassification`` (num_labels = 1) saved with its own
tokenizer and a ``dimension.json`` (name, kind reward|cost, accuracy), so existing HF reward models plug in
unchanged. safe-rlhf's score-model layout (``LlamaModelForScore``: a ``score_head`` on a Llama backbone, e.g.
beaver-7b-v1.0-reward/cost) is read by :func:`load_score_model` directly or converted once by
``python reward_models/convert_safe_rlhf.py SRC DST``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from rlhf.core.errors import InputError
from rlhf.data.chat import DEFAULT_TEMPLATE, check_tokenizer_fits, encode, ensure_pad_token, pad_batch
from rlhf.runtime.paths import is_local

DIMENSION_FILE = "dimension.json"
SAFE_RLHF_ARCHS = {"LlamaModelForScore"}


class ScoreModelError(InputError, ValueError):
    """A score model cannot be loaded or is not a one-scalar sequence scorer."""


def read_dimension(path: str | Path) -> dict[str, Any]:
    """``dimension.json`` of a score model directory, or {} for a plain HF reward model."""
    f = Path(path) / DIMENSION_FILE
    return json.loads(f.read_text()) if f.is_file() else {}


def write_dimension(path: str | Path, **fields: Any) -> None:
    (Path(path) / DIMENSION_FILE).write_text(json.dumps(fields, indent=2))


def _is_safe_rlhf(config_dict: dict[str, Any]) -> bool:
    return bool(SAFE_RLHF_ARCHS & set(config_dict.get("architectures") or []))


def safe_rlhf_to_hf(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Build a ``LlamaForSequenceClassification`` from safe-rlhf's layout: ``model.*`` + ``score_head``.

    A score-head bias or the normaliser statistics (applied when ``do_normalize``) cannot live in the bias-free
    HF head, so they are folded where exact (the scale into the weight) and the remaining shift is returned as
    ``score_offset`` for ``dimension.json``.
    """
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForSequenceClassification

    raw = json.loads((path / "config.json").read_text())
    if int(raw.get("score_dim", 1)) != 1:
        raise ScoreModelError(f"{path}: safe-rlhf score_dim={raw['score_dim']}; only one-scalar scorers are supported")
    keep = {k: v for k, v in raw.items() if k not in ("architectures", "auto_map", "score_dim", "bias")}
    config = LlamaConfig(**{**keep, "num_labels": 1})
    state: dict[str, torch.Tensor] = {}
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise ScoreModelError(f"{path}: no *.safetensors or pytorch_model*.bin weights found")
    for f in files:
        state.update(load_file(str(f)) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu"))
    if "score_head.weight" not in state:
        raise ScoreModelError(f"{path}: config says {raw.get('architectures')} but weights lack 'score_head.weight'")
    weight = state.pop("score_head.weight").float()                                   # (1, H)
    bias = float(state.pop("score_head.bias", torch.zeros(1)).float().reshape(-1)[0])
    offset = bias
    if raw.get("do_normalize") and "normalizer.mean" in state:
        mean = float(state["normalizer.mean"].float().reshape(-1)[0])
        std = math.sqrt(float(state["normalizer.var"].float().reshape(-1)[0]) + 1e-8)
        weight, offset = weight / std, (bias - mean) / std
    for k in [k for k in state if k.startswith("normalizer.")]:
        state.pop(k)
    model = LlamaForSequenceClassification(config)
    missing, unexpected = model.load_state_dict({**state, "score.weight": weight}, strict=False)
    missing = [k for k in missing if "rotary" not in k]
    if missing or unexpected:
        raise ScoreModelError(f"{path}: safe-rlhf weights do not fit a Llama backbone (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    return model, {"score_offset": offset, "converted_from": "safe-rlhf"}


def check_score_config(config: Any, path: str) -> None:
    """From the config alone (no weights read): a model that is no sequence classifier (e.g. a causal LM) would get
    a randomly initialised head, and one with several labels is no one-scalar scorer."""
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a.endswith("ForSequenceClassification") or a in SAFE_RLHF_ARCHS for a in archs):
        raise ScoreModelError(
            f"score model {path!r} is a {archs[0]}, not a trained score model: it has no score head, so its scores "
            f"would come from a random one. Train one with reward_models/train.py or convert safe-rlhf weights with "
            f"reward_models/convert_safe_rlhf.py")
    if getattr(config, "num_labels", 1) != 1:
        raise ScoreModelError(f"score model {path!r} has num_labels={config.num_labels}; a score model must output "
                              f"one scalar (num_labels=1)")


def load_score_model(path: str, dtype: Optional[torch.dtype] = None) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model, tokenizer, dimension meta) for a score model path or hub name; the model is frozen and in eval mode."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    local = Path(path)
    if not local.is_dir() and is_local(path):
        raise ScoreModelError(f"score model {path!r}: no such directory (a local path; hub ids look like org/name)")
    meta = read_dimension(path) if local.is_dir() else {}
    try:
        if not local.is_dir() and _is_safe_rlhf(AutoConfig.from_pretrained(path).to_dict()):
            # A hub safe-rlhf model (beaver-7b-v1.0-*): its score_head would not map onto HF's `score` and would
            # silently load as a random head, so fetch the files and convert them instead.
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(path))
        tokenizer = AutoTokenizer.from_pretrained(local if local.is_dir() else path)
        if local.is_dir() and (local / "config.json").is_file() and \
                _is_safe_rlhf(json.loads((local / "config.json").read_text())):
            model, extra = safe_rlhf_to_hf(local)
            meta = {**extra, **meta}
        else:
            config = AutoConfig.from_pretrained(path)
            check_score_config(config, path)
            model, info = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1,
                                                                              output_loading_info=True)
            persistent = set(model.state_dict())
            missing = [k for k in info.get("missing_keys", []) if k in persistent]
            if missing:  # a head transformers would initialise at random: scores would be noise
                raise ScoreModelError(
                    f"score model {path!r} lacks {sorted(missing)[:5]} in its checkpoint, so its head would be random "
                    f"(is it a causal LM rather than a trained score model?). Train one with reward_models/train.py "
                    f"or convert safe-rlhf weights with reward_models/convert_safe_rlhf.py")
    except ScoreModelError:
        raise
    except Exception as err:
        raise ScoreModelError(f"cannot load score model {path!r} as AutoModelForSequenceClassification: {err}") from err
    ensure_pad_token(tokenizer, f"tokenizer of {path!r}")
    check_tokenizer_fits(tokenizer, model.config, f"score model {path!r}")
    model.config.pad_token_id = tokenizer.pad_token_id
    if dtype is not None:
        model.to(dtype)
    model.requires_grad_(False).eval()
    return model, tokenizer, meta


def end_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) score at each sequence's last non-pad token (HF's sequence-classification pooling)."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()   # (B,)


@torch.no_grad()
def score_texts(model: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 16,
                max_length: int = 1024, offset: float = 0.0, device: Optional[torch.device] = None) -> torch.Tensor:
    """(N,) end scores of full conversation texts, tokenised with the score model's own tokenizer."""
    device = device or next(model.parameters()).device
    enc, _ = encode(tokenizer, texts, max_length, what="scored")
    out = []
    order = sorted(range(len(texts)), key=lambda i: len(enc["input_ids"][i]))  # length-sorted: less padding
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad_batch([enc["input_ids"][i] for i in idx], tokenizer.pad_token_id)    # (b, L)
        out.append((idx, end_scores(model, ids.to(device), mask.to(device)).cpu()))
    scores = torch.empty(len(texts))
    for idx, s in out:
        scores[idx] = s
    return scores + offset                                                                    # (N,)


def score_pairs(model_path: str, data: str, kind: str | None = None, schema: str = "auto",
                column_map: dict[str, str] | None = None, batch_size: int = 16, max_length: int = 1024,
                template: str = DEFAULT_TEMPLATE, max_samples: int | None = None, device: str | None = None,
                dtype: str = "auto") -> dict[str, float]:
    """Mean scores and pairwise (and, for costs, sign) accuracy of a score model on a preference file
    (``python reward_models/score.py``)."""
    from rlhf.data.chat import format_conversation
    from rlhf.data.datasets import load_rows
    from rlhf.data.pairs import SCHEMA_COLUMNS, build_pairs
    from rlhf.runtime.engine import placement

    dev, dt = placement(device, dtype)
    model, tokenizer, meta = load_score_model(model_path, dtype=dt)
    model.to(dev)
    kind = kind or meta.get("kind", "reward")
    rows = load_rows(data, max_samples=max_samples)
    if schema == "auto":
        cols = set(rows.column_names) | set((column_map or {}).keys())
        schema = "pku_saferlhf" if set(SCHEMA_COLUMNS["pku_saferlhf"]) <= cols else "generic"
    pairs = build_pairs(rows, schema, kind, data, column_map)
    texts = [format_conversation(tokenizer, p.prompt, r, template) for p in pairs for r in (p.better, p.worse)]
    scores = score_texts(model, tokenizer, texts, batch_size, max_length, offset=meta.get("score_offset", 0.0))
    better, worse = scores[0::2], scores[1::2]                                               # (N,), (N,)
    margin = better - worse if kind == "reward" else worse - better
    out = {"kind": kind, "n_pairs": len(pairs), "accuracy": (margin > 0).float().mean().item(),
           "mean_score_better": better.mean().item(), "mean_score_worse": worse.mean().item(),
           "mean_score": scores.mean().item(), "std_score": scores.std().item()}
    signs = torch.tensor([[p.better_sign, p.worse_sign] for p in pairs]).reshape(-1).float()  # (2N,)
    if kind == "cost" and (signs != 0).any():
        known = signs != 0
        out["sign_accuracy"] = ((signs[known] * scores[known]) > 0).float().mean().item()
    return out
