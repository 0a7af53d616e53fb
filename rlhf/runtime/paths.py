"""Where a model, tokenizer or dataset named in a config lives, checked before anything loads (``--dry_run`` and
every trainer): a local path must exist, and a name that is not a local path must look like a hub id. A missing
local directory is reported as such, never as a confusing hub repo-id error."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Optional

from rlhf.core.errors import InputError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")


class PathCheckError(InputError, FileNotFoundError):
    """A path named in a config does not exist (the message names the config field)."""


def is_local(path: str) -> bool:
    """True when ``path`` can only mean a local file or directory (it exists, or could not be a hub id)."""
    return (os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") > 1
            or not HUB_ID.match(path) or Path(path).suffix in {".json", ".jsonl", ".parquet", ".csv", ".yaml"})


def check_model_path(path: Optional[str], field: str, want: str = "directory") -> None:
    """A model or tokenizer: an existing local directory, or a hub id (present in the local hub cache when the hub
    is offline)."""
    if not path:
        return
    if os.path.isdir(path) or (want == "file" and os.path.isfile(path)):
        return
    if is_local(path):
        kind = "file" if want == "file" else "directory"
        raise PathCheckError(f"config field '{field}': no such {kind}: {path!r}"
                             + (" (it is a file, a model is a directory)" if os.path.isfile(path) else ""))
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        import warnings

        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "config.json"), str) and \
                not isinstance(try_to_load_from_cache(path, "tokenizer_config.json"), str):
            warnings.warn(f"config field '{field}': {path!r} is no local directory, so it is read as a hub id; it is "
                          f"not in the local hub cache and HF_HUB_OFFLINE=1, so loading it will fail here")


def check_data_path(path: Optional[str], field: str) -> None:
    """A dataset: an existing local file or directory, or a hub dataset name."""
    if not path:
        return
    if os.path.exists(path):
        return
    if is_local(path):
        raise PathCheckError(f"config field '{field}': no such file or directory: {path!r}")


def check_all(models: Iterable[tuple[Optional[str], str]] = (), data: Iterable[tuple[Optional[str], str]] = (),
              files: Iterable[tuple[Optional[str], str]] = ()) -> None:
    """Check every (path, config field) pair; raise on the first missing one."""
    for path, field in models:
        check_model_path(path, field)
    for path, field in data:
        check_data_path(path, field)
    for path, field in files:
        if path and not os.path.isfile(path):
            raise PathCheckError(f"config field '{field}': no such file: {path!r}")


def _get(cfg: object, dotted: str) -> list[tuple[Optional[str], str]]:
    """Values at a dotted field name; ``a[*].b`` walks a list."""
    head, _, rest = dotted.partition(".")
    if head.endswith("[*]"):
        items = getattr(cfg, head[:-3], ()) or ()
        return [v for i, item in enumerate(items) for v in
                [(getattr(item, rest, None), f"{head[:-3]}[{i}].{rest}")]]
    value = getattr(cfg, head, None)
    if not rest:
        return [(value, head)]
    return [(v, f"{head}.{name}") for v, name in _get(value, rest)] if value is not None else []


def _blocks(cfg: object, prefix: str = "") -> list[tuple[str, object]]:
    """Every dataclass block of a config tree with its dotted path (list items as ``name[i]``)."""
    import dataclasses

    out = [(prefix, cfg)]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        items = list(enumerate(value)) if isinstance(value, (tuple, list)) else [(None, value)]
        for i, item in items:
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                out += _blocks(item, f"{prefix}{f.name}{'' if i is None else f'[{i}]'}.")
    return out


def check_config_paths(cfg: object) -> None:
    """Every path a config names must exist: each block's ``PATH_FIELDS`` (relative dotted field -> model | data |
    file, collected over its classes) is read where the block sits in the tree (``objectives[1].model``). Run by
    ``--dry_run`` and by every trainer before it creates or loads anything."""
    found: dict[str, list] = {"model": [], "data": [], "file": []}
    for prefix, block in _blocks(cfg):
        fields: dict[str, str] = {}
        for klass in reversed(type(block).__mro__):
            fields.update(getattr(klass, "PATH_FIELDS", {}))
        for dotted, kind in fields.items():
            found[kind] += [(v, prefix + name) for v, name in _get(block, dotted)]
    check_all(models=found["model"], data=found["data"], files=found["file"])
