"""Real data: multi-turn chats through every data path, and over-long prompts that keep their end (issue 17)."""
import json

import pytest
import torch
from transformers import AutoTokenizer

from rlhf.data.chat import (as_messages, encode_example, fit_prompt, fit_prompts, format_conversation, format_prompt,
                            render_plain)
from rlhf.data.datasets import DataError, load_rows
from tests.test_ppo import load, make_config

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")

CHAT = [{"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Mix flour and water, then bake it."},
        {"role": "user", "content": "And how do I plant tomatoes?"}]


@pytest.fixture
def chat_tok(world, tmp_path):
    """The tiny base's tokenizer with a chat template (built locally, nothing downloaded)."""
    tok = AutoTokenizer.from_pretrained(world / "base")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(tmp_path / "chat_tok")
    return AutoTokenizer.from_pretrained(tmp_path / "chat_tok")


def n_tokens(tok, prompt):
    return len(tok(format_prompt(tok, prompt), add_special_tokens=True)["input_ids"])


def test_chats_render_through_the_template_or_the_plain_layout(chat_tok, world):
    text = format_prompt(chat_tok, CHAT)
    assert text.startswith("<|system|> You are a careful assistant.") and text.endswith("<|assistant|>")
    assert "<|user|> And how do I plant tomatoes?" in text
    conv = format_conversation(chat_tok, CHAT, "Dig holes.")
    assert conv.endswith("<|assistant|> Dig holes. </s>")
    plain = AutoTokenizer.from_pretrained(world / "base")
    assert format_prompt(plain, "How?") == "BEGINNING OF CONVERSATION: USER: How? ASSISTANT:"  # unchanged layout
    assert render_plain(as_messages(CHAT), "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:") == (
        "SYSTEM: You are a careful assistant. BEGINNING OF CONVERSATION: USER: How do I bake bread? ASSISTANT: Mix "
        "flour and water, then bake it. USER: And how do I plant tomatoes? ASSISTANT:")
    with pytest.raises(DataError, match="must end with a user turn"):
        format_prompt(chat_tok, CHAT[:3])


def test_an_over_long_chat_keeps_its_end(chat_tok):
    full = n_tokens(chat_tok, CHAT)
    dropped_turns, cut = fit_prompt(chat_tok, CHAT, full - 1)
    assert cut and dropped_turns[0] == CHAT[0] and dropped_turns[-1] == CHAT[-1]   # oldest turns go, system stays
    assert n_tokens(chat_tok, dropped_turns) <= full - 1 and len(dropped_turns) < len(CHAT)
    alone = n_tokens(chat_tok, CHAT[-1:])
    tail, cut = fit_prompt(chat_tok, CHAT, alone - 3)                              # even the last turn is too long
    assert cut and len(tail) == 1 and tail[0]["role"] == "user" and "tomatoes?" in tail[0]["content"]
    assert n_tokens(chat_tok, tail) <= alone - 3 and format_prompt(chat_tok, tail).endswith("<|assistant|>")
    assert fit_prompt(chat_tok, CHAT, full) == (CHAT, False)
    with pytest.warns(UserWarning, match="1 of 2 prompts exceed max_prompt_length"):
        fit_prompts(chat_tok, [CHAT, "Hi?"], full - 1, "{prompt}", "prompts")


def test_generate_cuts_an_over_long_prompt_from_the_left(world):
    """The tokenizer's default right truncation kept a long prompt's start and lost the request and 'ASSISTANT:'."""
    from transformers import AutoModelForCausalLM

    from rlhf.rollout.rollout import generate

    tok = AutoTokenizer.from_pretrained(world / "base")
    model = AutoModelForCausalLM.from_pretrained(world / "base").eval()
    text = format_prompt(tok, "How do I bake bread? " * 6 + "How do I steal a car?")
    full = tok(text, add_special_tokens=True)["input_ids"]
    with pytest.warns(UserWarning, match="1 of 1 prompts exceed max_prompt_length=24 tokens and were cut from the left"):
        seqs, mask, P, _ = generate(model, tok, [text], None, max_prompt_length=24, max_new_tokens=2,
                                    temperature=1.0, top_p=1.0, do_sample=False)
    assert P == 24 and seqs[0, :P].tolist() == full[-24:]                 # the end, with the generation prompt


