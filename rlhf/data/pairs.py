"""Preference pairs for score-model training and checking.

Two built-in schemas:
- ``pku_saferlhf``: ``prompt, response_0, response_1, better_response_id, safer_response_id,
  is_response_0_safe, is_response_1_safe``. Reward (helpful) pairs come from ``better_response_id``, cost
  (harmless) pairs from ``safer_response_id`` with the per-response safety labels.
- ``generic``: ``prompt, chosen, rejected`` (+ optional ``is_chosen_safe, is_rejected_safe`` for cost models;
  "chosen" is the safer response there).
``column_map`` renames any other dataset's columns to these names, e.g. ``{prompt: question}``.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch

from rlhf.core.config import check, doc_field
from rlhf.data.chat import DEFAULT_TEMPLATE, encode, format_conversation, pad_batch, split_chat
from rlhf.data.datasets import DataError, check_no_nulls, load_rows, require_columns

SCHEMA_COLUMNS = {
    "pku_saferlhf": ["prompt", "response_0", "response_1", "better_response_id", "safer_response_id",
                     "is_response_0_safe", "is_response_1_safe"],
    "generic": ["prompt", "chosen", "rejected"],
}


@dataclass(frozen=True)
class PreferenceDataConfig:
    """A preference dataset and how to read it."""

    path: str = doc_field("", "hub dataset name or local .json/.jsonl/.parquet/.csv file")
    split: str = doc_field("train", "split to train on (hub datasets)")
    eval_path: Optional[str] = doc_field(None, "held-out dataset (null: hold out eval_fraction of path)")
    eval_split: str = doc_field("test", "split of eval_path (hub datasets)")
    eval_fraction: float = doc_field(0.1, "fraction of pairs held out for evaluation when eval_path is null")
    schema: Literal["pku_saferlhf", "generic"] = doc_field("generic", "column layout (see module docstring)")
    column_map: dict[str, str] = doc_field(factory=dict, doc="our column name -> the dataset's column name")
    max_length: int = doc_field(512, "max tokens of prompt + response; longer ones are truncated from the left")
    prompt_template: str = doc_field(DEFAULT_TEMPLATE, "layout when the tokenizer has no chat template")
    max_samples: Optional[int] = doc_field(None, "use at most this many rows (null: all)")

    def __post_init__(self) -> None:
        check(bool(self.path), "data.path", "is required: a hub dataset name or a local data file")
        check(0.0 < self.eval_fraction < 1.0, "data.eval_fraction", f"must be in (0, 1), got {self.eval_fraction}")
        check(self.max_length >= 8, "data.max_length", f"must be >= 8 tokens, got {self.max_length}")
        check("{prompt}" in self.prompt_template, "data.prompt_template", "must contain '{prompt}'")


@dataclass(frozen=True)
class Pair:
    """One comparison. ``better`` is the more helpful (reward) or the safer (cost) response."""

    prompt: Any          # a string or a chat (list of {role, content} messages)
    better: str
    worse: str
    better_sign: int = 0  # cost models: +1 unsafe, -1 safe, 0 unknown
    worse_sign: int = 0


def _sign(is_safe: Any) -> int:
    return 0 if is_safe is None else (-1 if bool(is_safe) else 1)


def _check_ids(ds: Any, column: str, path: str) -> None:
    for i, v in enumerate(ds[column]):
        if v not in (0, 1):
            raise DataError(f"dataset {path!r} row {i}: '{column}' must be 0 or 1, got {v!r}")


def build_pairs(ds: Any, schema: str, kind: str, path: str, column_map: Optional[dict[str, str]] = None) -> list[Pair]:
    """Validate the columns and turn rows into pairs; identical responses are dropped with a counted warning."""
    if column_map:
        absent = [src for src in column_map.values() if src not in ds.column_names]
        if absent:
            raise DataError(f"column_map names {absent}, which dataset {path!r} lacks; it has {ds.column_names}")
        ds = ds.rename_columns({src: ours for ours, src in column_map.items() if src != ours})
    require_columns(ds, SCHEMA_COLUMNS[schema], path,
                    hint=f"schema '{schema}' needs {SCHEMA_COLUMNS[schema]}; map other names with data.column_map")
    text_columns = ["prompt", "response_0", "response_1"] if schema == "pku_saferlhf" else ["prompt", "chosen",
                                                                                          "rejected"]
    check_no_nulls(ds, text_columns, path)
    pairs: list[Pair] = []
    if schema == "pku_saferlhf":
        id_col = "better_response_id" if kind == "reward" else "safer_response_id"
        _check_ids(ds, id_col, path)
        for row in ds:
            b = row[id_col]
            responses = (row["response_0"], row["response_1"])
            signs = (_sign(row["is_response_0_safe"]), _sign(row["is_response_1_safe"]))
            pairs.append(Pair(row["prompt"], responses[b], responses[1 - b],
                              signs[b] if kind == "cost" else 0, signs[1 - b] if kind == "cost" else 0))
    else:
        has_safety = {"is_chosen_safe", "is_rejected_safe"} <= set(ds.column_names)
        for row in ds:
            # UltraFeedback style: chosen/rejected hold the whole chat; its last (assistant) turn is the response
            (chat, chosen), (_, rejected) = split_chat(row["chosen"]), split_chat(row["rejected"])
            pairs.append(Pair(chat or row["prompt"], chosen, rejected,
                              _sign(row["is_chosen_safe"]) if kind == "cost" and has_safety else 0,
                              _sign(row["is_rejected_safe"]) if kind == "cost" and has_safety else 0))
    kept = [p for p in pairs if p.better.strip() != p.worse.strip()]
    if len(kept) < len(pairs):
        warnings.warn(f"dropped {len(pairs) - len(kept)} of {len(pairs)} pairs in {path!r} whose two responses are "
                      f"identical (they carry no preference)")
    if not kept:
        raise DataError(f"dataset {path!r} has no usable pairs: every pair has identical responses")
    return kept


def load_pairs(cfg: PreferenceDataConfig, kind: str, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, eval) pairs from the config: a separate eval dataset, or a seeded held-out fraction."""
    train = build_pairs(load_rows(cfg.path, cfg.split, cfg.max_samples), cfg.schema, kind, cfg.path, cfg.column_map)
    if cfg.eval_path:
        held = build_pairs(load_rows(cfg.eval_path, cfg.eval_split), cfg.schema, kind, cfg.eval_path, cfg.column_map)
        return train, held
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(cfg.eval_fraction * len(train))))
    if len(train) - n_eval < 1:
        raise DataError(f"dataset {cfg.path!r} has {len(train)} pairs: too few to hold out {n_eval} for evaluation")
    return [train[i] for i in order[n_eval:]], [train[i] for i in order[:n_eval]]


class PairTensors:
    """Tokenised pairs; ``batch(indices)`` gives one padded forward batch holding better then worse responses."""

    def __init__(self, pairs: list[Pair], tokenizer: Any, max_length: int, template: str, what: str) -> None:
        texts = [format_conversation(tokenizer, p.prompt, r, template) for p in pairs for r in (p.better, p.worse)]
        enc, self.n_truncated = encode(tokenizer, texts, max_length, what=f"{what} sequences")
        self.ids = enc["input_ids"]                  # 2N lists: better_0, worse_0, better_1, ...
        self.signs = torch.tensor([[p.better_sign, p.worse_sign] for p in pairs], dtype=torch.long)  # (N, 2)
        self.pad_id = tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.signs)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        seqs = [self.ids[2 * i] for i in indices] + [self.ids[2 * i + 1] for i in indices]
        input_ids, attention_mask = pad_batch(seqs, self.pad_id)                     # (2B, L)
        signs = self.signs[indices]                                                  # (B, 2)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "better_sign": signs[:, 0], "worse_sign": signs[:, 1]}
