"""Atomic, resumable PPO checkpoints: adapter + critic + optimiser/scheduler (DeepSpeed's own, frozen weights
excluded), per-rank RNG states, and the trainer's state (step, data position, normaliser, ideal point, config).
The offline trainers (``rlhf/training/loop.py``) write the same format with their own trainer state.

Written to ``checkpoints/.tmp-step_N`` and renamed to ``checkpoints/step_N`` only when complete, so a crash never
leaves a checkpoint that looks whole; ``checkpoints/latest`` names the newest; the oldest beyond ``keep_last`` go.
Its last file is ``manifest.json`` (every other file's size and SHA-256): a resume verifies it first, so a checkpoint
that a full disk, a crash or a copy truncated or zeroed is never loaded. ``--resume_from latest`` falls back to the
newest checkpoint that verifies (with a warning naming the broken one); a named checkpoint that fails is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from rlhf.core.errors import InputError
from rlhf.runtime import engine

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
# Fields that may change between a run and its resumption without changing what is being trained.
RESUMABLE_FIELDS = {"resume_from", "total_steps", "dry_run", "wandb", "save_every", "keep_last", "log_every",
                    "sample_every", "max_bad_batches", "output_dir", "eval_every", "overwrite",
                    "world_size",  # world_size: the process-count check says it clearer
                    # where the decoding engine runs and how long to wait for it, not what it computes: a resume may
                    # reach a restarted server at another address
                    "generation.backend.url", "generation.backend.python", "generation.backend.startup_timeout_s",
                    "generation.backend.request_timeout_s", "generation.backend.concurrency"}


class ResumeError(InputError, ValueError):
    """A checkpoint is missing or belongs to a different run configuration."""


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(root: Path, step: int, engines: dict[str, Any], trainer_state: dict[str, Any], keep_last: int,
         extra: Optional[Callable[[Path], None]] = None) -> Path:
    """Collective: every rank calls it. ``extra(tmp)`` (rank 0) adds files before the checkpoint is made complete.
    Returns the final checkpoint directory; a failed write removes its partial directory and prunes nothing."""
    root = Path(root)
    tmp, final = root / f".tmp-step_{step:08d}", root / f"step_{step:08d}"
    if engine.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    engine.barrier()
    try:
        for tag, eng in engines.items():
            eng.save_checkpoint(str(tmp), tag=tag, save_latest=False, exclude_frozen_parameters=True)
        torch.save(rng_state(), tmp / f"rng_rank{engine.rank()}.pt")
        engine.barrier()
        if engine.is_main():
            if extra is not None:
                extra(tmp)
            (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
    except OSError:
        if engine.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if engine.is_main():
        write_manifest(tmp)  # last: its presence and its checksums say the checkpoint is whole
        aside = root / f".old-{final.name}"
        if final.exists():  # a step written again (a resumed run passing it): the old one goes only once replaced
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(tmp, final)
        latest_tmp = root / ".latest.tmp"
        latest_tmp.write_text(final.name)
        os.replace(latest_tmp, root / "latest")
        shutil.rmtree(aside, ignore_errors=True)
        for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    engine.barrier()
    return final


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path) -> None:
    """``manifest.json``: every file of ``directory`` (its relative path, size and SHA-256), written atomically."""
    files = {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name not in (MANIFEST, MANIFEST + ".tmp")}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": files}, indent=1))
    os.replace(tmp, directory / MANIFEST)


def verify(directory: Path) -> Optional[str]:
    """None when the checkpoint in ``directory`` is whole; else what is wrong with it, naming the file. A checkpoint
    written before manifests (none inside) is checked for its state file only."""
    directory = Path(directory)
    if not directory.is_dir():
        return "no such directory"
    manifest = directory / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            return f"{MANIFEST} is not valid JSON (truncated?)"
        for name, meta in files.items():
            f = directory / name
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != meta["bytes"]:
                return f"{name} has {f.stat().st_size} bytes, the manifest says {meta['bytes']} (truncated?)"
            if _sha256(f) != meta["sha256"]:
                return f"{name} does not match its checksum (corrupted or zeroed)"
        return None
    if not (directory / STATE_FILE).is_file():
        return f"{STATE_FILE} and {MANIFEST} are missing (an incomplete checkpoint)"
    try:
        json.loads((directory / STATE_FILE).read_text())
    except ValueError:
        return f"{STATE_FILE} is not valid JSON (truncated?)"
    return None


def _step_of(path: Path) -> int:
    try:
        return int(path.name.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def resolve(resume_from: str, root: Path) -> Path:
    """'latest' -> the newest checkpoint under ``root`` (this run's checkpoint directory) that verifies, warning about
    each newer one that does not; any other value: that directory, refused unless it verifies."""
    if resume_from != "latest":
        path = Path(resume_from)
        problem = verify(path)
        if problem:
            raise ResumeError(f"checkpoint {path} cannot be resumed: {problem}. Resume another one "
                              f"({path.parent}/step_*) or --resume_from latest (the newest that verifies)")
        return path
    root = Path(root)
    pointer = root / "latest"
    named = root / pointer.read_text().strip() if pointer.is_file() else None
    candidates = sorted({p for p in root.glob("step_*") if p.is_dir()} | ({named} if named else set()),
                        key=_step_of, reverse=True)
    if not candidates:
        raise ResumeError(f"--resume_from latest: no checkpoint in {root} (nothing was saved yet)")
    broken = []
    for path in candidates:
        problem = verify(path)
        if problem is None:
            for bad, why in broken:
                warnings.warn(f"checkpoint {bad} is broken ({why}); resuming from {path} instead (the newest that "
                              f"verifies)")
            return path
        broken.append((path, problem))
    raise ResumeError("--resume_from latest: no checkpoint in " + str(root) + " verifies: " +
                      "; ".join(f"{p.name}: {why}" for p, why in broken) + ". Start a new run (--overwrite keeps the "
                      "old one aside)")


_MISSING = "<absent>"


def config_diff(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """Every leaf that differs, by its dotted name: ``ppo.kl_coef: 0.05 -> 0.1``, ``objectives[1].model: a -> b``."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for k in sorted(set(saved) | set(now)):
            if f"{prefix}{k}" in RESUMABLE_FIELDS:
                continue
            out += config_diff(saved.get(k, _MISSING), now.get(k, _MISSING), f"{prefix}{k}.")
        return out
    if isinstance(saved, list) and isinstance(now, list) and len(saved) == len(now):
        return [d for i, (a, b) in enumerate(zip(saved, now)) for d in config_diff(a, b, f"{prefix.rstrip('.')}[{i}].")]
    return [] if saved == now else [f"{prefix.rstrip('.')}: {saved!r} -> {now!r}"]


def check_compatible(saved_config: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Refuse to resume a different experiment; name every field that differs (checkpoint -> now)."""
    diffs = config_diff(saved_config, config)
    if diffs:
        raise ResumeError(f"checkpoint {path} was written by a different config; refusing to resume. "
                          f"Fields that differ (checkpoint -> now): " + "; ".join(diffs) +
                          ". Resume with the checkpoint's values, or start a new run in another output_dir")


def resolve_compatible(resume_from: str, root: Path, config: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to resume and its trainer state, refused if a different config wrote it. Reads only JSON, so
    trainers call it before loading any model."""
    path = resolve(resume_from, root)
    saved = json.loads((path / STATE_FILE).read_text())  # verified above
    check_compatible(saved["config"], config, path)
    return path, saved


def load(path: Path, engines: dict[str, Any]) -> dict[str, Any]:
    """Restore engines (adapter, critic, optimiser, scheduler) and this rank's RNG; return the trainer state."""
    state = json.loads((path / STATE_FILE).read_text())
    for tag, eng in engines.items():
        eng.load_checkpoint(str(path), tag=tag, load_module_strict=False)
    rng_file = path / f"rng_rank{engine.rank()}.pt"
    if not rng_file.is_file():
        raise ResumeError(f"{path} has no RNG state for rank {engine.rank()}: it was written with fewer processes")
    set_rng_state(torch.load(rng_file, weights_only=False))
    return state
