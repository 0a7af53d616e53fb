import json
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig, LlamaModel

from hhbench.fixtures import write_pku_pairs, write_tiny_base
from rlhf.algo.score_losses import score_model_loss
from rlhf.core.config import ConfigError, load_config
from rlhf.data.chat import encode, ensure_pad_token, format_conversation
from rlhf.data.datasets import DataError, load_rows
from rlhf.data.pairs import PreferenceDataConfig, build_pairs, load_pairs
from rlhf.scoring.score_model import ScoreModelError, load_score_model, score_pairs, score_texts
from rlhf.training.reward import ScoreTrainConfig, train
from tests.helpers import clean_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return write_tiny_base(tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_pku_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl", 400)


# ---------------------------------------------------------------- losses

def test_reward_loss_hand_worked():
    better, worse = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    loss, m = score_model_loss(better, worse, "reward", reg_coef=0.5)
    sp = torch.nn.functional.softplus
    expected = (sp(torch.tensor(-2.0)) + sp(torch.tensor(1.0))) / 2 + 0.5 * (4 + 0 + 0 + 1) / 4
    torch.testing.assert_close(loss, expected)
    assert m["accuracy"].item() == 0.5


def test_cost_loss_hand_worked():
    safer, unsafer = torch.tensor([-1.0]), torch.tensor([2.0])
    loss, m = score_model_loss(safer, unsafer, "cost", reg_coef=0.0, better_sign=torch.tensor([-1]),
                               worse_sign=torch.tensor([1]))
    sp = torch.nn.functional.softplus
    # pair term -log sigmoid(c_unsafe - c_safe) + sign terms -log sigmoid(-1 * -1) and -log sigmoid(+1 * 2), averaged
    expected = sp(torch.tensor(-3.0)) + (sp(torch.tensor(-1.0)) + sp(torch.tensor(-2.0))) / 2
    torch.testing.assert_close(loss, expected)
    assert m["accuracy"].item() == 1.0 and m["sign_accuracy"].item() == 1.0


# ---------------------------------------------------------------- data

def test_pku_pairs_use_the_right_labels(pairs_file):
    rows = load_rows(str(pairs_file))
    reward = build_pairs(rows, "pku_saferlhf", "reward", "x")
    cost = build_pairs(rows, "pku_saferlhf", "cost", "x")
    r = rows[0]
    assert reward[0].better == (r["response_0"], r["response_1"])[r["better_response_id"]]
    assert cost[0].better == (r["response_0"], r["response_1"])[r["safer_response_id"]]
    safe_of = {0: r["is_response_0_safe"], 1: r["is_response_1_safe"]}
    assert cost[0].better_sign == (-1 if safe_of[r["safer_response_id"]] else 1)
    assert reward[0].better_sign == 0


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bad_data_is_reported_clearly(tmp_path):
    with pytest.raises(DataError, match=r"lacks column\(s\) \['rejected'\].*column_map"):
        build_pairs(load_rows(_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "chosen": "a"}])), "generic", "reward", "a")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_rows(str(tmp_path / "empty.jsonl"))
    row = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 2, "safer_response_id": 0,
           "is_response_0_safe": True, "is_response_1_safe": True}
    with pytest.raises(DataError, match="row 0: 'better_response_id' must be 0 or 1, got 2"):
        build_pairs(load_rows(_jsonl(tmp_path / "b.jsonl", [row])), "pku_saferlhf", "reward", "b")
    same = [{"prompt": "p", "chosen": "same", "rejected": "same"}, {"prompt": "p", "chosen": "x", "rejected": "y"}]
    with pytest.warns(UserWarning, match="dropped 1 of 2 pairs"):
        assert len(build_pairs(load_rows(_jsonl(tmp_path / "c.jsonl", same)), "generic", "reward", "c")) == 1
    with pytest.raises(DataError, match="no usable pairs"):
        build_pairs(load_rows(_jsonl(tmp_path / "d.jsonl", same[:1])), "generic", "reward", "d")
    mapped = build_pairs(load_rows(_jsonl(tmp_path / "e.jsonl", [{"q": "p", "good": "x", "bad": "y"}])), "generic",
                         "reward", "e", column_map={"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert mapped[0].better == "x"
    with pytest.raises(DataError, match="does not exist"):
        load_rows(str(tmp_path / "missing.jsonl"))


def test_truncation_and_pad_token_warnings(base_dir):
    tok = AutoTokenizer.from_pretrained(base_dir)
    with pytest.warns(UserWarning, match="1 of 2 .* truncated from the left"):
        enc, n = encode(tok, ["short", "a much longer text " * 20], max_length=16)
    assert n == 1 and max(len(x) for x in enc["input_ids"]) == 16
    tok.pad_token = None
    with pytest.warns(UserWarning, match="no pad token"):
        ensure_pad_token(tok)
    assert tok.pad_token == tok.eos_token


def test_config_validation_before_compute():
    with pytest.raises(ConfigError, match="model_name_or_path"):
        load_config(ScoreTrainConfig, None, ["--data.path", "x.jsonl"])
    with pytest.raises(ConfigError, match="data.path"):
        load_config(ScoreTrainConfig, None, ["--model_name_or_path", "m"])
    with pytest.raises(ConfigError, match="'kind': must be one of"):
        load_config(ScoreTrainConfig, None, ["--model_name_or_path", "m", "--data.path", "x", "--kind", "both"])


# ---------------------------------------------------------------- training (in process, world size 1)

def _cfg(base_dir, pairs_file, out, kind, **kw):
    return ScoreTrainConfig(model_name_or_path=str(base_dir), output_dir=str(out), kind=kind,
                            name="helpful" if kind == "reward" else "harmless",
                            data=PreferenceDataConfig(path=str(pairs_file), schema="pku_saferlhf", max_length=128),
                            precision="fp32", lr=1e-3, max_steps=kw.pop("max_steps", 80), micro_batch_size=16,
                            eval_every=40, log_every=10, **kw)


def test_reward_model_learns_and_reloads_as_hf(base_dir, pairs_file, tmp_path):
    summary = train(_cfg(base_dir, pairs_file, tmp_path / "rm", "reward"))
    assert summary["final_loss"] < summary["first_loss"]
    assert summary["accuracy"] >= 0.85 > summary["initial_accuracy"] - 0.2
    dim = json.loads((tmp_path / "rm" / "dimension.json").read_text())
    assert dim["name"] == "helpful" and dim["kind"] == "reward" and dim["accuracy"] == summary["accuracy"]
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert hf.config.num_labels == 1
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    texts = [format_conversation(tok, "How do I bake bread?", r) for r in ("Sure, first gather the tools.", "No.")]
    ours, tok2, _ = load_score_model(str(tmp_path / "rm"))
    a = score_texts(ours, tok2, texts)
    with torch.no_grad():
        b = torch.stack([hf(**tok(t, return_tensors="pt")).logits[0, 0] for t in texts])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # the scoring CLI's function reports the same held-out quality
    assert score_pairs(str(tmp_path / "rm"), str(pairs_file), max_length=128)["accuracy"] >= 0.85


def test_cost_model_signs(base_dir, pairs_file, tmp_path):
    summary = train(_cfg(base_dir, pairs_file, tmp_path / "cm", "cost"))
    assert summary["sign_accuracy"] >= 0.8 and summary["accuracy"] >= 0.8
    model, tok, meta = load_score_model(str(tmp_path / "cm"))
    assert meta["kind"] == "cost"
    _, held = load_pairs(PreferenceDataConfig(path=str(pairs_file), schema="pku_saferlhf"), "cost", seed=42)
    unsafe = [(p.prompt, p.worse) for p in held if p.worse_sign == 1]
    safe = [(p.prompt, p.better) for p in held if p.better_sign == -1]
    c_unsafe = score_texts(model, tok, [format_conversation(tok, p, r) for p, r in unsafe])
    c_safe = score_texts(model, tok, [format_conversation(tok, p, r) for p, r in safe])
    assert (c_unsafe > 0).float().mean() >= 0.8 and (c_safe < 0).float().mean() >= 0.8


def test_score_model_errors(base_dir, tmp_path):
    with pytest.raises(ScoreModelError, match="nothing_here': no such directory"):
        load_score_model(str(tmp_path / "nothing_here"))
    # a causal LM whose config declares one label would load with a random head: refused, naming the tensor
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(base_dir, num_labels=1).save_pretrained(tmp_path / "lm")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp_path / "lm")
    with pytest.raises(ScoreModelError, match=r"is a LlamaForCausalLM, not a trained score model: it has no score head"):
        load_score_model(str(tmp_path / "lm"))  # refused from its config, before any weights are read
    import json

    config = json.loads((tmp_path / "lm" / "config.json").read_text())  # one whose config lies about its head
    (tmp_path / "lm" / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(ScoreModelError, match=r"lacks \['score.weight'\] in its checkpoint"):
        load_score_model(str(tmp_path / "lm"))
    m = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=3)
    m.save_pretrained(tmp_path / "three")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp_path / "three")
    with pytest.raises(ScoreModelError, match="num_labels=3"):
        load_score_model(str(tmp_path / "three"))


