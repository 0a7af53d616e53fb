"""Dataset loading and prompt formatting shared by every trainer and scorer.

A dataset is a hub name (``PKU-Alignment/PKU-SafeRLHF``) or a local json/jsonl/parquet/csv file, loaded through
``datasets``. Prompts are formatted with the tokenizer's chat template when it has one, otherwise with a plain
template, so that the policy, the reward models and evaluation all see the same conversation layout.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from rlhf.core.errors import InputError

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(InputError, ValueError):
    """A dataset is missing, empty or malformed; the message says which column or row and how to fix it."""


def load_rows(path: str, split: str = "train", max_samples: Optional[int] = None) -> Any:
    """A ``datasets.Dataset`` from a local file or a hub name (hub loading honours HF_HUB_OFFLINE)."""
    import datasets

    local = Path(path)
    if local.suffix in LOCAL_FORMATS:
        if not local.is_file():
            raise DataError(f"data file {path!r} does not exist")
        if local.stat().st_size == 0:
            raise DataError(f"dataset {path!r} is empty")
        if local.suffix != ".parquet":
            _check_utf8(local)
        try:
            ds = datasets.load_dataset(LOCAL_FORMATS[local.suffix], data_files=str(local), split="train")
        except Exception as err:
            raise DataError(f"cannot read {path!r} as {LOCAL_FORMATS[local.suffix]}: {err!r}") from err
    elif local.is_dir():
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    else:
        try:
            ds = datasets.load_dataset(path, split=split)
        except Exception as err:
            raise DataError(f"cannot load dataset {path!r} (split {split!r}): {err}. Pass a hub name or a local "
                            f".json/.jsonl/.parquet/.csv file") from err
    if len(ds) == 0:
        raise DataError(f"dataset {path!r} (split {split!r}) is empty")
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    return ds


def _check_utf8(path: Path) -> None:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        row = raw[:err.start].count(b"\n") + 1
        raise DataError(f"data file {str(path)!r} line {row} is not UTF-8 (byte {raw[err.start]:#04x} at offset "
                        f"{err.start}); re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def require_columns(ds: Any, columns: Sequence[str], path: str, hint: str = "") -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"dataset {path!r} lacks column(s) {missing}; it has {ds.column_names}. {hint}".strip())


def check_no_nulls(rows: Any, columns: Sequence[str], path: str) -> None:
    """Refuse a null (missing) value in a text column, naming the row and the column."""
    for column in columns:
        for i, v in enumerate(rows[column]):
            if v is None:
                raise DataError(f"dataset {path!r} row {i}: column {column!r} is null; fill it or drop the row")


def prompt_column(rows: Any, column: str, path: str) -> list[Any]:
    """The prompts of a dataset column, empty ones dropped with a counted warning; all empty is an error."""
    values = list(rows[column])
    empty = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]
    if len(empty) == len(values):
        raise DataError(f"dataset {path!r}: every one of its {len(values)} prompts in column {column!r} is empty")
    if empty:
        warnings.warn(f"dataset {path!r}: dropped {len(empty)} of {len(values)} empty prompts in column {column!r} "
                      f"(rows {empty[:5]}{'...' if len(empty) > 5 else ''})")
        drop = set(empty)
        values = [v for i, v in enumerate(values) if i not in drop]
    return values


class PromptStream:
    """This rank's prompts, step by step: a seeded permutation per epoch, rank-strided, resumable."""

    def __init__(self, texts: list[str], raw: list[Any], batch: int, seed: int, rank: int, world: int) -> None:
        if len(texts) < batch * world:
            raise DataError(f"{len(texts)} prompts are fewer than one step needs (rollout_batch_size {batch} x "
                            f"{world} processes); add prompts or lower rollout_batch_size")
        self.texts, self.raw, self.batch, self.seed, self.rank, self.world = texts, raw, batch, seed, rank, world
        self.epoch, self.pos = 0, 0

    def next(self) -> tuple[list[str], list[Any]]:
        """(formatted prompt texts, raw prompts) of this rank's next batch."""
        if self.pos + self.batch * self.world > len(self.texts):
            self.epoch, self.pos = self.epoch + 1, 0
        order = np.random.default_rng(self.seed + self.epoch).permutation(len(self.texts))
        start = self.pos + self.rank * self.batch
        idx = order[start:start + self.batch]
        self.pos += self.batch * self.world
        return [self.texts[i] for i in idx], [self.raw[i] for i in idx]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