def test_ppo_on_chats_scores_the_conversation_the_policy_answered(world, tmp_path, chat_tok, monkeypatch):
    from rlhf.training.ppo import PPOTrainer

    long_chat = [{"role": "user", "content": "How do I learn chess? " * 8}, {"role": "assistant", "content": "Play."},
                 {"role": "user", "content": "How do I save money?"}]
    rows = [{"prompt": CHAT}, {"prompt": long_chat}, {"prompt": "How do I cook rice?"}, {"prompt": CHAT[-1:]}] * 2
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    limit = n_tokens(chat_tok, long_chat) - 5
    cfg = load(make_config(world, tmp_path / "ppo", tokenizer=str(tmp_path / "chat_tok"), total_steps=1,
                           prompts={"path": str(tmp_path / "chats.jsonl"), "max_prompt_length": limit}))
    with pytest.warns(UserWarning, match="2 of 8 prompts of .* exceed max_prompt_length"):
        tr = PPOTrainer(cfg)
    seen = []
    real = tr.scorer.raw
    monkeypatch.setattr(tr.scorer, "raw", lambda p, r, c=None: seen.extend(p) or real(p, r, c))
    tr.train()
    assert len(seen) == 4
    for p in seen:  # what the score models got is what the policy saw, whole
        assert n_tokens(chat_tok, p) <= limit
        assert as_messages(p)[-1]["role"] == "user"
        if isinstance(p, list) and p[-1]["content"] == "How do I save money?":
            assert "learn chess" not in json.dumps(p)                      # the oldest turn was dropped


def test_reward_dpo_and_sft_data_read_chats(world, tmp_path, chat_tok):
    from rlhf.data.pairs import PairTensors, build_pairs
    from rlhf.training.dpo import DPOData, DPODataConfig
    from rlhf.training.sft import SFTData, SFTDataConfig

    ultra = {"prompt": "How do I plant tomatoes?",
             "chosen": CHAT[:-1] + [CHAT[-1], {"role": "assistant", "content": "Dig small holes, water them."}],
             "rejected": CHAT[:-1] + [CHAT[-1], {"role": "assistant", "content": "No idea."}]}
    (tmp_path / "u.jsonl").write_text(json.dumps(ultra) + "\n")
    (pair,) = build_pairs(load_rows(str(tmp_path / "u.jsonl")), "generic", "reward", "u")
    assert pair.prompt == CHAT and pair.better == "Dig small holes, water them." and pair.worse == "No idea."
    t = PairTensors([pair], chat_tok, 256, "{prompt}", "x")
    assert "<|assistant|> Dig small holes, water them. </s>" in chat_tok.decode(t.ids[0])
    dpo = DPOData([ultra], DPODataConfig(path="u", schema="generic", pair_columns=(("chosen", "rejected"),)), chat_tok)
    seqs, pairs = dpo.rows[0]
    assert pairs == [(0, 1)] and chat_tok.decode(seqs[0][0]).startswith("<|system|>")
    p_ids, r_ids = encode_example(chat_tok, CHAT, "Dig holes.")
    assert chat_tok.decode(p_ids).endswith("<|assistant|>") and chat_tok.decode(r_ids).strip() == "Dig holes. </s>"
    sft = SFTData([{"prompt": CHAT, "response": "Dig holes."}], SFTDataConfig(path="s"), chat_tok)
    ids, plen = sft.items[0][0]
    assert ids == p_ids + r_ids and plen == len(p_ids)
    labels = sft.batch([0], 0)["labels"][0]
    assert chat_tok.decode(labels[labels >= 0]).strip() == "Dig holes. </s>"   # only the assistant turn trains
    assert torch.equal(torch.tensor(ids), sft.batch([0], 0)["input_ids"][0])