# ---------------------------------------------------------------- safe-rlhf layout

def test_safe_rlhf_layout_loads_and_converts(base_dir, tmp_path):
    from safetensors.torch import save_file

    from reward_models.convert_safe_rlhf import convert

    cfg = LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    torch.manual_seed(3)
    backbone = LlamaModel(cfg).eval()
    head = torch.randn(1, 32)
    src = tmp_path / "beaver_like"
    src.mkdir()
    state = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    state["score_head.weight"] = head
    save_file(state, str(src / "model.safetensors"))
    raw = cfg.to_dict()
    raw.update(architectures=["LlamaModelForScore"], score_dim=1, bias=False)
    (src / "config.json").write_text(json.dumps(raw))
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(src)

    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state        # (2, 4, 32)
        expected = torch.stack([hidden[0, 3] @ head[0], hidden[1, 2] @ head[0]])      # end scores
    model, _, meta = load_score_model(str(src))
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert meta["score_offset"] == 0.0
    dst = convert(src, tmp_path / "converted", name="harmless", kind="cost")
    hf = AutoModelForSequenceClassification.from_pretrained(dst).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask).logits[:, 0], expected, atol=1e-5, rtol=1e-5)
    assert json.loads((dst / "dimension.json").read_text())["kind"] == "cost"


