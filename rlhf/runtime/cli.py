"""The command line every trainer shares: ``--config PATH [--key value ...]``, ``--help`` (every field with its
documentation) and ``--dry_run`` (validate, load no model). Bad input (any ``InputError``: a config field, a path,
data, a checkpoint, an adapter, a preference) ends the command with its message instead of a traceback."""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, Optional

from rlhf.core.config import ConfigError, describe, load_config, split_config_arg
from rlhf.core.errors import InputError
from rlhf.runtime.stop import RunStopped


def cli(cls: type, train_fn: Callable[[Any], Any], doc: str, argv: Optional[list[str]] = None, *,
        dry_run_fn: Callable[[Any], dict[str, Any]]) -> None:
    """Parse argv into config ``cls`` and ``train_fn(cfg)``, or print ``dry_run_fn(cfg)``'s checks with
    ``--dry_run``."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(doc + "\nFields (YAML keys / --overrides):\n" + describe(cls))
        return
    path, overrides = split_config_arg(argv)
    try:
        cfg = load_config(cls, path, overrides)
        if cfg.dry_run:
            print(json.dumps({"dry_run": "ok", **dry_run_fn(cfg)}, indent=2))
            return
        train_fn(cfg)
    except InputError as err:  # refused before (or instead of) compute: the message says what to do
        prefix = "config error" if isinstance(err, ConfigError) else "error"
        sys.exit(f"{prefix}: {err}")
    except RunStopped as err:  # asked to stop (a signal, or the launcher gone): a checkpoint holds where it was
        print(f"[run] {err}", file=sys.stderr, flush=True)
        sys.exit(143)
