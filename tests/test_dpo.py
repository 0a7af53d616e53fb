import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf.core.config import ConfigError, load_config
from rlhf.evaluation.evaluate import evaluate, parse_args
from rlhf.training.dpo import DPOConfig, dpo_losses, train


def test_dpo_loss_hand_worked():
    loss, margin = dpo_losses(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
                              torch.tensor([-2.0]), beta=0.5)
    # beta * ((-1 - -2) - (-3 - -2)) = 0.5 * 2 = 1
    torch.testing.assert_close(margin, torch.tensor([1.0]))
    torch.testing.assert_close(loss, torch.nn.functional.softplus(torch.tensor([-1.0])))


def conflicting_pairs(path, n=240, seed=5):
    """Every pair: a detailed answer (more helpful) vs a refusal (safer): the two dimensions disagree on every row,
    so only the preference input can tell the model which one to follow."""
    import random

    from hhbench.fixtures import BENIGN, HARMFUL, helpful

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        task = rng.choice(BENIGN + HARMFUL)
        detailed, refusal = helpful(task, rng), "I cannot help with that."
        first = rng.random() < 0.5
        r0, r1 = (detailed, refusal) if first else (refusal, detailed)
        rows.append({"prompt": f"How do I {task}?", "response_0": r0, "response_1": r1,
                     "better_response_id": 0 if first else 1, "safer_response_id": 1 if first else 0,
                     "is_response_0_safe": not first, "is_response_1_safe": first})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROOT = Path(__file__).resolve().parents[1]


def _cfg(world, tmp_path, *extra):
    data = tmp_path / "pairs.jsonl"
    if not data.exists():
        conflicting_pairs(data)
    objectives = json.dumps([{"name": "helpful", "model": str(world / "rm"), "kind": "reward"},
                             {"name": "harmless", "model": str(world / "cm"), "kind": "cost"}])
    return load_config(DPOConfig, None, [
        "--model_name_or_path", str(world / "base"), "--output_dir", str(tmp_path / "dpo"),
        "--objectives", objectives, "--adapter.rank", "4", "--adapter.pref_dim", "2", "--data.path", str(data),
        "--data.max_length", "96", "--data.eval_fraction", "0.15", "--precision", "fp32", "--lr", "3e-3",
        "--max_steps", "40", "--micro_batch_size", "8", "--eval_every", "100", "--log_every", "5",
        "--preference.vertex_prob", "0.5", "--wandb.mode", "disabled", *extra])


@pytest.mark.parametrize("aggregation", ["ls", "tche"])
def test_each_dimension_learns_at_its_vertex_and_run_evaluates(world, tmp_path, aggregation):
    out = train(_cfg(world, tmp_path, "--aggregation", aggregation))
    summary = json.loads((out / "dpo_summary.json").read_text())
    for name in ("helpful", "harmless"):
        key = f"eval/accuracy/{name}"
        assert summary["final_eval"][key] >= 0.8 and summary["final_eval"][key] > summary["initial_eval"][key]
    assert summary["final_loss"] < summary["first_loss"]
    if aggregation == "ls":
        front = evaluate(parse_args(
            ["--run", str(tmp_path / "dpo"), "--grid", "0.5", "--n_prompts", "4", "--max_new_tokens", "6",
             "--prompts", str(tmp_path / "pairs.jsonl"), "--no_wandb", "--out", str(tmp_path / "eval")]))
        assert np.asarray(front["points"]).shape == (3, 2)


def test_dpo_config_errors(world, tmp_path):
    with pytest.raises(ConfigError, match="name 2 dimension columns but 3 objectives"):
        load_config(DPOConfig, None, ["--model_name_or_path", "m", "--data.path", "x", "--adapter.pref_dim", "3",
                                      "--objectives", "[{name: a, model: m}, {name: b, model: m}, {name: c, model: m}]"])


def test_resume_refuses_a_changed_config_and_a_missing_checkpoint(world, tmp_path):
    from rlhf.runtime.checkpoint import ResumeError

    with pytest.raises(ResumeError, match="no checkpoint in .*dpo/checkpoints"):
        train(_cfg(world, tmp_path, "--resume_from", "latest"))
    train(_cfg(world, tmp_path, "--max_steps", "2", "--save_every", "1"))
    assert (tmp_path / "dpo" / "checkpoints" / "latest").read_text() == "step_00000001"  # none at the final step
    with pytest.raises(ResumeError, match=r"beta: 0.1 -> 0.5"):
        train(_cfg(world, tmp_path, "--max_steps", "2", "--beta", "0.5", "--resume_from", "latest"))


@pytest.mark.slow
def test_sigkill_then_resume_takes_the_same_steps(world, tmp_path):
    """A run killed after a mid-run checkpoint and resumed logs the same losses and ends with the same adapter as an
    uninterrupted run: data position, gradient accumulation, lambda draws, optimiser and scheduler all carry over."""
    import yaml
    from safetensors.torch import load_file

    from rlhf.core.config import to_dict
    from tests.helpers import clean_env

    def cmd(name, *extra):
        cfg = _cfg(world, tmp_path, "--output_dir", str(tmp_path / name), "--max_steps", "10", "--save_every", "3",
                   "--grad_accum", "2", "--log_every", "1", "--eval_every", "5", *extra)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(to_dict(cfg)))
        return [sys.executable, "rlhf/train_dpo.py", "--config", str(path)]

    full = subprocess.run(cmd("full"), cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    proc = subprocess.Popen(cmd("killed"), cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "checkpoints" / "latest").is_file():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "policy").exists(), "the kill came too late to test resumption"
    resumed = subprocess.run(cmd("killed", "--resume_from", "latest"), cwd=ROOT, env=clean_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((tmp_path / n / "policy" / "dpo_summary.json").read_text()) for n in ("full", "killed"))
    assert b["resumed_from"] and a["resumed_from"] is None
    assert len(b["losses"]) == 10
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-5)
    assert b["final_eval"] == pytest.approx(a["final_eval"])
    # The step-0 evaluation is carried in the checkpoint, not recomputed. (It is not compared with the full run's:
    # at initialisation the DPO margins are ~1e-7, so their signs vary between processes.)
    ckpts = tmp_path / "killed" / "checkpoints"
    saved = json.loads((ckpts / (ckpts / "latest").read_text() / "trainer_state.json").read_text())
    assert b["initial_eval"] == saved["result"]["initial_eval"]
    wa, wb = (load_file(str(tmp_path / n / "policy" / "adapter_model.safetensors")) for n in ("full", "killed"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per", ["batch", "sample"])
def test_dpo_forward_runs_under_the_lambda_that_weights_its_loss(world, tmp_path, monkeypatch, per):
    from tests.test_sft import assert_forwards_run_under_their_loss_lambda, record_forward_and_loss_preferences

    forwards, losses = record_forward_and_loss_preferences(monkeypatch)
    train(_cfg(world, tmp_path, "--max_steps", "3", "--preference.vertex_prob", "0.0", "--preference.per", per))
    assert len(losses) == 3 and all(l.shape == ((2,) if per == "batch" else (8, 2)) for l in losses)
    assert_forwards_run_under_their_loss_lambda(forwards, losses)
