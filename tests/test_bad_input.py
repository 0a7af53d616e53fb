"""Bad input and faults are refused with a clear message before compute, and nothing is lost (issue 18).

Every test here asserts both the message (it names the field or file and the fix) and, where a model could have
loaded, that none did: ``no_model_loads`` makes any weight load fail the test.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rlhf.core.config import ConfigError, load_config
from rlhf.data.datasets import DataError, load_rows
from rlhf.runtime.checkpoint import ResumeError
from rlhf.runtime.paths import PathCheckError
from rlhf.runtime.run import RunDirError
from rlhf.training.ppo_config import PPOConfig
from tests.test_ppo import load, make_config, metrics

# ---------------------------------------------------------------- config values and files

@pytest.mark.parametrize("override,match", [
    (["--ppo.max_grad_norm", "-1"], r"'ppo.max_grad_norm': must be > 0"),
    (["--ppo.weight_decay", "-0.1"], r"'ppo.weight_decay': must be >= 0"),
    (["--ppo.warmup_steps", "-5"], r"'ppo.warmup_steps': must be >= 0"),
    (["--ppo.actor_lr", "-1"], r"config field 'ppo.actor_lr'"),             # named once, never 'ppo.ppo.actor_lr'
    (["--objectives", "[{name: h, model: m, max_length: 0}]", "--adapter.pref_dim", "1"],
     r"'objectives\[0\].max_length': must be >= 1"),
])
def test_out_of_range_values_name_the_field(world, tmp_path, override, match):
    with pytest.raises(ConfigError, match=match) as err:
        load(make_config(world, tmp_path / "r"), *override)
    assert "ppo.ppo." not in str(err.value)


def test_yaml_errors_name_file_and_line_and_1e_minus_3_is_a_number(world, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("actor_model: x\nppo:\n  actor_lr: [1e-3\n  kl_coef: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml' line \d+, column \d+: YAML syntax error"):
        load_config(PPOConfig, bad)
    path = make_config(world, tmp_path / "r")
    cfg = yaml.safe_load(path.read_text())
    text = yaml.safe_dump(cfg).replace("actor_lr: 0.005", "actor_lr: 1e-3")
    assert "actor_lr: 1e-3" in text
    path.write_text(text)
    assert yaml.safe_load(text)["ppo"]["actor_lr"] == "1e-3"  # what PyYAML hands us
    assert load_config(PPOConfig, path).ppo.actor_lr == pytest.approx(1e-3)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"actor_model: x\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin.yaml' line 2 is not UTF-8"):
        load_config(PPOConfig, latin)


def test_data_files_non_utf8_and_nulls_name_file_and_row(tmp_path):
    from rlhf.data.pairs import build_pairs

    f = tmp_path / "p.jsonl"
    f.write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"p.jsonl' line 2 is not UTF-8"):
        load_rows(str(f))
    f.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n" +
                 json.dumps({"prompt": "q", "chosen": None, "rejected": "b"}) + "\n")
    with pytest.raises(DataError, match=r"row 1: column 'chosen' is null"):
        build_pairs(load_rows(str(f)), "generic", "reward", str(f))


def test_eval_grid_and_prompt_count_are_checked(world, tmp_path):
    from rlhf.evaluation.evaluate import parse_args

    with pytest.raises(ConfigError, match="'grid': must divide 1"):
        parse_args(["--run", "x", "--grid", "0"])
    with pytest.raises(ConfigError, match="'n_prompts': must be >= 1"):
        parse_args(["--run", "x", "--n_prompts", "0"])
    bad = tmp_path / "prefs.json"
    bad.write_text("[[0.5, 0.5],")
    from rlhf.adapter.svd_lora import PreferenceError
    from rlhf.evaluation.front import load_preferences

    with pytest.raises(PreferenceError, match="cannot read preferences file .*prefs.json"):
        load_preferences(parse_args(["--run", "x", "--preferences", str(bad)]), 2)


# ---------------------------------------------------------------- paths, before anything loads

def test_dry_run_and_trainers_check_every_path(world, tmp_path, no_model_loads):
    from rlhf.training.ppo import PPOTrainer, dry_run

    cases = [({"actor_model": str(tmp_path / "no_actor")}, r"'actor_model': no such directory"),
             ({"tokenizer": str(tmp_path / "no_tok")}, r"'tokenizer': no such directory"),
             ({"prompts": {"path": str(tmp_path / "none.jsonl")}}, r"'prompts.path': no such file"),
             ({"ds_config": str(tmp_path / "none.json")}, r"'ds_config': no such file"),
             ({"objectives": [{"name": "helpful", "model": str(world / "rm"), "kind": "reward"},
                              {"name": "harmless", "model": "./no_cm", "kind": "cost"}]},
              r"'objectives\[1\].model': no such directory")]
    for over, match in cases:
        cfg = load(make_config(world, tmp_path / "r", **over))
        with pytest.raises(PathCheckError, match=match):
            dry_run(cfg)
        with pytest.raises(PathCheckError, match=match):
            PPOTrainer(cfg)
    assert not (tmp_path / "r").exists(), "a refused run must create nothing"


def test_tokenizer_larger_than_the_embeddings_is_refused(world, tmp_path, no_model_loads):
    from hhbench.tiny import build_tokenizer
    from rlhf.training.ppo import PPOTrainer

    big = build_tokenizer(vocab_size=1000)
    big.save_pretrained(tmp_path / "big_tok")
    with pytest.raises(DataError, match=r"tokenizer has \d+ tokens but the model's embeddings hold 400"):
        PPOTrainer(load(make_config(world, tmp_path / "r", tokenizer=str(tmp_path / "big_tok"))))


def test_empty_prompts_warn_with_a_count_and_all_empty_is_refused(world, tmp_path, no_model_loads):
    from rlhf.training.ppo import PPOTrainer

    rows = [{"prompt": p} for p in ["How do I bake bread?", "", "   ", "How do I cook rice?"] * 4]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from rlhf.data.datasets import prompt_column

    with pytest.warns(UserWarning, match="dropped 8 of 16 empty prompts"):
        values, rows = prompt_column(load_rows(str(tmp_path / "p.jsonl")), "prompt", "p")
    assert len(values) == 8 and rows == [i for i in range(16) if i % 4 in (0, 3)]  # the file's row numbers
    (tmp_path / "e.jsonl").write_text("".join(json.dumps({"prompt": ""}) + "\n" for _ in range(8)))
    with pytest.raises(DataError, match="every one of its 8 prompts in column 'prompt' is empty"):
        PPOTrainer(load(make_config(world, tmp_path / "r", prompts={"path": str(tmp_path / "e.jsonl")})))


# ---------------------------------------------------------------- resume checks, before any model loads

def _fake_checkpoint(out: Path, config: dict, world_size: int, step: int = 2) -> None:
    ckpt = out / "checkpoints" / f"step_{step:08d}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": step, "world_size": world_size, "config": config}))
    (out / "checkpoints" / "latest").write_text(ckpt.name)


def test_resume_refuses_changed_fields_and_another_process_count_before_loading(world, tmp_path, no_model_loads):
    from rlhf.core.config import to_dict
    from rlhf.training.ppo import PPOTrainer

    path = make_config(world, tmp_path / "r", resume_from="latest")
    saved = to_dict(load(path))
    saved["ppo"]["kl_coef"] = 0.05
    _fake_checkpoint(tmp_path / "r", saved, world_size=1)
    with pytest.raises(ResumeError, match=r"ppo.kl_coef: 0.05 -> 0.02"):
        PPOTrainer(load(path))
    shutil.rmtree(tmp_path / "r")
    _fake_checkpoint(tmp_path / "r", to_dict(load(path)), world_size=2)
    with pytest.raises(ResumeError, match="written by 2 processes but 1 were launched"):
        PPOTrainer(load(path))


def test_a_torn_last_metrics_line_does_not_block_resume(world, tmp_path):
    from rlhf.training.ppo import PPOTrainer

    PPOTrainer(load(make_config(world, tmp_path / "r", total_steps=2, save_every=1))).train()
    m = tmp_path / "r" / "metrics.jsonl"
    m.write_text(m.read_text() + '{"step": 3, "train/kl": 0.1')            # a kill in the middle of a write
    with pytest.warns(UserWarning, match="dropped a torn last line"):
        PPOTrainer(load(make_config(world, tmp_path / "r", total_steps=3, save_every=1, resume_from="latest"))).train()
    assert [r["step"] for r in metrics(tmp_path / "r")] == [1, 2, 3]


# ---------------------------------------------------------------- the disk fills up

def test_full_disk_keeps_every_complete_checkpoint(world, tmp_path, monkeypatch):
    import collections
    import errno

    import rlhf.runtime.run as run_mod
    from rlhf.training.ppo import PPOTrainer

    tr = PPOTrainer(load(make_config(world, tmp_path / "r", total_steps=3, save_every=1, keep_last=1)))
    tr.train_step()
    first = tr.save_checkpoint()
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(run_mod.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    tr.train_step()
    with pytest.raises(RunDirError, match=r"no space left on .*checkpoints: need ~[\d.]+ MB"):
        tr.save_checkpoint()
    monkeypatch.undo()
    # the disk fills during the write itself: the partial directory goes, the complete one stays
    import deepspeed

    def fail(self, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(deepspeed.DeepSpeedEngine, "save_checkpoint", fail)
    with pytest.raises(RunDirError, match="no space left on"):
        tr.save_checkpoint()
    ckpts = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert ckpts == sorted([first.name, "latest"]), ckpts
    assert (first / "trainer_state.json").is_file()
    tr.run.close()


# ---------------------------------------------------------------- non-finite scores, named by scorer

def test_nan_scores_in_evaluation_and_comparison_name_the_scorer(world, tmp_path):
    from rlhf.evaluation.compare import compare
    from rlhf.evaluation.front import _FiniteMeans
    from rlhf.evaluation.pareto import FrontError

    mean = _FiniteMeans()
    values = np.array([[1.0, 2.0], [np.nan, 1.0], [3.0, 4.0]])
    np.testing.assert_allclose(mean(values, "oracle", [0.5, 0.5]), [2.0, 3.0])
    with pytest.warns(UserWarning, match=r"scorer 'oracle' gave NaN/inf scores for 1 of 3"):
        mean.warn()
    with pytest.raises(FrontError, match=r"scorer 'oracle' gave NaN/inf scores for every response"):
        mean(np.full((2, 2), np.inf), "oracle", [1.0, 0.0])
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"method": "a", "objectives": ["x", "y"], "preferences": [[1, 0], [0, 1]],
                             "points": [[1, 1], [float("nan"), 2]]}))
    with pytest.raises(FrontError, match=r"a.json \(a\): points \[1\] scored by the score models are NaN/inf"):
        compare([str(a)], str(tmp_path / "c"))


def test_ppo_nan_stop_names_the_objective_and_its_source(world, tmp_path):
    from rlhf.scoring.scorer import NonFiniteScoresError
    from rlhf.training.ppo import PPOTrainer

    nan = {"name": "harmless", "function": "tests.test_objective_sources:nan_scores", "kind": "cost"}
    tr = PPOTrainer(load(make_config(world, tmp_path / "nan", max_bad_batches=1,
                                     objectives=[{"name": "helpful", "model": str(world / "rm")}, nan])))
    with pytest.warns(UserWarning), pytest.raises(
            NonFiniteScoresError, match=r"from \['harmless \(function tests.test_objective_sources:nan_scores\)'\]"):
        tr.train()


# ---------------------------------------------------------------- an adapter on other base weights

def test_adapter_on_a_base_with_other_weights_is_refused(world, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf.adapter.svd_lora import AdapterMismatchError, SVDLoRAConfig, apply_svd_lora, load_adapter, save_adapter

    model = apply_svd_lora(AutoModelForCausalLM.from_pretrained(world / "base"), SVDLoRAConfig(rank=2, pref_dim=2))
    save_adapter(model, tmp_path / "adapter")
    load_adapter(AutoModelForCausalLM.from_pretrained(world / "base"), tmp_path / "adapter")          # same base
    load_adapter(AutoModelForCausalLM.from_pretrained(world / "base", dtype=torch.bfloat16), tmp_path / "adapter")
    other = AutoModelForCausalLM.from_pretrained(world / "base")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)
    with pytest.raises(AdapterMismatchError, match="trained on other base weights"):
        load_adapter(other, tmp_path / "adapter")


# ---------------------------------------------------------------- W&B offline fallback

def test_wandb_online_without_key_or_network_falls_back_to_offline(tmp_path, monkeypatch):
    from rlhf.runtime.tracking import Tracker, WandbConfig, resolve_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))                 # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    with pytest.warns(UserWarning, match="no W&B API key is configured"):
        assert resolve_mode(WandbConfig(mode="online")) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")   # nothing listens there
    with pytest.warns(UserWarning, match="unreachable: logging offline"):
        t = Tracker(WandbConfig(mode="online", project="p"), {"a": 1}, str(tmp_path / "w"), active=True)
    t.log({"x": 1.0}, 1)
    t.finish()
    assert list((tmp_path / "w").glob("wandb/offline-run-*"))
