"""Run directories end to end through the real ``deepspeed`` launcher: a finished run is never destroyed by a fresh
command, ``--overwrite`` moves it aside, and a run that is still writing (e.g. the worker of a ``kill -9``-ed
launcher) holds its lock and is named by pid (issue 18)."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import clean_env
from tests.test_ppo import make_config, metrics

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def launch(script, cfg, port, *extra, wait=True):
    cmd = ["deepspeed", "--num_gpus", "1", "--master_port", str(port), script, "--config", str(cfg), *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600)


def digest(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_fresh_ppo_run_never_destroys_a_finished_one(world, tmp_path):
    out = tmp_path / "ppo"
    cfg = make_config(world, out, total_steps=2, save_every=1)
    done = launch("rlhf/train_ppo.py", cfg, 29811)
    assert done.returncode == 0, done.stderr[-3000:]
    before_policy, before_metrics = digest(out / "policy"), (out / "metrics.jsonl").read_bytes()
    again = launch("rlhf/train_ppo.py", cfg, 29812, "--total_steps", "1")
    assert again.returncode != 0
    assert "already holds a run" in again.stderr and "--resume_from latest" in again.stderr \
        and "--overwrite" in again.stderr, again.stderr[-2000:]
    assert digest(out / "policy") == before_policy and (out / "metrics.jsonl").read_bytes() == before_metrics
    moved = launch("rlhf/train_ppo.py", cfg, 29813, "--total_steps", "1", "--overwrite")
    assert moved.returncode == 0, moved.stderr[-3000:]
    aside = list(tmp_path.glob("ppo.replaced-*"))
    assert len(aside) == 1 and digest(aside[0] / "policy") == before_policy
    assert [r["step"] for r in metrics(out)] == [1] and [r["step"] for r in metrics(aside[0])] == [1, 2]


def test_a_fresh_reward_model_run_never_destroys_a_finished_one(world, tmp_path):
    import yaml

    out = tmp_path / "rm"
    cfg = tmp_path / "rm.yaml"
    cfg.write_text(yaml.safe_dump({"model_name_or_path": str(world / "base"), "output_dir": str(out),
                                   "data": {"path": str(world / "prompts.jsonl"), "schema": "pku_saferlhf",
                                            "max_length": 64}, "max_steps": 2, "micro_batch_size": 8,
                                   "precision": "fp32", "eval_every": 100, "wandb": {"mode": "disabled"}}))
    done = launch("reward_models/train.py", cfg, 29821)
    assert done.returncode == 0, done.stderr[-3000:]
    model = (out / "model.safetensors").read_bytes()
    again = launch("reward_models/train.py", cfg, 29822)
    assert again.returncode != 0 and "--overwrite" in again.stderr, again.stderr[-2000:]
    assert (out / "model.safetensors").read_bytes() == model
    assert launch("reward_models/train.py", cfg, 29823, "--overwrite").returncode == 0
    (aside,) = tmp_path.glob("rm.replaced-*")
    assert (aside / "model.safetensors").read_bytes() == model and (out / "dimension.json").is_file()


def _wait_gone(pid, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_launcher_stops_its_worker_with_a_whole_checkpoint(world, tmp_path, sig):
    """A plain kill (or kill -9) of the `deepspeed` command, as a user stops a run: DeepSpeed forwards neither, so the
    worker notices its launcher is gone, checkpoints the step it finished, releases the run and exits; the resume
    continues from that step and says how the previous process ended."""
    from rlhf.runtime.checkpoint import verify

    out = tmp_path / f"live_{sig.name}"
    cfg = make_config(world, out, total_steps=10_000, save_every=5_000)  # no checkpoint but the one at the stop
    proc = launch("rlhf/train_ppo.py", cfg, 29831 if sig == signal.SIGTERM else 29834, wait=False)
    worker = None
    try:
        deadline = time.time() + 300
        while not (out / "metrics.jsonl").is_file() or len(metrics(out)) < 3:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:] if proc.stderr else ""
            time.sleep(0.2)
        worker = json.loads((out / ".lock").read_text())["pid"]
        assert worker != proc.pid  # the lock names the worker, not the launcher
        proc.send_signal(sig)
        proc.wait()
        assert _wait_gone(worker, 90), "the worker kept training after its launcher was killed"
        latest = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
        assert verify(latest) is None
        step = int(latest.name.split("_")[1])
        assert metrics(out)[-1]["step"] == step  # it stopped where it checkpointed: nothing trained is lost
        lock = json.loads((out / ".lock").read_text())
        assert lock["step"] == step and "launcher" in lock["stopped"]
        resumed = launch("rlhf/train_ppo.py", cfg, 29833 if sig == signal.SIGTERM else 29835, "--resume_from",
                         "latest", "--total_steps", str(step + 1))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"stopped at step {step}" in resumed.stdout and "ended without finishing" not in resumed.stdout
        assert metrics(out)[-1]["step"] == step + 1
    finally:
        for pid in (worker,):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def launch2(script, cfg, port, *extra):
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), script, "--config", str(cfg), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300)


def test_a_refusal_on_rank_0_reaches_every_rank(world, tmp_path):
    """A checkpoint whose trainer_state.json is torn (one written before manifests): rank 0 finds it while preparing
    the run; every rank must leave with that message instead of waiting forever in the broadcast."""
    out = tmp_path / "two"
    cfg = make_config(world, out, total_steps=1, save_every=1, rollout_batch_size=2, mini_batch_size=2,
                      micro_batch_size=1)
    done = launch2("rlhf/train_ppo.py", cfg, 29841)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = out / "checkpoints" / "step_00000001"
    (ckpt / "manifest.json").unlink()
    state = ckpt / "trainer_state.json"
    state.write_text(state.read_text()[:40])
    again = launch2("rlhf/train_ppo.py", cfg, 29842, "--resume_from", "latest", "--total_steps", "2")
    assert again.returncode != 0
    assert again.stderr.count("trainer_state.json is not valid JSON (truncated?)") >= 2, again.stderr[-3000:]

