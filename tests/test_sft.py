import json

import pytest
from transformers import AutoModelForCausalLM

from rlhf.core.config import ConfigError, load_config
from rlhf.data.datasets import DataError
from rlhf.training.sft import SFTConfig, train


def _data(tmp_path, n=64):
    rows = [{"prompt": f"How do I bake bread {i % 4}?", "response": "Mix flour and water, then bake it.",
             "short": "Bake it.", "long": "Mix flour, water, yeast and salt, knead, rest, then bake it hot."}
            for i in range(n)]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_plain_sft_loss_falls_and_saves_hf_model(world, tmp_path):
    cfg = load_config(SFTConfig, None, ["--model_name_or_path", str(world / "base"), "--output_dir",
                                        str(tmp_path / "sft"), "--data.path", str(_data(tmp_path)),
                                        "--precision", "fp32", "--lr", "1e-2", "--max_steps", "40",
                                        "--micro_batch_size", "8", "--eval_every", "100", "--log_every", "5",
                                        "--wandb.mode", "disabled"])
    out = train(cfg)
    summary = json.loads((out / "sft_summary.json").read_text())
    assert summary["final_eval"]["eval/loss/sft"] < 0.5 * summary["initial_eval"]["eval/loss/sft"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_sft_config_and_data_errors(world, tmp_path):
    base = ["--model_name_or_path", "m", "--data.path", "x.jsonl"]
    with pytest.raises(ConfigError, match="has 1 columns but 2 objectives"):
        load_config(SFTConfig, None, base + ["--objectives", "[a, b]"])
    with pytest.raises(ConfigError, match="plain SFT .* takes one objective"):
        load_config(SFTConfig, None, base + ["--objectives", "[a, b]", "--data.response_columns", "[r, s]"])
    cfg = load_config(SFTConfig, None, ["--model_name_or_path", str(world / "base"), "--data.path",
                                        str(_data(tmp_path)), "--data.response_columns", "[answer]",
                                        "--wandb.mode", "disabled", "--output_dir", str(tmp_path / "o")])
    with pytest.raises(DataError, match=r"lacks column\(s\) \['answer'\]"):
        train(cfg)


def _panacea_sft(world, tmp_path, *extra, objectives="[short, long]"):
    return load_config(SFTConfig, None, [
        "--model_name_or_path", str(world / "base"), "--output_dir", str(tmp_path / "psft"),
        "--data.path", str(_data(tmp_path)), "--objectives", objectives, "--data.response_columns",
        "[short, long]", "--adapter.rank", "4", "--adapter.pref_dim", "2", "--precision", "fp32", "--lr", "1e-2",
        "--max_steps", "4", "--micro_batch_size", "8", "--eval_every", "2", "--log_every", "1",
        "--wandb.mode", "disabled", *extra])


def record_forward_and_loss_preferences(monkeypatch):
    """(lambda in each training forward of an adapted layer, lambda each aggregated loss was weighted with)."""
    import torch

    from rlhf.adapter.svd_lora import SVDLoRALayer
    from rlhf.algo.aggregation import Aggregation

    forwards, losses = [], []
    layer_forward, aggregate = SVDLoRALayer.forward, Aggregation.loss

    def forward(self, x):
        if torch.is_grad_enabled():  # training forwards (evaluation runs under no_grad)
            pref = self.preference
            forwards.append((len(losses), None if pref is None else pref.detach().cpu().clone()))
        return layer_forward(self, x)

    def call(self, values, lam, *a, **kw):
        losses.append(lam.detach().cpu().clone())
        return aggregate(self, values, lam, *a, **kw)

    monkeypatch.setattr(SVDLoRALayer, "forward", forward)
    monkeypatch.setattr(Aggregation, "loss", call)
    return forwards, losses


def assert_forwards_run_under_their_loss_lambda(forwards, losses):
    import torch

    assert losses and forwards
    for k, lam in enumerate(losses):  # forwards recorded before loss k was aggregated belong to step k
        mine = [p for step, p in forwards if step == k]
        assert mine, f"step {k} had no training forward"
        for p in mine:
            assert p is not None, (k, lam)
            if p.shape == lam.shape:
                assert torch.equal(p.float(), lam.float()), (k, p, lam)
            else:  # several sequences per row (DPO): each sequence runs under its own row's lambda
                assert lam.dim() == 2 and all(any(torch.equal(r, l) for l in lam.float()) for r in p.float()), (k, p)


@pytest.mark.parametrize("aggregation", ["ls", "tche"])
def test_panacea_sft_forward_runs_under_the_lambda_that_weights_its_loss(world, tmp_path, monkeypatch, aggregation):
    forwards, losses = record_forward_and_loss_preferences(monkeypatch)
    train(_panacea_sft(world, tmp_path, "--aggregation", aggregation, "--preference.vertex_prob", "0.0"))
    assert len(losses) == 4 and len({tuple(l.tolist()) for l in losses}) == 4  # a new lambda every step
    assert_forwards_run_under_their_loss_lambda(forwards, losses)


def test_panacea_sft_resumes_from_a_checkpoint(world, tmp_path):
    out = train(_panacea_sft(world, tmp_path, "--save_every", "2"))
    first = json.loads((out / "sft_summary.json").read_text())
    assert (tmp_path / "psft" / "checkpoints" / "latest").read_text() == "step_00000002"
    resumed = train(_panacea_sft(world, tmp_path, "--save_every", "2", "--resume_from", "latest"))
    again = json.loads((resumed / "sft_summary.json").read_text())
    assert again["resumed_from"] and again["steps"] == 4
    assert again["losses"] == pytest.approx(first["losses"], rel=1e-5)


def test_panacea_sft_takes_one_lambda_per_sample(world, tmp_path, monkeypatch):
    forwards, losses = record_forward_and_loss_preferences(monkeypatch)
    out = train(_panacea_sft(world, tmp_path, "--preference.per", "sample", "--preference.vertex_prob", "0.0"))
    assert len(losses) == 4 and all(l.shape == (8, 2) and len({tuple(r) for r in l.tolist()}) == 8 for l in losses)
    assert_forwards_run_under_their_loss_lambda(forwards, losses)
    assert json.loads((out / "sft_summary.json").read_text())["steps"] == 4


def test_panacea_sft_evaluates_its_front_while_training(world, tmp_path):
    from tests.test_front_training import fronts

    objectives = json.dumps([{"name": "short", "model": str(world / "rm"), "kind": "reward"},
                             {"name": "long", "model": str(world / "cm"), "kind": "cost"}])
    train(_panacea_sft(world, tmp_path, "--save_every", "2", "--eval.every", "2", "--eval.prompts",
                       str(world / "prompts.jsonl"), "--eval.grid", "0.5", "--eval.n_prompts", "4",
                       "--eval.max_new_tokens", "6", objectives=objectives))
    assert [r["step"] for r in fronts(tmp_path / "psft")] == [0, 2, 4]
    ckpt = tmp_path / "psft" / "checkpoints" / "step_00000002"
    assert (ckpt / "policy" / "run.json").is_file() and (ckpt / "eval.yaml").is_file()


def test_plain_sft_refuses_a_front_during_training(world, tmp_path):
    with pytest.raises(ConfigError, match=r"'eval.every': evaluates the front over lambda, which needs the adapter"):
        load_config(SFTConfig, None, ["--model_name_or_path", str(world / "base"), "--output_dir", str(tmp_path / "s"),
                                      "--data.path", str(_data(tmp_path)), "--eval.every", "2",
                                      "--eval.prompts", str(world / "prompts.jsonl")])
