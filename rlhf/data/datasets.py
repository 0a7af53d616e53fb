"""Dataset loading and prompt formatting shared by every trainer and scorer.

A dataset is a hub name (``PKU-Alignment/PKU-SafeRLHF``) or a local json/jsonl/parquet/csv file, loaded through
``datasets``. Prompts are formatted with the tokenizer's chat template when it has one, otherwise with a plain
template, so that the policy, the reward models and evaluation all see the same conversation layout.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

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
        if local.suffix in (".json", ".jsonl"):
            _check_json(local)
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


def _check_json(path: Path) -> None:
    """A JSON or JSON Lines file that does not parse is refused naming its line (datasets' own error names none)."""
    import json

    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip()[:1] in ("[", "{"):
        try:
            json.loads(text)
            return
        except ValueError:
            pass  # not one JSON document: JSON Lines, checked line by line below
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise DataError(f"data file {str(path)!r} line {i} is not valid JSON ({getattr(err, 'msg', err)}, column "
                            f"{getattr(err, 'colno', '?')}): {line[:80]!r}; fix or remove that line") from None
        if not isinstance(row, dict):
            raise DataError(f"data file {str(path)!r} line {i} is a JSON {type(row).__name__}, not an object of "
                            f"columns: {line[:80]!r}")


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


def _prompt_problem(value: Any) -> Optional[str]:
    """Why a prompt cell cannot be a prompt ("empty" for the kinds of empty), or None when it is a string or a chat."""
    if value is None:
        return "empty"
    if isinstance(value, str):
        return "empty" if not value.strip() else None
    if isinstance(value, (list, tuple)):
        if not value:
            return "empty"
        if not all(isinstance(m, Mapping) and isinstance(m.get("content"), str) and "role" in m for m in value):
            return (f"a list that is not a chat (a chat is a list of {{role, content}} messages, the content a "
                    f"string); got {str(value)[:80]!r}")
        if not any(m["content"].strip() for m in value):
            return "empty"
        return None
    return f"a {type(value).__name__} ({str(value)[:40]!r}); a prompt is a string or a chat"


def prompt_column(rows: Any, column: str, path: str) -> tuple[list[Any], list[int]]:
    """(the prompts of a dataset column, their row numbers in the file). Every kind of empty prompt (null, blank,
    an empty chat, a chat of blank messages) is dropped with one counted warning (all empty is an error); a value that
    is neither a string nor a chat is refused naming its row."""
    values = list(rows[column])
    empty = []
    for i, v in enumerate(values):
        problem = _prompt_problem(v)
        if problem == "empty":
            empty.append(i)
        elif problem:
            raise DataError(f"dataset {path!r} row {i}: column {column!r} holds {problem}")
    if len(empty) == len(values):
        raise DataError(f"dataset {path!r}: every one of its {len(values)} prompts in column {column!r} is empty")
    if empty:
        warnings.warn(f"dataset {path!r}: dropped {len(empty)} of {len(values)} empty prompts in column {column!r} "
                      f"(rows {empty[:5]}{'...' if len(empty) > 5 else ''})")
    drop = set(empty)
    kept = [i for i in range(len(values)) if i not in drop]
    return [values[i] for i in kept], kept


def other_columns(rows: Any, column: str, kept: Sequence[int]) -> dict[str, list]:
    """The dataset's columns other than the prompt ``column``, at rows ``kept``: what a function or URL objective
    gets with each prompt (e.g. a reference answer), column -> one value per kept row."""
    return {c: [values[i] for i in kept] for c in rows.column_names if c != column for values in [list(rows[c])]}


def take_columns(columns: dict[str, Sequence], idx: Sequence[int]) -> dict[str, list]:
    """``columns`` (column -> values) at rows ``idx``."""
    return {k: [v[i] for i in idx] for k, v in columns.items()}


class PromptStream:
    """This rank's prompts, step by step: a seeded permutation per epoch, rank-strided, resumable. ``columns``: the
    dataset's other columns (column -> one value per prompt), handed out with their prompts."""

    def __init__(self, texts: list[str], raw: list[Any], batch: int, seed: int, rank: int, world: int,
                 columns: Optional[dict[str, list]] = None) -> None:
        if len(texts) < batch * world:
            raise DataError(f"{len(texts)} prompts are fewer than one step needs (rollout_batch_size {batch} x "
                            f"{world} processes); add prompts or lower rollout_batch_size")
        self.texts, self.raw, self.batch, self.seed, self.rank, self.world = texts, raw, batch, seed, rank, world
        self.columns = columns or {}
        self.epoch, self.pos = 0, 0

    def next(self) -> tuple[list[str], list[Any], dict[str, list]]:
        """(formatted prompt texts, raw prompts, their other columns) of this rank's next batch."""
        if self.pos + self.batch * self.world > len(self.texts):
            self.epoch, self.pos = self.epoch + 1, 0
        order = np.random.default_rng(self.seed + self.epoch).permutation(len(self.texts))
        start = self.pos + self.rank * self.batch
        idx = order[start:start + self.batch].tolist()
        self.pos += self.batch * self.world
        return [self.texts[i] for i in idx], [self.raw[i] for i in idx], take_columns(self.columns, idx)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
