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


def run_ppo_cli(cfg: Path, extra=(), kill_after_checkpoint: bool = False) -> None:
    """``python rlhf/train_ppo.py --config cfg [extra]`` as a user runs it: to the end (asserting success), or killed
    with SIGKILL as soon as its first checkpoint is published (``output_dir/checkpoints/latest``)."""
    import signal
    import subprocess
    import time

    import yaml

    root = Path(__file__).resolve().parents[1]
    out = Path(yaml.safe_load(Path(cfg).read_text())["output_dir"])
    cmd = [sys.executable, "rlhf/train_ppo.py", "--config", str(cfg), *extra]
    if not kill_after_checkpoint:
        proc = subprocess.run(cmd, cwd=root, env=clean_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return
    proc = subprocess.Popen(cmd, cwd=root, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "latest").is_file():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def untimed_metrics(out: Path) -> list[dict]:
    """metrics.jsonl of a run without its wall-clock fields (``time/*``, ``perf/*``): what an exact resume repeats."""
    import json

    return [{k: v for k, v in json.loads(line).items() if not k.startswith(("time/", "perf/"))}
            for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
