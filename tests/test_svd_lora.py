import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from hhbench.tiny import tiny_causal_lm
from rlhf.adapter.svd_lora import (AdapterMismatchError, AdapterState, PreferenceError, SVDLoRAConfig, SVDLoRALayer,
                                   adapter_disabled, adapter_rows, apply_svd_lora, count_parameters,
                                   find_target_modules, get_preference, load_adapter, merge_and_unload,
                                   merge_preference, save_adapter, set_preference, svd_lora_layers, unmerge_preference)


def _randomise(model, seed=1):
    """Give sigma and s non-zero values so that lambda matters (they start at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in svd_lora_layers(model):
            layer.lora_sigma.copy_(torch.randn(layer.lora_sigma.shape, generator=g) * 0.5)
            layer.lora_s.fill_(float(torch.randn((), generator=g)) + 2.0)


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_default_targets_are_every_decoder_linear_not_lm_head(tiny_lm):
    names = find_target_modules(tiny_lm)
    assert names and not any("lm_head" in n or "embed" in n or "wte" in n for n in names)
    n_layers = tiny_lm.config.num_hidden_layers
    per_block = 7 if tiny_lm.config.model_type == "llama" else 4  # q,k,v,o,gate,up,down | c_attn,c_proj,c_fc,c_proj
    assert len(names) == n_layers * per_block


def test_zero_init_keeps_logits_and_trainable_count(tiny_lm, input_ids):
    ids, mask = input_ids
    before = _logits(tiny_lm, ids, mask)
    cfg = SVDLoRAConfig(rank=4, pref_dim=2)
    apply_svd_lora(tiny_lm, cfg)
    set_preference(tiny_lm, [0.3, 0.7])
    assert torch.equal(_logits(tiny_lm, ids, mask), before)
    trainable, total = count_parameters(tiny_lm)
    expected = sum(l.lora_U.numel() + l.lora_V.numel() + cfg.rank + 1 for _, l in svd_lora_layers(tiny_lm))
    assert trainable == expected and total > trainable
    assert cfg.c == 512 / 4


def test_gradients_reach_only_adapter_params(tiny_lm, input_ids):
    ids, mask = input_ids
    apply_svd_lora(tiny_lm, SVDLoRAConfig(rank=4, pref_dim=3))
    set_preference(tiny_lm, [0.2, 0.3, 0.5])
    tiny_lm(input_ids=ids, attention_mask=mask).logits.pow(2).mean().backward()
    names_with_grad = {n.rsplit(".", 1)[-1] for n, p in tiny_lm.named_parameters() if p.grad is not None}
    assert names_with_grad == {"lora_U", "lora_V", "lora_sigma", "lora_s"}
    for n, p in tiny_lm.named_parameters():
        assert p.requires_grad == ("lora_" in n), n
    # lambda is runtime state: not a parameter, not in the state dict
    assert not any("preference" in n for n, _ in tiny_lm.named_parameters())
    assert not any("preference" in k for k in tiny_lm.state_dict())


def test_forward_matches_naive_formula():
    base = torch.nn.Linear(6, 5)
    cfg = SVDLoRAConfig(rank=3, pref_dim=2, scaling=2.0)
    layer = SVDLoRALayer(base, cfg)
    with torch.no_grad():
        layer.lora_sigma.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.lora_s.fill_(1.5)
    lam = torch.tensor([0.25, 0.75])
    layer.state = AdapterState(preference=lam)
    x = torch.randn(4, 6)
    diag = torch.diag(torch.tensor([0.5, -1.0, 2.0, 1.5 * 0.25, 1.5 * 0.75]))
    expected = base(x) + 2.0 * x @ (layer.lora_U @ diag @ layer.lora_V.T).T
    torch.testing.assert_close(layer(x), expected)


def test_different_lambdas_differ_and_merge_equals_adapted(tiny_lm, input_ids, tmp_path):
    ids, mask = input_ids
    apply_svd_lora(tiny_lm, SVDLoRAConfig(rank=4, pref_dim=2))
    _randomise(tiny_lm)
    outs = {}
    for lam in ([1.0, 0.0], [0.5, 0.5], [0.2, 0.8]):
        set_preference(tiny_lm, lam)
        outs[tuple(lam)] = _logits(tiny_lm, ids, mask)
        merged = merge_and_unload(tiny_lm, lam)
        assert not any(True for _ in svd_lora_layers(merged))
        assert (torch.max(torch.abs(_logits(merged, ids, mask) - outs[tuple(lam)])) < 1e-5)
    assert not torch.allclose(outs[(1.0, 0.0)], outs[(0.2, 0.8)], atol=1e-3)
    # the merged model is an ordinary HF checkpoint
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert torch.max(torch.abs(_logits(reloaded, ids, mask) - outs[(0.2, 0.8)])) < 1e-5


def test_in_place_merge_then_unmerge_restores(tiny_lm, input_ids):
    ids, mask = input_ids
    apply_svd_lora(tiny_lm, SVDLoRAConfig(rank=2, pref_dim=2))
    _randomise(tiny_lm)
    set_preference(tiny_lm, [0.4, 0.6])
    adapted = _logits(tiny_lm, ids, mask)
    merge_preference(tiny_lm, [0.4, 0.6])
    torch.testing.assert_close(_logits(tiny_lm, ids, mask), adapted, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="unmerge"):
        with adapter_disabled(tiny_lm):
            pass
    unmerge_preference(tiny_lm)
    torch.testing.assert_close(_logits(tiny_lm, ids, mask), adapted, atol=1e-5, rtol=0)


def test_per_sample_preferences_equal_one_at_a_time(tiny_lm, input_ids):
    ids, mask = input_ids
    apply_svd_lora(tiny_lm, SVDLoRAConfig(rank=4, pref_dim=2))
    _randomise(tiny_lm)
    prefs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    set_preference(tiny_lm, prefs)
    batched = _logits(tiny_lm, ids, mask)
    for i in range(2):
        set_preference(tiny_lm, prefs[i])
        alone = _logits(tiny_lm, ids[i:i + 1], mask[i:i + 1])
        torch.testing.assert_close(batched[i:i + 1], alone, atol=1e-5, rtol=1e-5)
    # and generation works with per-sample lambda (KV cache path)
    set_preference(tiny_lm, prefs)
    out = tiny_lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, ids.shape[1] + 3)


def test_disable_gives_base_model(tiny_lm, input_ids):
    ids, mask = input_ids
    base = _logits(tiny_lm, ids, mask)
    apply_svd_lora(tiny_lm, SVDLoRAConfig(rank=4, pref_dim=2))
    _randomise(tiny_lm)
    set_preference(tiny_lm, [0.5, 0.5])
    assert not torch.allclose(_logits(tiny_lm, ids, mask), base, atol=1e-4)
    with adapter_disabled(tiny_lm):
        assert torch.equal(_logits(tiny_lm, ids, mask), base)
    assert not torch.allclose(_logits(tiny_lm, ids, mask), base, atol=1e-4)


@pytest.mark.parametrize("prefs", [[0.7, 0.3], [[0.9, 0.1], [0.2, 0.8]]], ids=["shared", "per_sample"])
def test_one_pass_old_and_reference_logprobs_equal_two_passes(tiny_lm, input_ids, prefs):
    from rlhf.rollout.rollout import policy_and_reference_logprobs, position_ids_from_mask, response_logprobs

    ids, mask = input_ids
    apply_svd_lora(tiny_lm, SVDLoRAConfig(rank=4, pref_dim=2))
    _randomise(tiny_lm)
    lam = torch.tensor(prefs)
    set_preference(tiny_lm, lam)
    T = 4
    with torch.no_grad():
        old, _ = response_logprobs(tiny_lm, ids, mask, T, 0.7)                                 # (B, T)
        with adapter_disabled(tiny_lm):
            ref, _ = response_logprobs(tiny_lm, ids, mask, T, 0.7)                             # (B, T)
    one_old, one_ref = policy_and_reference_logprobs(tiny_lm, ids, mask, T, 0.7, lam)
    # naive reference: the full logits (response_logprobs asks the LM head for the last T+1 positions only)
    with torch.no_grad():
        full = tiny_lm(input_ids=ids, attention_mask=mask,
                       position_ids=position_ids_from_mask(mask)).logits[:, -T - 1:-1] / 0.7     # (B, T, V)
    naive = torch.log_softmax(full, -1).gather(-1, ids[:, -T:].unsqueeze(-1)).squeeze(-1)       # (B, T)
    torch.testing.assert_close(old, naive, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(old, ref, atol=1e-3)  # the adapter matters, so the rows really differ
    torch.testing.assert_close(one_old, old, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_ref, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(get_preference(tiny_lm), lam) and all(l.state.row_gate is None for _, l in svd_lora_layers(tiny_lm))
    with pytest.raises(ValueError, match="row gate has 3 rows"), adapter_rows(tiny_lm, torch.ones(3)):
        _logits(tiny_lm, ids, mask)


def test_save_load_round_trip(tiny_lm, input_ids, tmp_path):
    ids, mask = input_ids
    arch = tiny_lm.config.model_type
    apply_svd_lora(tiny_lm, SVDLoRAConfig(rank=3, pref_dim=2))
    _randomise(tiny_lm)
    set_preference(tiny_lm, [0.7, 0.3])
    want = _logits(tiny_lm, ids, mask)
    save_adapter(tiny_lm, tmp_path / "ad")
    meta = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert meta["adapter"]["pref_dim"] == 2 and meta["base_model"]["model_type"] == arch
    fresh = tiny_causal_lm(arch, vocab_size=300)  # same seed -> same base weights
    load_adapter(fresh, tmp_path / "ad", expected_pref_dim=2)
    set_preference(fresh, [0.7, 0.3])
    torch.testing.assert_close(_logits(fresh, ids, mask), want)


def test_load_refuses_mismatches(tmp_path):
    model = tiny_causal_lm("llama", vocab_size=300)
    apply_svd_lora(model, SVDLoRAConfig(rank=2, pref_dim=2))
    save_adapter(model, tmp_path / "ad")
    with pytest.raises(AdapterMismatchError, match="pref_dim=2 but 3 objectives"):
        load_adapter(tiny_causal_lm("llama", vocab_size=300), tmp_path / "ad", expected_pref_dim=3)
    with pytest.raises(AdapterMismatchError, match="hidden_size"):
        load_adapter(tiny_causal_lm("llama", vocab_size=300, hidden=64), tmp_path / "ad")
    with pytest.raises(AdapterMismatchError, match="model_type"):
        load_adapter(tiny_causal_lm("gpt2", vocab_size=300), tmp_path / "ad")
    other = tiny_causal_lm("llama", vocab_size=300)
    apply_svd_lora(other, SVDLoRAConfig(rank=2, pref_dim=3))
    with pytest.raises(AdapterMismatchError, match="different config"):
        load_adapter(other, tmp_path / "ad")
    with pytest.raises(FileNotFoundError, match="not an adapter directory"):
        load_adapter(tiny_causal_lm("llama", vocab_size=300), tmp_path)


@pytest.mark.parametrize("pref,match", [
    ([0.5, 0.3, 0.2], "3 entries but the adapter has pref_dim=2"),
    ([1.2, -0.2], ">= 0"),
    ([0.5, 0.4], "sum to 1"),
    ([float("nan"), 1.0], "NaN"),
    ([[[0.5, 0.5]]], "shape"),
])
def test_preference_validation(pref, match):
    model = apply_svd_lora(tiny_causal_lm("llama", vocab_size=300), SVDLoRAConfig(rank=2, pref_dim=2))
    with pytest.raises(PreferenceError, match=match):
        set_preference(model, pref)
    set_preference(model, [0.5, 0.5 + 5e-5])  # within the 1e-4 tolerance


def test_forward_without_preference_raises(input_ids):
    ids, mask = input_ids
    model = apply_svd_lora(tiny_causal_lm("gpt2", vocab_size=300), SVDLoRAConfig(rank=2, pref_dim=2))
    with pytest.raises(PreferenceError, match="set_preference"):
        model(input_ids=ids, attention_mask=mask)


def test_per_sample_batch_mismatch_and_bad_targets(input_ids):
    ids, mask = input_ids
    model = apply_svd_lora(tiny_causal_lm("llama", vocab_size=300), SVDLoRAConfig(rank=2, pref_dim=2))
    set_preference(model, [[0.5, 0.5]] * 3)
    with pytest.raises(PreferenceError, match="batch 3 but the input has batch 2"):
        model(input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match=r"\['nope'\] match no"):
        apply_svd_lora(tiny_causal_lm("llama", vocab_size=300), SVDLoRAConfig(target_modules=("q_proj", "nope")))
    with pytest.raises(ValueError, match="already carries"):
        apply_svd_lora(model, SVDLoRAConfig())


def test_target_modules_subset():
    model = apply_svd_lora(tiny_causal_lm("llama", vocab_size=300),
                           SVDLoRAConfig(rank=2, pref_dim=2, target_modules=("q_proj", "v_proj")))
    names = [n for n, _ in svd_lora_layers(model)]
    assert len(names) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in names)


def test_merged_context_is_exact_and_restores_bf16_weights_bit_for_bit(input_ids, tokenizer):
    from rlhf.adapter.svd_lora import merged
    from rlhf.rollout.rollout import generate_rollout

    ids, mask = input_ids
    model = apply_svd_lora(tiny_causal_lm("llama", vocab_size=300), SVDLoRAConfig(rank=4, pref_dim=2))
    _randomise(model)
    set_preference(model, [0.3, 0.7])
    adapted = _logits(model, ids, mask)
    with merged(model, [0.3, 0.7]):
        torch.testing.assert_close(_logits(model, ids, mask), adapted, atol=1e-5, rtol=0)
    kw = dict(max_prompt_length=16, max_new_tokens=5, temperature=1.0, top_p=1.0, do_sample=False)
    texts = ["How do I bake bread?", "What is the capital of France?"]
    a = generate_rollout(model, tokenizer, texts, texts, torch.tensor([0.3, 0.7]), merge=True, **kw)
    b = generate_rollout(model, tokenizer, texts, texts, torch.tensor([0.3, 0.7]), merge=False, **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.old_logprobs, b.old_logprobs)
    model.to(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        with merged(model, [0.9, 0.1]):
            pass
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
