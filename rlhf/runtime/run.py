"""The one run layer every trainer uses (PPO, DPO, SFT, reward and cost models): the run's config fields, its
directory, seeding, atomic checkpoints, resume checks and metrics. A trainer builds a ``Run`` before it loads
anything, so every refusal below costs no compute and loses nothing.

A run directory (``output_dir``) holds:

    .lock              flock-ed by rank 0 for the run's lifetime (released by the kernel on any exit, kill -9
                       included); it records the holder's pid, host, start time and command
    metrics.jsonl      one JSON line per logged step (W&B gets the same numbers)
    checkpoints/       step_N/ (atomic: written as .tmp-step_N and renamed when complete) and ``latest``
    wandb/             W&B's files (offline runs sync from here)
    <the result>       policy/ (adapter runs: PPO, DPO, Panacea-SFT) or the HF model files themselves (plain SFT,
                       score models: the directory loads with ``from_pretrained``)

A fresh run refuses a non-empty ``output_dir`` (it would destroy what is there) unless told ``--resume_from
latest`` (continue it) or ``--overwrite`` (move it aside to ``<output_dir>.replaced-<time>``, never delete it).
A second process on a running directory is refused with the holder's pid.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import shutil
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal, Optional

import numpy as np
import torch

from rlhf.core.config import check, doc_field, to_dict
from rlhf.core.errors import InputError
from rlhf.core.registry import check_plugins
from rlhf.runtime import checkpoint, engine
from rlhf.runtime.paths import check_config_paths
from rlhf.runtime.stop import RunStopped, StopWatch
from rlhf.runtime.tracking import Tracker, WandbConfig

LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
# What a directory may hold and still take a fresh run: the lock and W&B files of a start that failed before
# training, and leftovers of an interrupted result write. Anything else is another run's (or the user's) data.
IGNORED_ENTRIES = {".DS_Store", LOCK_FILE, "wandb", ".result.tmp", ".policy.tmp"}


class RunDirError(InputError, RuntimeError):
    """The run directory holds another run, is in use, or cannot hold what the run must write."""


@dataclass(frozen=True)
class RunConfig:
    """The fields every training run has, whatever it trains (one declaration, shared by every trainer)."""

    PATH_FIELDS: ClassVar[dict[str, str]] = {'ds_config': 'file'}

    output_dir: str = doc_field("runs/run", "run directory: checkpoints/, metrics.jsonl, wandb/ and the result")
    ds_config: str = doc_field("ds_configs/zero2.json", "DeepSpeed JSON; its \"auto\" keys are filled from this config")
    precision: Literal["fp32", "bf16", "fp16"] = doc_field("bf16", "training precision")
    seed: int = doc_field(42, "seed of data order, lambda draws, sampling and init (rank r uses seed + r)")
    world_size: Optional[int] = doc_field(None, "expected process count: checked at launch, used by --dry_run")
    save_every: int = doc_field(100, "checkpoint every N steps into output_dir/checkpoints (0: only at the end)")
    keep_last: int = doc_field(2, "complete checkpoints kept (older ones are deleted after a newer one is complete)")
    log_every: int = doc_field(1, "log metrics every N steps (metrics.jsonl and W&B)")
    resume_from: Optional[str] = doc_field(None, "continue a run: 'latest' in output_dir/checkpoints, or a directory")
    overwrite: bool = doc_field(False, "start fresh although output_dir holds a run: the old run is moved aside to "
                                       "<output_dir>.replaced-<time>, never deleted")
    dry_run: bool = doc_field(False, "validate the config, paths and DeepSpeed settings; load no model")
    wandb: WandbConfig = doc_field(factory=WandbConfig, doc="W&B logging")

    def __post_init__(self) -> None:
        getattr(super(), "__post_init__", lambda: None)()  # the other config blocks mixed into a trainer's config
        check(bool(self.output_dir), "output_dir", "is required: the run directory")
        check(self.save_every >= 0, "save_every", f"must be >= 0 (0: only the final checkpoint), got {self.save_every}")
        check(self.keep_last >= 1, "keep_last", f"must be >= 1, got {self.keep_last}")
        check(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        check(self.world_size is None or self.world_size >= 1, "world_size", "must be >= 1 or null")
        check(not (self.overwrite and self.resume_from), "overwrite",
              "cannot be combined with resume_from: either continue the run in output_dir or move it aside")
        check_plugins(self)  # every plug-in block's own rules against the whole config (so --dry_run runs them)


def seed_everything(seed: int, rank: int) -> None:
    """Python, NumPy and torch RNGs of this rank (rank r draws from seed + r; shared draws use explicit seeds)."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


