"""Test-only helpers (the shared on-disk worlds are the library's: ``hhbench/fixtures.py``)."""
import os
import sys
from pathlib import Path


def clean_env():
    """Environment for launching a trainer subprocess: this interpreter's bin first, and none of the
    torch.distributed variables that an in-process test run left behind (a reused MASTER_PORT collides)."""
    drop = {"MASTER_PORT", "MASTER_ADDR", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env
