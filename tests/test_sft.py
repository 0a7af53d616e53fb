import json

import pytest
from transformers import AutoModelForCausalLM

from rlhf.config import ConfigError, load_config
from rlhf.data import DataError
from rlhf.train_sft import SFTConfig, train


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