# ----------------------------------------------------------------------------------------------------------
# The directory: lock, guard against clobbering, metrics
# ----------------------------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(lock_path: Path) -> dict[str, Any]:
    try:
        return json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


class RunLock:
    """An exclusive ``flock`` on ``<dir>/.lock`` held for the run's lifetime (rank 0 only)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self.fd: Optional[int] = None

    def acquire(self) -> dict[str, Any]:
        """Take the lock; return what the previous holder recorded ({} if none). Raise if a process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(self._in_use_message()) from None
        previous = _holder(self.path)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return previous

    def _in_use_message(self) -> str:
        h = _holder(self.path)
        pid, host = h.get("pid"), h.get("host")
        who = f"pid {pid} on {host}, started {h.get('started')}: {h.get('command')!r}" if pid else "another process"
        msg = f"run directory {self.path.parent} is in use by {who}. Two processes must not write one run."
        if pid and host == socket.gethostname() and int(pid) == os.getpid():
            msg += (" It is this very process: an earlier trainer built here still holds the run (it was never "
                    "trained or closed); call its run's close(), or restart the interpreter.")
        elif pid and host == socket.gethostname() and not _pid_alive(int(pid)):
            msg += (f" Pid {pid} is no longer running, so a process it started still holds the lock (see "
                    f"`fuser {self.path}`); stop that process, or if none is left, delete {self.path}.")
        elif pid and host == socket.gethostname():
            msg += (f" Stop it with `kill {pid}` (it checkpoints and exits) or wait for it, then resume with "
                    f"--resume_from latest.")
        return msg

    def mark_ended(self, **how: Any) -> None:
        if self.fd is not None:
            info = {**_holder(self.path), **how}
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, json.dumps(info).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in IGNORED_ENTRIES) if directory.is_dir() else []


