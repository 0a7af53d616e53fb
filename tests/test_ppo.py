"""PPO end to end on tiny models: in-process (world size 1) and through the deepspeed launcher."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hhbench.fixtures import write_ppo_config as make_config
from rlhf.adapter.svd_lora import read_adapter_config
from rlhf.core.config import ConfigError, load_config
from rlhf.runtime import checkpoint
from rlhf.runtime.paths import PathCheckError
from rlhf.scoring.scorer import NonFiniteScoresError
from rlhf.training.ppo_config import PPOConfig
from tests.helpers import clean_env, run_ppo_cli

ROOT = Path(__file__).resolve().parents[1]


def load(path, *overrides):
    return load_config(PPOConfig, path, list(overrides))


def metrics(out):
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- in process

def test_only_adapter_and_critic_change_and_lambda_is_held(world, tmp_path, monkeypatch):
    import rlhf.training.ppo as trainer_mod

    seen = {"rollout": [], "update": []}
    real_gen, real_loss = trainer_mod.generate_rollout, trainer_mod.policy_loss

    def spy_gen(actor, tok, texts, raw, lam, **kw):
        seen["rollout"].append(lam.clone())
        return real_gen(actor, tok, texts, raw, lam, **kw)

    def spy_loss(logprobs, old, adv, kl_adv, mask, lam, *a, **kw):
        seen["update"].append(lam.clone())
        from rlhf.adapter.svd_lora import get_preference
        seen.setdefault("adapter", []).append(get_preference(tr.actor.module).clone())
        return real_loss(logprobs, old, adv, kl_adv, mask, lam, *a, **kw)

    monkeypatch.setattr(trainer_mod, "generate_rollout", spy_gen)
    monkeypatch.setattr(trainer_mod, "policy_loss", spy_loss)
    cfg = load(make_config(world, tmp_path / "run", ppo={"ppo_epochs": 2}))
    tr = trainer_mod.PPOTrainer(cfg)
    before = {n: p.detach().clone() for n, p in tr.actor.module.named_parameters()}
    critic_before = {n: p.detach().clone() for n, p in tr.critic.module.named_parameters()}
    tr.train()
    changed = {n for n, p in tr.actor.module.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:5]
    assert any(n.endswith("lora_s") for n in changed) and any(n.endswith("lora_sigma") for n in changed)
    c_changed = {n for n, p in tr.critic.module.named_parameters() if not torch.equal(p, critic_before[n])}
    assert c_changed and all("lora_" in n or n.startswith("value_head") for n in c_changed)
    # lambda of each step: the same at generation, in every update micro-batch (2 epochs x 2), and in the adapter
    assert len(seen["rollout"]) == 3 and len(seen["update"]) == 3 * 2 * 2
    for step, lam in enumerate(seen["rollout"]):
        for upd in seen["update"][4 * step:4 * step + 4] + seen["adapter"][4 * step:4 * step + 4]:
            torch.testing.assert_close(upd.cpu(), lam.cpu().expand_as(upd))  # LS weights: lambda on every row
    m = metrics(tmp_path / "run")
    assert [r["step"] for r in m] == [1, 2, 3]
    for key in ("train/score/helpful", "train/return/harmless", "train/value_loss/helpful", "train/kl",
                "train/policy_loss", "train/clipfrac", "train/approx_kl", "train/entropy", "train/response_length",
                "train/lambda/harmless", "time/generate", "time/score", "time/update", "perf/generate_tokens_per_s"):
        assert key in m[0], key
    final = tmp_path / "run" / "policy"
    adapter_cfg, meta = read_adapter_config(final)
    assert adapter_cfg.pref_dim == 2 and (final / "tokenizer.json").is_file() and (final / "critic").is_dir()


def test_tche_and_per_sample_preferences_and_ptx_run(world, tmp_path):
    from rlhf.training.ppo import PPOTrainer

    (tmp_path / "sft.jsonl").write_text("".join(json.dumps({"text": f"How do I cook rice? Boil it {i}."}) + "\n"
                                                for i in range(8)))
    cfg = load(make_config(world, tmp_path / "tche", aggregation="tche", total_steps=2,
                           preference={"per": "sample"}, ptx={"path": str(tmp_path / "sft.jsonl"), "coef": 0.5}))
    PPOTrainer(cfg).train()
    m = metrics(tmp_path / "tche")
    assert "train/ideal/helpful" in m[-1] and "train/ptx_loss" in m[-1]


def test_nan_scores_skip_then_abort_without_checkpoint(world, tmp_path, monkeypatch):
    import rlhf.training.ppo as trainer_mod

    cfg = load(make_config(world, tmp_path / "nan", max_bad_batches=2, save_every=1))
    tr = trainer_mod.PPOTrainer(cfg)
    monkeypatch.setattr(tr.scorer, "raw", lambda p, r, columns=None: torch.full((len(p), 2), float("nan")))
    with pytest.warns(UserWarning, match="NaN/inf scores"):
        with pytest.raises(NonFiniteScoresError, match="2 consecutive batches"):
            tr.train()
    assert not (tmp_path / "nan" / "checkpoints").exists()


def test_resume_refuses_a_different_config(world, tmp_path):
    from rlhf.training.ppo import PPOTrainer

    PPOTrainer(load(make_config(world, tmp_path / "a", total_steps=1))).train()
    other = load(make_config(world, tmp_path / "a", total_steps=2, aggregation="tche", resume_from="latest"))
    with pytest.raises(checkpoint.ResumeError, match=r"aggregation.name: 'ls' -> 'tche'"):
        PPOTrainer(other)
    with pytest.raises(checkpoint.ResumeError, match="no checkpoint"):
        PPOTrainer(load(make_config(world, tmp_path / "fresh", resume_from="latest")))


# ---------------------------------------------------------------- bad input

def test_config_errors(world, tmp_path):
    path = make_config(world, tmp_path / "bad")
    with pytest.raises(ConfigError, match=r"adapter.pref_dim.*is 3 but 2 objectives"):
        load(path, "--adapter.pref_dim", "3")
    with pytest.raises(ConfigError, match="'aggregation.name': unknown aggregation 'max'; must be one of"):
        load(path, "--aggregation", "max")
    with pytest.raises(ConfigError, match="preference.value.*sum to 1"):
        load(path, "--preference.name", "fixed", "--preference.value", "[0.5, 0.6]")
    with pytest.raises(ConfigError, match="preference.value.*has 3 entries"):
        load(path, "--preference.name", "fixed", "--preference.value", "[0.2, 0.2, 0.6]")
    with pytest.raises(ConfigError, match="micro_batch_size.*must divide"):
        load(path, "--micro_batch_size", "3")


def test_data_and_model_errors(world, tmp_path):
    from rlhf.data.datasets import DataError
    from rlhf.training.ppo import PPOTrainer

    with pytest.raises(DataError, match=r"lacks column\(s\) \['question'\].*prompts.prompt_column"):
        PPOTrainer(load(make_config(world, tmp_path / "x", prompts={"prompt_column": "question"})))
    with pytest.raises(PathCheckError, match=r"'objectives\[0\].model': no such directory"):
        PPOTrainer(load(make_config(world, tmp_path / "y", objectives=[
            {"name": "helpful", "model": str(tmp_path / "nope"), "kind": "reward"},
            {"name": "harmless", "model": str(world / "cm"), "kind": "cost"}])))


def test_paper_config_dry_run():
    proc = subprocess.run([sys.executable, "rlhf/train_ppo.py", "--config", "configs/ppo_paper_hh.yaml", "--dry_run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert info["dry_run"] == "ok" and info["world_size"] == 8 and info["zero_stage"] == 3
    assert info["prompts_per_step"] == 128 and info["train_batch_size"] == 8 * 8
    bad = subprocess.run([sys.executable, "rlhf/train_ppo.py", "--config", "configs/ppo_paper_hh.yaml", "--dry_run",
                          "--micro_batch_size", "5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "micro_batch_size" in bad.stderr


# ---------------------------------------------------------------- launcher and kill/resume

def _env():
    return clean_env()


@pytest.mark.slow
@pytest.mark.parametrize("stage,procs", [(2, 1), (3, 1), (2, 2), (3, 2)])
def test_deepspeed_launcher(world, tmp_path, stage, procs):
    out = tmp_path / f"ppo_z{stage}_{procs}"
    cfg = make_config(world, out, ds_config=f"ds_configs/zero{stage}.json", total_steps=2, world_size=procs,
                      wandb={"mode": "offline"}, sample_every=1)
    cmd = ["deepspeed", "--num_gpus", str(procs), "--master_port", str(29700 + 10 * stage + procs),
           "rlhf/train_ppo.py", "--config", str(cfg)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [m["step"] for m in metrics(out)] == [1, 2]
    from safetensors.torch import load_file

    state = load_file(str(out / "policy" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_s") and v.abs().sum() > 0 for k, v in state.items())  # s moved off its 0 init
    assert (out / "checkpoints" / "latest").is_file()
    assert list(out.glob("wandb/offline-run-*")), "W&B offline run missing"


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["gae", "group"])
def test_sigkill_then_resume_logs_the_same_metrics(world, tmp_path, estimator):
    group = {"advantage": {"name": "group", "group_size": 2}} if estimator == "group" else {}

    front = {"every": 2, "prompts": str(world / "prompts.jsonl"), "grid": 0.5, "n_prompts": 2, "max_new_tokens": 4,
             "max_prompt_length": 64}  # the in-training front: its schedule and reference point survive the kill

    def run(out, extra=(), kill_after_checkpoint=False):
        run_ppo_cli(make_config(world, out, total_steps=4, save_every=2, eval=front, **group), extra,
                    kill_after_checkpoint)

    run(tmp_path / "full")
    run(tmp_path / "killed", kill_after_checkpoint=True)
    assert len([r for r in metrics(tmp_path / "killed") if "train/kl" in r]) < 4, "the kill came too late to test resumption"
    run(tmp_path / "killed", extra=["--resume_from", "latest"])

    def strip(rows):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]

    assert strip(metrics(tmp_path / "killed")) == strip(metrics(tmp_path / "full"))
    assert [r["step"] for r in metrics(tmp_path / "killed") if "eval/front" in r] == [0, 2, 4]