# ---------------------------------------------------------------- the DeepSpeed launcher

@pytest.mark.slow
@pytest.mark.parametrize("stage,procs", [(2, 1), (3, 1), (2, 2), (3, 2)])
def test_deepspeed_launcher(base_dir, pairs_file, tmp_path, stage, procs):
    out = tmp_path / f"rm_z{stage}_{procs}"
    cmd = ["deepspeed", "--num_gpus", str(procs), "--master_port", str(29600 + 10 * stage + procs),
           "reward_models/train.py", "--model_name_or_path", str(base_dir), "--output_dir", str(out),
           "--data.path", str(pairs_file), "--data.schema", "pku_saferlhf", "--data.max_length", "128",
           "--precision", "fp32", "--lr", "1e-3", "--epochs", "2", "--micro_batch_size", "8", "--eval_every", "100",
           "--ds_config", f"ds_configs/zero{stage}.json", "--wandb.mode", "offline"]
    env = clean_env()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dim = json.loads((out / "dimension.json").read_text())
    # each rank sees its own shard: 360 pairs / (8 per rank * procs) per epoch, two epochs
    assert dim["world_size"] == procs and dim["train_steps"] == 2 * -(-360 // (8 * procs))
    assert dim["accuracy"] >= 0.85
    assert score_pairs(str(out), str(pairs_file), max_length=128)["accuracy"] >= 0.85
    assert list(out.glob("wandb/offline-run-*")), "W&B offline run missing"
