"""Generation backends: identical greedy outputs to HF eager, and lambda changes without recompiling."""
import json

import pytest
import torch

from hhbench.tiny import tiny_causal_lm
from rlhf.adapter.svd_lora import SVDLoRAConfig, apply_svd_lora, set_preference
from rlhf.rollout.backends import BACKENDS, compiled_graphs, make_backend
from rlhf.rollout.rollout import decode_responses, generate
from tests.test_ppo import load, make_config

GREEDY = dict(max_new_tokens=10, do_sample=False, temperature=1.0, top_p=1.0, pad_token_id=0, eos_token_id=1)


def _adapted(arch="llama"):
    """A tiny model whose adapter moves the outputs: lambda must visibly change what is generated."""
    torch.manual_seed(0)
    model = apply_svd_lora(tiny_causal_lm(arch, vocab_size=300), SVDLoRAConfig(rank=4, pref_dim=2))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_s"):
                p.fill_(30.0)
    return model.eval()


def _prompts():
    ids = torch.randint(3, 300, (4, 7), generator=torch.Generator().manual_seed(1))         # (B, P)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0                                                                         # one left-padded row
    return ids, mask


def _compiled():
    # The eager dynamo backend: the same tracing, guards and graph cache as inductor, without a C++ build.
    return make_backend("hf_static_compile", compile_backend="eager")


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown generation backend 'vllm2'"):
        make_backend("vllm2")
    assert set(BACKENDS.names()) == {"hf", "hf_static_compile", "vllm"}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_static_compiled_greedy_equals_eager(arch):
    model, (ids, mask) = _adapted(arch), _prompts()
    eager, compiled = make_backend("hf"), _compiled()
    for pref in ([1.0, 0.0], [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8]]):
        set_preference(model, torch.tensor(pref))
        a = eager.generate(model, ids, mask, **GREEDY)                                     # (B, P+T)
        b = compiled.generate(model, ids, mask, **GREEDY)                                  # (B, P+T)
        assert a.shape == b.shape == (4, 17)
        assert torch.equal(a, b)


def test_changing_lambda_does_not_recompile():
    model, (ids, mask) = _adapted(), _prompts()
    backend = _compiled()
    set_preference(model, torch.tensor([1.0, 0.0]))
    first = backend.generate(model, ids, mask, **GREEDY)
    graphs = compiled_graphs()
    assert graphs >= 1, "nothing was compiled: the static backend did not take the compiled path"
    outputs = {tuple(first.flatten().tolist())}
    for pref in ([0.0, 1.0], [0.3, 0.7], [0.9, 0.1]):
        set_preference(model, torch.tensor(pref))
        outputs.add(tuple(backend.generate(model, ids, mask, **GREEDY).flatten().tolist()))
    assert compiled_graphs() == graphs, "a new lambda recompiled the decoding step"
    assert len(outputs) > 1, "lambda did not change the outputs, so the recompile check proves nothing"


def test_rollout_pads_to_a_fixed_length_for_the_static_backend(world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world / "base")
    model = apply_svd_lora(AutoModelForCausalLM.from_pretrained(world / "base"), SVDLoRAConfig(rank=4, pref_dim=2))
    prompts = [json.loads(line)["prompt"] for line in (world / "prompts.jsonl").read_text().splitlines()[:3]]
    kw = dict(max_prompt_length=24, max_new_tokens=6, temperature=1.0, top_p=1.0, do_sample=False)
    seqs, mask, P, _ = generate(model.eval(), tok, prompts, torch.tensor([0.5, 0.5]), backend=_compiled(), **kw)
    assert P == 24 and seqs.shape[1] == 30
    seqs_e, _, P_e, _ = generate(model, tok, prompts, torch.tensor([0.5, 0.5]), **kw)
    assert P_e < 24  # eager pads to the longest prompt only
    assert decode_responses(tok, seqs, P) == decode_responses(tok, seqs_e, P_e)


def test_ppo_runs_with_the_compiled_backend_and_refuses_it_under_zero3(world, tmp_path):
    from rlhf.training.ppo import PPOTrainer

    gen = {"max_new_tokens": 8, "backend": {"name": "hf_static_compile", "compile_backend": "eager"}}
    with pytest.raises(ValueError, match="generation.backend': 'hf_static_compile' needs ZeRO stage 0-2"):
        PPOTrainer(load(make_config(world, tmp_path / "z3", generation=gen, ds_config="ds_configs/zero3.json")))
    trainer = PPOTrainer(load(make_config(world, tmp_path / "ppo", generation=gen, total_steps=2)))
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


def test_shared_noise_is_per_row_and_samples_the_right_distribution():
    from rlhf.rollout.sampling import SharedNoiseSampling, row_seeds, shared_gumbel

    seeds = row_seeds(3, range(6))
    g = shared_gumbel(seeds, step=2, vocab=50)                                           # (6, 50)
    # a row's noise depends on its seed alone: not on its position, its batch, or the other rows
    torch.testing.assert_close(shared_gumbel(seeds[[4, 1]], 2, 50), g[[4, 1]])
    assert not torch.equal(shared_gumbel(seeds, 3, 50), g) and len(set(seeds.tolist())) == 6
    big = shared_gumbel(row_seeds(0, range(4000)), 0, 25).flatten()
    assert abs(big.mean().item() - 0.5772) < 0.02 and abs(big.std().item() - 1.2825) < 0.02   # Gumbel(0, 1)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]])
    for top_p in (1.0, 0.8):
        proc = SharedNoiseSampling(row_seeds(1, range(20000)), prompt_length=0, temperature=0.7, top_p=top_p)
        picks = proc(torch.zeros(20000, 0, dtype=torch.long), logits.expand(20000, 5)).argmax(-1)
        freq = torch.bincount(picks, minlength=5).float() / 20000
        probs = torch.softmax(logits[0] / 0.7, -1)
        if top_p < 1:  # the nucleus: the smallest set of most likely tokens holding 0.8 of the mass
            keep = torch.tensor([True, True, False, False, False])
            probs = torch.where(keep, probs, 0.0) / probs[keep].sum()
        torch.testing.assert_close(freq, probs, atol=0.012, rtol=0)
