"""The front while it trains (issue 20): evaluated on a schedule by evaluate.py's own code, logged to metrics.jsonl
and W&B, reproducible from a checkpoint, plotted from metrics.jsonl alone."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import clean_env
from tests.test_ppo import load, make_config, metrics

ROOT = Path(__file__).resolve().parents[1]


def eval_block(world, **over):
    return {"every": 2, "prompts": str(world / "prompts.jsonl"), "grid": 0.5, "n_prompts": 4, "batch_size": 2,
            "max_new_tokens": 6, "max_prompt_length": 64, **over}


def fronts(out):
    return [r for r in metrics(out) if "eval/front" in r]


def test_in_training_front_equals_evaluate_on_the_checkpoint_and_reaches_wandb(world, tmp_path):
    from rlhf.evaluation.evaluate import evaluate, parse_args
    from rlhf.training.ppo import PPOTrainer

    out = tmp_path / "ppo"
    PPOTrainer(load(make_config(world, out, total_steps=3, eval=eval_block(world),
                                eval_scorers={"oracle": "hhbench.fixtures:length_oracle"},
                                wandb={"mode": "offline"}))).train()
    evals = fronts(out)
    assert [r["step"] for r in evals] == [0, 2, 3]                       # step 0, every 2, and the last step
    f0 = evals[0]["eval/front"]
    np.testing.assert_allclose(f0["points"], [f0["base_point"]] * 3, atol=1e-6)  # the adapter starts at zero
    assert all(r["eval/front"]["reference_point"] == f0["reference_point"] for r in evals)   # fixed for the run
    for key in ("eval/score_models/hypervolume", "eval/oracle/hypervolume", "eval/score_models/inner_product",
                "eval/score_models/sparsity", "eval/oracle/spacing", "eval/oracle/vertex_helpful/helpful",
                "eval/score_models/centre/harmless", "time/eval"):
        assert key in evals[-1], key
    # evaluate.py on the step-3 checkpoint, with the settings the training wrote there, gives the same front
    ckpt = out / "checkpoints" / "step_00000003"
    assert (ckpt / "policy" / "adapter_model.safetensors").is_file() and (ckpt / "eval.yaml").is_file()
    res = evaluate(parse_args(["--run", str(ckpt), "--config", str(ckpt / "eval.yaml"), "--no_wandb",
                               "--out", str(tmp_path / "eval")]))
    last = evals[-1]["eval/front"]
    np.testing.assert_allclose(res["points"], last["points"], atol=1e-6)
    np.testing.assert_allclose(res["extra_points"]["oracle"], last["extra_points"]["oracle"], atol=1e-6)
    np.testing.assert_allclose(res["base_point"], last["base_point"], atol=1e-6)
    assert res["metrics"]["hypervolume"] == pytest.approx(evals[-1]["eval/score_models/hypervolume"], rel=1e-6)
    assert res["extra_metrics"]["oracle"]["hypervolume"] == pytest.approx(evals[-1]["eval/oracle/hypervolume"],
                                                                          rel=1e-6)
    # the offline W&B run holds the front images and tables
    (wb,) = out.glob("wandb/offline-run-*")
    assert list(wb.glob("files/media/images/eval/score_models/front_plot_*.png"))
    assert list(wb.glob("files/media/images/eval/oracle/front_plot_*.png"))
    assert list(wb.glob("files/media/table/eval/front_table_*.table.json"))
    # and metrics.jsonl alone draws the fronts over training
    proc = subprocess.run([sys.executable, "rlhf/plot_training.py", str(out), "--scorer", "oracle"], cwd=ROOT,
                          capture_output=True, text=True, env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = out / "training_fronts_oracle.png"
    assert png.is_file() and png.stat().st_size > 20_000


def test_dpo_evaluates_its_front_while_training(world, tmp_path):
    from rlhf.training.dpo import train
    from tests.test_dpo import _cfg

    cfg = _cfg(world, tmp_path, "--max_steps", "4", "--eval.every", "2", "--eval.prompts", str(world / "prompts.jsonl"),
               "--eval.grid", "0.5", "--eval.n_prompts", "4", "--eval.max_new_tokens", "6", "--save_every", "2")
    train(cfg)
    evals = fronts(tmp_path / "dpo")
    assert [r["step"] for r in evals] == [0, 2, 4]
    ckpt = tmp_path / "dpo" / "checkpoints" / "step_00000002"
    assert (ckpt / "policy" / "run.json").is_file() and (ckpt / "eval.yaml").is_file()


def test_eval_config_needs_prompts_and_score_models(world, tmp_path):
    from rlhf.core.config import ConfigError

    with pytest.raises(ConfigError, match=r"'eval.prompts': is required when eval.every > 0"):
        load(make_config(world, tmp_path / "r"), "--eval.every", "5")


def test_the_front_builds_its_decoder_once_per_run_and_tells_it_of_each_update(world, tmp_path, monkeypatch):
    """An engine behind the front (e.g. a vLLM server) starts once per run, not at every evaluation, and is told
    before each later evaluation that the model changed (so it syncs the new adapter)."""
    from rlhf.rollout import backends
    from rlhf.training.ppo import PPOTrainer

    built, updates = [], []

    class Counting(backends.HFEager):
        def after_update(self, model):
            updates.append(model)

    monkeypatch.setattr(backends.HFBackendConfig, "build", lambda self: built.append(self) or Counting())
    trainer = PPOTrainer(load(make_config(world, tmp_path / "ppo", total_steps=3, eval=eval_block(world))))
    n_rollout = len(built)  # the rollouts' own decoder
    trainer.train()
    assert [r["step"] for r in fronts(tmp_path / "ppo")] == [0, 2, 3]
    assert len(built) - n_rollout == 1                      # the front's decoder: one for three evaluations
    evaluations_after_the_first = 2
    rollout_updates = 3                                     # the rollouts' decoder hears of every optimiser step
    assert len(updates) == rollout_updates + evaluations_after_the_first
