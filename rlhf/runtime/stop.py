"""How a run stops when asked: SIGTERM or SIGINT to a worker, or its ``deepspeed`` launcher going away.

A plain ``kill`` (or ``kill -9``) of the ``deepspeed`` command never reaches the workers: DeepSpeed's runner dies
without forwarding it, and its per-node ``deepspeed.launcher.launch`` is re-parented to init and keeps waiting on them.
So every worker watches for itself: a signal handler records SIGTERM / SIGINT (a second one stops at once), and a
watchdog thread notices when the launcher's parent (the ``deepspeed`` runner) is gone. Trainers ask ``requested()`` at
step boundaries, all ranks agree through one all-reduce (``Run.stop_requested``), and the run writes a checkpoint
and exits with ``RunStopped``; ``--resume_from latest`` continues it exactly. A save in flight always finishes first,
and a process killed outright leaves the previous checkpoint as ``latest`` (checkpoints are renamed into place whole).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional


class RunStopped(RuntimeError):
    """The run stopped on request (a signal, or its launcher gone) after writing a checkpoint to resume from."""


def _parent_of(pid: int) -> Optional[int]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the (command) is the state, then the ppid


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class StopWatch:
    """Records a stop request for this process; ``requested()`` is the reason, or None."""

    POLL_S = 1.0

    def __init__(self) -> None:
        self.reason: Optional[str] = None
        self._previous: dict[int, Any] = {}
        self._watching = True
        self._install_handlers()
        launcher = os.getppid()
        if "deepspeed.launcher.launch" in _cmdline(launcher):
            runner = _parent_of(launcher)
            threading.Thread(target=self._watch, args=(launcher, runner), name="panacea-launcher-watch",
                             daemon=True).start()

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. not inside a server's worker)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.reason is not None:  # asked twice: stop now (the lock goes with the process; latest stays whole)
            self.restore()
            os.kill(os.getpid(), signum)
            return
        self.reason = f"{signal.Signals(signum).name} received"

    def _watch(self, launcher: int, runner: Optional[int]) -> None:
        while self._watching and self.reason is None:
            time.sleep(self.POLL_S)
            if os.getppid() != launcher:
                self.reason = "its deepspeed launcher exited"
            elif runner is not None and _parent_of(launcher) != runner:
                self.reason = "its deepspeed launcher was killed (the `deepspeed` command is gone)"

    def requested(self) -> Optional[str]:
        return self.reason

    def restore(self) -> None:
        """Put back the signal handlers this process had before the run (idempotent)."""
        self._watching = False
        for sig, handler in self._previous.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, TypeError):
                pass
        self._previous = {}