def move_aside(directory: Path) -> Path:
    """Rename a finished run out of the way (same filesystem: instant, nothing copied, nothing deleted)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = directory.with_name(f"{directory.name}.replaced-{stamp}")
    n = 1
    while target.exists():
        target = directory.with_name(f"{directory.name}.replaced-{stamp}-{n}")
        n += 1
    os.replace(directory, target)
    return target


def data_fingerprint(path: str, rows: Any) -> str:
    """What a dataset holds, to tell on resume whether it changed: a local file's (or directory's) SHA-256, or the
    hub dataset's own fingerprint."""
    import hashlib

    local = Path(path)
    if local.is_file() or local.is_dir():
        h = hashlib.sha256()
        for f in ([local] if local.is_file() else sorted(q for q in local.rglob("*") if q.is_file())):
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        return "sha256:" + h.hexdigest()
    return "datasets:" + str(getattr(rows, "_fingerprint", len(rows)))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn last line (a kill mid-write) is dropped with a warning, never fatal."""
    if not path.is_file():
        return []
    rows, lines = [], path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: dropped a torn last line (the run was killed while writing it)")
                continue
            raise RunDirError(f"{path} line {i + 1} is not JSON: {line[:80]!r}") from None
    return rows


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------

class Run:
    """One training run: built first (before any model loads), closed last.

    On construction: distributed init, the process-count check, the directory guard and lock (rank 0), the resume
    checks against the checkpoint's JSON (config fields and process count), and seeding.
    """

    def __init__(self, cfg: RunConfig, trainer: str) -> None:
        """``cfg``: a trainer's config; the run reads its ``RunConfig`` fields, checks every path it names, and keeps
        the whole of it (as a dict) for the resume check and the checkpoints."""
        self.cfg, self.trainer = cfg, trainer
        check_config_paths(cfg)  # every model, tokenizer, dataset and DeepSpeed file named must exist
        engine.init_distributed()
        self.rank, self.world = engine.rank(), engine.world_size()
        if cfg.world_size is not None and cfg.world_size != self.world:
            raise RunDirError(f"config world_size={cfg.world_size} but the launcher started {self.world} processes")
        self.dir = Path(cfg.output_dir)
        self.checkpoints = self.dir / CHECKPOINTS
        self.config_dict = to_dict(cfg)
        self.lock = RunLock(self.dir)
        outcome = self._prepare() if engine.is_main() else None
        outcome = engine.broadcast_object(outcome)
        if outcome["error"]:
            self.lock.release()
            raise outcome["error_type"](outcome["error"])
        self.resume_path: Optional[Path] = Path(outcome["resume"]) if outcome["resume"] else None
        self.resume_step: Optional[int] = outcome.get("resume_step")
        self.resume_data: dict[str, str] = outcome.get("resume_data") or {}
        self.data: dict[str, str] = {}  # config field -> fingerprint of the data it names (kept in checkpoints)
        seed_everything(cfg.seed, self.rank)
        self.tracker: Optional[Tracker] = None
        self.stop = StopWatch()  # SIGTERM / SIGINT, or the deepspeed launcher gone: stop at the next step boundary

    # ------------------------------------------------------------------ directory
    def _prepare(self) -> dict[str, Any]:
        """Rank 0: guard the directory, take the lock, check a resume. Returns an outcome every rank acts on."""
        out: dict[str, Any] = {"error": None, "error_type": RunDirError, "resume": None}
        try:
            if self.cfg.resume_from:
                # JSON only, before the lock: a refused resume creates nothing (not even output_dir)
                path, state = checkpoint.resolve_compatible(self.cfg.resume_from, self.checkpoints, self.config_dict)
                saved_world = state.get("world_size")
                if saved_world is not None and saved_world != self.world:
                    raise checkpoint.ResumeError(
                        f"{path} was written by {saved_world} processes but {self.world} were launched: data shards "
                        f"and optimiser partitions differ, so launch {saved_world} processes to resume it")
                self._lock()
                out["resume"], out["resume_step"] = str(path), state.get("step")
                out["resume_data"] = state.get("data") or {}
                return out
            entries = _entries(self.dir)
            if entries and not self.cfg.overwrite:
                what = "a run" if {CHECKPOINTS, METRICS_FILE, LOCK_FILE} & set(entries) else "files"
                raise RunDirError(
                    f"output_dir {self.dir} already holds {what} ({', '.join(entries[:6])}"
                    f"{', ...' if len(entries) > 6 else ''}); a fresh run would destroy it. Continue it with "
                    f"--resume_from latest, or pass --overwrite to move it aside to {self.dir}.replaced-<time> "
                    f"(nothing is deleted), or choose another --output_dir")
            if self.dir.is_dir() and self.cfg.overwrite:
                here = Path.cwd().resolve()
                if self.dir.resolve() in (here, *here.parents):
                    raise RunDirError(f"--overwrite with output_dir {self.cfg.output_dir!r}: that is the current "
                                      f"directory or one that holds it ({here}); moving it aside would move your "
                                      f"working directory. Give the run a directory of its own")
                probe = RunLock(self.dir)
                probe.acquire()  # refuses while a process still writes there, and holds the old run until it moved
                try:
                    moved = move_aside(self.dir)
                    self._lock()  # the new directory's lock, taken before the old one is let go: no window
                finally:
                    probe.release()
                print(f"[run] --overwrite: moved the previous contents of {self.dir} to {moved}", flush=True)
            else:
                self._lock()
        except Exception as err:  # every rank must leave with the same message, whatever went wrong here
            known = isinstance(err, (RunDirError, checkpoint.ResumeError))
            out["error"] = str(err) if known else f"{self.dir}: {type(err).__name__}: {err}"
            out["error_type"] = type(err) if known else RunDirError
        return out

    def _lock(self) -> None:
        previous = self.lock.acquire()
        pid = previous.get("pid")
        if pid and self.cfg.resume_from:
            if previous.get("finished"):
                print(f"[run] {self.dir}: the previous process (pid {pid}) finished the run at step "
                      f"{previous.get('step')} on {previous.get('finished')}; resuming continues it", flush=True)
            elif previous.get("stopped"):
                print(f"[run] {self.dir}: the previous process (pid {pid}) stopped at step {previous.get('step')} "
                      f"({previous.get('stopped')}); resuming", flush=True)
            else:
                print(f"[run] {self.dir}: the previous process (pid {pid}, started {previous.get('started')}) ended "
                      f"without finishing; resuming", flush=True)

    def refuse_if_finished(self, total_steps: int, field: str) -> None:
        """On resume, refuse a checkpoint already at ``total_steps`` (what ``field`` gives): the run is finished."""
        if self.resume_step is not None and self.resume_step >= total_steps:
            raise checkpoint.ResumeError(
                f"{self.resume_path} is at step {self.resume_step} and {field} gives {total_steps} steps: the run is "
                f"finished, there is nothing to resume. Raise {field} to train it further")

    def register_data(self, field: str, path: str, rows: Any) -> None:
        """Record what the data named by config field ``field`` holds; on resume, refuse it if it changed since the
        checkpoint (its stream position or shards would land on other rows). Before any model loads."""
        self.data[field] = data_fingerprint(path, rows)
        saved = self.resume_data.get(field)
        if saved is not None and saved != self.data[field]:
            raise checkpoint.ResumeError(
                f"{field} {path!r} changed since checkpoint {self.resume_path} was written ({saved[:19]}... then, "
                f"{self.data[field][:19]}... now): resuming would continue its data order on other rows. Restore "
                f"the file it trained on, or start a new run (--overwrite moves this one aside)")

    def start_tracking(self) -> Tracker:
        """W&B on rank 0, files under output_dir/wandb (falls back to offline when W&B is unreachable)."""
        self.tracker = Tracker(self.cfg.wandb, self.config_dict, str(self.dir), active=engine.is_main())
        return self.tracker

    def close(self, finished_step: Optional[int] = None, stopped: Optional[tuple[int, str]] = None) -> None:
        """Finish W&B and release the lock (idempotent). How the run ended is recorded in the lock file, so a later
        ``--resume_from latest`` says what is true: ``finished_step`` (it completed there) or ``stopped`` (step,
        reason: it stopped on request)."""
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None
        if finished_step is not None:
            self.lock.mark_ended(finished=time.strftime("%Y-%m-%d %H:%M:%S"), step=finished_step)
        elif stopped is not None:
            self.lock.mark_ended(stopped=stopped[1], step=stopped[0])
        self.lock.release()
        self.stop.restore()

    def stop_requested(self) -> Optional[str]:
        """Collective, once per step: why any rank was asked to stop (the same answer on every rank), or None."""
        local = self.stop.requested()
        flag = engine.all_reduce_sum(torch.tensor([1.0 if local else 0.0], device=engine.device()))
        if flag.item() == 0:
            return None
        return next(r for r in engine.gather_objects(local) if r)

    def stopped(self, step: int, reason: str) -> RunStopped:
        """After the checkpoint at ``step``: close the run (recording why it stopped) and give the exception the
        trainer raises."""
        self.close(stopped=(step, reason))
        return RunStopped(f"stopped at step {step} ({reason}); checkpoint {self.checkpoints / 'latest'} holds it: "
                          f"continue with --resume_from latest")

    @contextlib.contextmanager
    def close_on_error(self) -> Iterator["Run"]:
        """Around a trainer's set-up: any failure releases the lock and W&B before it propagates, so the next attempt
        (in this process too, e.g. a notebook) finds the directory free."""
        try:
            yield self
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ metrics
    @property
    def metrics_path(self) -> Path:
        return self.dir / METRICS_FILE

    def log(self, metrics: dict[str, Any], step: int, jsonl_extra: Optional[dict[str, Any]] = None) -> None:
        """One line in metrics.jsonl (``step`` first) and the same numbers to W&B (rank 0); ``jsonl_extra`` (e.g. a
        whole front) goes to metrics.jsonl only."""
        if self.tracker is not None:
            self.tracker.log({k: v for k, v in metrics.items() if k != "step"}, step)
        if engine.is_main():
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps({"step": step, **{k: v for k, v in metrics.items() if k != "step"},
                                    **(jsonl_extra or {})}) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """On resume: drop the lines logged after the checkpoint (they will be logged again) and a torn last line."""
        if engine.is_main() and self.metrics_path.is_file():
            keep = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= step]
            tmp = self.metrics_path.with_name(METRICS_FILE + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
            os.replace(tmp, self.metrics_path)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, engines: dict[str, Any], trainer_state: dict[str, Any],
                        policy: Optional[Callable[[Path], None]] = None, front: Any = None) -> Path:
        """Collective. Refuses up front (keeping every complete checkpoint) when the disk cannot hold one more.
        ``policy(dir)`` (e.g. ``adapter_writer``) puts the policy as evaluate.py reads it into ``CKPT/policy``, and a
        training ``front`` its settings into ``CKPT/eval.yaml``: ``evaluate.py --run CKPT --config CKPT/eval.yaml``
        then gives that step's front."""
        def extra(tmp: Path) -> None:
            if policy is not None:
                policy(tmp / "policy")
            if front is not None:
                import yaml

                (tmp / "eval.yaml").write_text(yaml.safe_dump(front.eval_yaml(), sort_keys=False))

        state = {**trainer_state, "step": step, "world_size": self.world, "trainer": self.trainer,
                 "config": self.config_dict, "data": self.data}
        problem = self._space_problem(engines) if engine.is_main() else None
        problem = engine.broadcast_object(problem)
        if problem:
            raise RunDirError(problem)
        try:
            return checkpoint.save(self.checkpoints, step, engines, state, self.cfg.keep_last, extra=extra)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise RunDirError(self._no_space(self._checkpoint_bytes(engines))) from err
            raise

    def _checkpoint_bytes(self, engines: dict[str, Any]) -> int:
        """Bytes one checkpoint takes: the newest complete one's size, else trainable params x (weights + two Adam
        moments, fp32) summed over engines."""
        latest = self.checkpoints / "latest"
        if latest.is_file():
            path = self.checkpoints / latest.read_text().strip()
            if path.is_dir():
                return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        n = sum(int(getattr(p, "ds_numel", p.numel())) for e in engines.values() for p in e.module.parameters()
                if p.requires_grad)
        return n * 4 * 3

    def _no_space(self, need: int) -> str:
        free = shutil.disk_usage(self.dir).free
        mb = lambda n: f"{n / 2**20:.1f}" if n < 10 * 2**20 else f"{n / 2**20:.0f}"  # noqa: E731
        return (f"no space left on {self.checkpoints}: need ~{mb(need)} MB for a checkpoint, {mb(free)} MB free. "
                f"Every complete checkpoint is kept; free space (or lower keep_last) and resume with --resume_from "
                f"latest")

    def _space_problem(self, engines: dict[str, Any]) -> Optional[str]:
        need = self._checkpoint_bytes(engines)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(self.checkpoints).free < int(need * 1.1):
            return self._no_space(need)
        return None

    def load_checkpoint(self, engines: dict[str, Any]) -> dict[str, Any]:
        """Restore engines and this rank's RNG from the resume checkpoint; truncate metrics.jsonl to its step."""
        assert self.resume_path is not None
        state = checkpoint.load(self.resume_path, engines)
        self.truncate_metrics(state["step"])
        if engine.is_main():
            print(f"[{self.trainer}] resumed from {self.resume_path} at step {state['step']}", flush=True)
        return state

    # ------------------------------------------------------------------ the result
    def save_result(self, write: Callable[[Path], None], subdir: Optional[str] = None,
                    marker: Optional[str] = None) -> Path:
        """Rank 0 writes the result into a temporary directory, then puts it in place; collective.

        ``subdir`` (e.g. ``policy``): the whole directory is swapped in by rename. ``None``: the files land at the top
        of output_dir (an HF model directory), ``marker`` last, after the previous marker is removed first, so a
        crash mid-way never leaves a result that looks complete.
        """
        target = self.dir / subdir if subdir else self.dir
        if engine.is_main():
            tmp = self.dir / f".{subdir or 'result'}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            write(tmp)
            if subdir:
                old = self.dir / f".{subdir}.old"
                shutil.rmtree(old, ignore_errors=True)
                if target.exists():
                    os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                names = sorted(p.name for p in tmp.iterdir())
                if marker and (self.dir / marker).exists():
                    (self.dir / marker).unlink()
                for name in sorted(names, key=lambda n: n == marker):
                    dest = self.dir / name
                    if dest.is_dir():
                        shutil.rmtree(dest)
                    os.replace(tmp / name, dest)
                tmp.rmdir()
        engine.barrier()
        return target
