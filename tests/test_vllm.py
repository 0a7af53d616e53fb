"""vLLM as the rollout and evaluation engine, through a real vLLM OpenAI server in its own environment
(``bash scripts/setup_vllm.sh``): greedy rollouts equal HF's token for token under one lambda and under per-row
lambdas, the next rollout after an update reflects the new adapter, a PPO run resumes exactly after ``kill -9``, and
a server that dies mid-run stops the run with a clear error and a resumable checkpoint. Without the environment the
server tests skip with the reason; the checks that need no server always run."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from hhbench.fixtures import write_ppo_config as make_config
from hhbench.fixtures import write_tiny_base
from rlhf.adapter.as_lora import lora_config, lora_tensors, write_peft_adapter
from rlhf.adapter.svd_lora import SVDLoRAConfig, apply_svd_lora
from rlhf.core.config import load_config
from rlhf.rollout.backends import make_backend
from rlhf.rollout.rollout import generate, generate_with_sampler_logprobs
from rlhf.rollout.vllm_engine import REPO_VENV, EngineError, VLLMServer, find_python, lora_rank
from rlhf.training.ppo_config import PPOConfig
from tests.helpers import run_ppo_cli, untimed_metrics

ROOT = Path(__file__).resolve().parents[1]


def vllm_python():
    try:
        return find_python(None)
    except EngineError as err:
        return err


needs_vllm = pytest.mark.skipif(isinstance(vllm_python(), EngineError),
                                reason=f"no vLLM environment ({REPO_VENV} or $PANACEA_VLLM_PYTHON): "
                                       f"bash scripts/setup_vllm.sh builds it")


def adapted(base, seed=0):
    """The tiny base with an SVD-LoRA adapter whose delta matters (random factors, not the zero init)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base).eval()
    apply_svd_lora(model, SVDLoRAConfig(rank=4, pref_dim=2))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 2 else 1.0))
    return model


@pytest.fixture(scope="module")
def base128(tmp_path_factory):
    return write_tiny_base(tmp_path_factory.mktemp("vllm_base") / "base", hidden=128)


@pytest.fixture(scope="module")
def server(base128, tmp_path_factory):
    if isinstance(vllm_python(), EngineError):
        pytest.skip(str(vllm_python()))
    s = VLLMServer(str(base128), max_lora_rank=lora_rank(6), max_loras=4, max_model_len=256, dtype="float32",
                   log_dir=str(tmp_path_factory.mktemp("vllm_log")))
    yield s
    s.close()


@pytest.fixture
def policy(base128):
    """(tokenizer, the adapted tiny policy) on the server's base."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base128), adapted(base128)


def hf_greedy(model, tok, prompts, pref, n=12):
    """HF's greedy rollouts under ``pref`` (rows padded with EOS after their end, as the engine's)."""
    seqs, _, P, mask = generate(model, tok, prompts, pref, max_prompt_length=64, max_new_tokens=n, temperature=1.0,
                                top_p=1.0, do_sample=False)
    return seqs[:, P:].masked_fill(mask == 0, tok.eos_token_id), mask


def same_tokens(a, b, fill):
    """Two (B, T?) token tensors equal once both are padded with ``fill`` to one length (an engine may stop its
    batch earlier than another when every row has ended)."""
    T = max(a.shape[1], b.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, T - t.shape[1]), value=fill)  # noqa: E731
    return torch.equal(pad(a), pad(b))


def responses(out, fill):
    """The response tokens of ``generate``'s result, ``fill`` after each row's end."""
    seqs, _, P, mask = out[:4]
    return seqs[:, P:].masked_fill(mask == 0, fill)


PROMPTS = ["How do I bake bread?", "How do I steal a car?", "How do I learn chess?", "How do I plant tomatoes?"]


# ---------------------------------------------------------------- no server needed

def test_lora_view_is_what_peft_exports(tmp_path, world):
    """The per-step adapter write (factors only, no model copy) holds exactly the tensors and config that peft's own
    export (``rlhf.export --format peft``) writes: the file a LoRA server loads."""
    from safetensors.torch import load_file

    from rlhf.serving.export import to_peft

    model = adapted(world / "base")
    to_peft(model, [0.3, 0.7], tmp_path / "peft")
    nbytes = write_peft_adapter(model, [0.3, 0.7], tmp_path / "ours", base_model=str(world / "base"))
    ref, ours = load_file(tmp_path / "peft" / "adapter_model.safetensors"), \
        load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert sorted(ref) == sorted(ours) and len(ref) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    for k in ref:
        assert torch.allclose(ref[k], ours[k], atol=1e-7), k
    assert nbytes == sum(t.numel() * 4 for t in ours.values())
    peft_cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    for k, v in lora_config(model).items():
        if k != "base_model_name_or_path":
            assert (sorted(peft_cfg[k]) == sorted(v)) if k == "target_modules" else peft_cfg[k] == v, k
    # two preferences in one pass: the same factors as one at a time
    both = lora_tensors(model, [[0.3, 0.7], [1.0, 0.0]])
    assert all(torch.equal(both[0][k], ours[k]) for k in ours)


def test_truncated_importance_sampling_weights_each_tokens_surrogate():
    """ppo.tis_cap: the policy loss with per-token weights min(pi_old / pi_sampler, cap) equals the naive weighted
    clipped surrogate; weights of 1 give the plain loss back."""
    from rlhf.algo.losses import policy_loss

    g = torch.Generator().manual_seed(0)
    B, T, D = 3, 5, 2
    lp, old, sampler = (torch.randn(B, T, generator=g) * 0.1 - 1 for _ in range(3))
    adv, kl_adv = torch.randn(B, T, D, generator=g), torch.randn(B, T, generator=g) * 0.1
    mask = (torch.arange(T)[None] < torch.tensor([[5], [3], [1]])).float()
    w = torch.tensor([0.7, 0.3])
    tis = torch.exp(old - sampler).clamp(max=1.05)                                             # (B, T)
    loss, _ = policy_loss(lp, old, adv, kl_adv, mask, w, 0.2, tis)
    ratio, A = torch.exp(lp - old), (adv * w).sum(-1) + kl_adv
    naive = -(tis * torch.minimum(ratio * A, ratio.clamp(0.8, 1.2) * A) * mask).sum() / mask.sum()
    assert torch.allclose(loss, naive, atol=1e-6)
    assert torch.allclose(policy_loss(lp, old, adv, kl_adv, mask, w, 0.2, torch.ones(B, T))[0],
                          policy_loss(lp, old, adv, kl_adv, mask, w, 0.2)[0])
    assert not torch.allclose(loss, policy_loss(lp, old, adv, kl_adv, mask, w, 0.2)[0])
    with pytest.raises(Exception, match=r"ppo.tis_cap.*must be >= 1"):
        from rlhf.training.ppo_config import PPOHyperParams
        PPOHyperParams(tis_cap=0.5)


def test_lora_rank_rounds_up_to_what_vllm_accepts():
    assert [lora_rank(r) for r in (1, 2, 6, 8, 9, 33, 300)] == [1, 8, 8, 8, 16, 64, 320]
    with pytest.raises(EngineError, match="exceeds vLLM's largest LoRA rank 512; lower adapter.rank"):
        lora_rank(600)


def test_a_missing_vllm_environment_is_refused_before_any_model_loads(world, tmp_path, no_model_loads):
    """backend vllm without its environment: --dry_run's checks name the field and the command that builds it."""
    cfg = make_config(world, tmp_path / "run", generation={"max_new_tokens": 8, "backend": {
        "name": "vllm", "python": str(tmp_path / "nowhere" / "python")}})
    with pytest.raises(EngineError, match=r"generation.backend.python .*nowhere/python.* does not exist\. Build it "
                                          r"with `bash scripts/setup_vllm.sh`"):
        load_config(PPOConfig, cfg)
    with pytest.raises(Exception, match=r"generation.merge_adapter.*the vllm backend syncs only the adapter"):
        load_config(PPOConfig, make_config(world, tmp_path / "run2", generation={
            "max_new_tokens": 8, "merge_adapter": True, "backend": {"name": "vllm", "url": "http://127.0.0.1:9"}}))


def test_per_sample_lambdas_are_checked_against_max_loras_before_any_model_loads(world, tmp_path, no_model_loads):
    """preference.per: sample needs one adapter slot per distinct lambda of a rollout batch (a group shares one):
    more than max_loras is refused naming the field and the fixes; a group estimator's prompts fit."""
    from rlhf.core.config import ConfigError

    vllm = {"name": "vllm", "url": "http://127.0.0.1:9", "max_loras": 4}
    over = dict(generation={"max_new_tokens": 8, "merge_adapter": False, "backend": vllm}, rollout_batch_size=8,
                mini_batch_size=8, preference={"name": "dirichlet", "per": "sample"})
    with pytest.raises(ConfigError, match=r"generation.backend.max_loras.*is 4, but preference.per: sample draws up "
                                          r"to 8 distinct lambdas per rollout batch.*set max_loras to at least 8"):
        load_config(PPOConfig, make_config(world, tmp_path / "run", **over))
    grouped = load_config(PPOConfig, make_config(world, tmp_path / "run2", **over,
                                                 advantage={"name": "group", "group_size": 2}))
    assert grouped.generation.backend.max_loras == 4  # 8 samples of 4 prompts: 4 lambdas, 4 slots


def test_serving_on_a_missing_vllm_environment_is_refused_before_the_model_loads(tmp_path, no_model_loads):
    from rlhf.core.config import load_config as load
    from rlhf.serving.server import ServeConfig

    with pytest.raises(EngineError, match=r"vllm_python .*nowhere/python.* does not exist\. Build it with `bash "
                                          r"scripts/setup_vllm.sh`.*or set vllm_url to a running vLLM server"):
        load(ServeConfig, None, ["--run", str(tmp_path), "--engine", "vllm", "--vllm_python",
                                 str(tmp_path / "nowhere" / "python")])


def test_merged_sync_is_refused_with_per_sample_lambdas_and_an_adapted_tied_head(world, tmp_path, no_model_loads):
    """sync: merged holds one lambda's weights: per-sample lambdas are refused before any model loads; an adapter on
    an LM head tied to the embeddings is refused before the engine starts (vLLM keeps a tied head's old weights)."""
    from rlhf.core.config import ConfigError

    vllm = {"name": "vllm", "url": "http://127.0.0.1:9", "sync": "merged"}
    with pytest.raises(ConfigError, match=r"generation.backend.sync.*merged holds one lambda's weights at a time, but "
                                          r"preference.per: sample"):
        load_config(PPOConfig, make_config(world, tmp_path / "run", preference={"name": "dirichlet", "per": "sample"},
                                           generation={"max_new_tokens": 8, "merge_adapter": False, "backend": vllm}))


def test_merged_sync_refuses_an_adapted_tied_head(world):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world / "base")
    model.config.tie_word_embeddings = True
    apply_svd_lora(model, SVDLoRAConfig(rank=2, pref_dim=2, target_modules=("q_proj", "lm_head")))
    with pytest.raises(EngineError, match="adapts the LM head, which this model ties to its input embeddings"):
        make_backend("vllm", sync="merged", url="http://127.0.0.1:9")._start(model)


def test_a_fractional_kv_cache_is_refused_before_the_engine_starts():
    """vLLM's CPU KV cache is whole GiB (VLLM_CPU_KVCACHE_SPACE): 0.5 crashed the engine at start-up."""
    from rlhf.core.config import ConfigError

    with pytest.raises(ConfigError, match="kv_cache_gib"):
        make_backend("vllm", url="http://127.0.0.1:9", kv_cache_gib=0.5)


def test_the_engine_serves_in_the_policys_precision_unless_told(world, monkeypatch):
    """With no dtype given the server gets the policy's (here fp32): vLLM's own "auto" would serve an fp32
    checkpoint in 16 bits, and the sampler would draw from another distribution than PPO's log-probs assume (the
    quickstart's vLLM runs were 2.5e-3 nats per token apart that way)."""
    import rlhf.rollout.vllm_engine as ve

    started = []

    class Recorder:
        def __init__(self, model, **kw):
            started.append(kw)
            raise EngineError("recorded")

    monkeypatch.setattr(ve, "VLLMServer", Recorder)
    model = adapted(world / "base")
    for given, expected in (({}, "float32"), ({"dtype": "bfloat16"}, "bfloat16"), ({"dtype": "auto"}, "auto")):
        with pytest.raises(EngineError, match="recorded"):
            make_backend("vllm", **given)._start(model)
        assert started[-1]["dtype"] == expected


# ---------------------------------------------------------------- through the real server

@needs_vllm
def test_greedy_vllm_rollouts_equal_hf_under_one_and_per_row_lambdas(server, policy):
    tok, model = policy
    backend = make_backend("vllm", url=server.url, max_loras=2)  # 3 distinct lambdas below: two waves
    kw = dict(max_prompt_length=64, max_new_tokens=12, temperature=1.0, top_p=1.0, do_sample=False)
    for pref in (torch.tensor([0.8, 0.2]),
                 torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])):
        out = generate_with_sampler_logprobs(model, tok, PROMPTS, pref, backend=backend, **kw)
        ref, _ = hf_greedy(model, tok, PROMPTS, pref)
        assert same_tokens(responses(out, tok.eos_token_id), ref, tok.eos_token_id)
        sampler = out[4]
        assert sampler is not None and sampler.shape == out[3].shape and (sampler <= 0).all()
    # the base alone (adapter off) is the served base
    from rlhf.adapter.svd_lora import adapter_disabled

    with adapter_disabled(model):
        with_base = responses(generate(model, tok, PROMPTS, None, backend=backend, **kw), tok.eos_token_id)
        ref, _ = hf_greedy(model, tok, PROMPTS, None)
    assert same_tokens(with_base, ref, tok.eos_token_id)


@needs_vllm
def test_sampled_tokens_log_probs_are_the_trainers(server, policy):
    """Sampling (temperature 1.2, per-row lambdas) with an adapter that moves the logits: the engine's log-prob of
    every sampled token equals the trainer's own under the row's lambda, so the rollout is on-policy (greedy equality
    alone could hide an adapter the engine applies only in part)."""
    from rlhf.adapter.svd_lora import scoped_preference
    from rlhf.rollout.rollout import response_logprobs

    tok, model = policy
    backend = make_backend("vllm", url=server.url)
    pref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8]])
    seqs, mask, P, rmask, sampler = generate_with_sampler_logprobs(
        model, tok, PROMPTS, pref, max_prompt_length=64, max_new_tokens=16, temperature=1.2, top_p=1.0,
        do_sample=True, backend=backend, seeds=torch.tensor([1, 2, 3, 4]))
    T = rmask.shape[1]
    with scoped_preference(model, pref):
        ours, _ = response_logprobs(model, seqs, mask, T, 1.2)                                # (B, T)
    with scoped_preference(model, pref.flip(1)):
        other, _ = response_logprobs(model, seqs, mask, T, 1.2)                               # (B, T)
    n = rmask.sum()
    assert n > 20
    assert ((ours - sampler).abs() * rmask).sum() / n < 1e-4
    assert ((ours - other).abs() * rmask).sum() / n > 1e-2  # the preference part of the adapter matters here


@needs_vllm
def test_merged_sync_decodes_as_hf_and_follows_each_update(base128, policy, tmp_path):
    """sync: merged (its own server, started by the backend): the engine's adapted weights become W0 + dW(lambda),
    reloaded in place, and the plain base decodes: greedy equals HF under one lambda, under per-row lambdas (one
    reload each) and for the base; after an update the next rollout reloads and follows it; sampled tokens' log-probs
    are the trainer's."""
    from rlhf.adapter.svd_lora import adapter_disabled, scoped_preference
    from rlhf.rollout.rollout import response_logprobs

    tok, model = policy
    backend = make_backend("vllm", sync="merged", max_model_len=256)
    kw = dict(max_prompt_length=64, max_new_tokens=12, temperature=1.0, top_p=1.0, do_sample=False, backend=backend)
    try:
        for pref in (torch.tensor([0.8, 0.2]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])):
            out = generate(model, tok, PROMPTS, pref, **kw)
            ref, _ = hf_greedy(model, tok, PROMPTS, pref)
            assert same_tokens(responses(out, tok.eos_token_id), ref, tok.eos_token_id)
        with adapter_disabled(model):
            base = responses(generate(model, tok, PROMPTS, None, **kw), tok.eos_token_id)
            ref, _ = hf_greedy(model, tok, PROMPTS, None)
        assert same_tokens(base, ref, tok.eos_token_id)
        lam = torch.tensor([0.5, 0.5])
        before = generate(model, tok, PROMPTS, lam, **kw)[0]
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_U" in name:
                    p.mul_(-3.0)
        backend.after_update(model)
        after = generate(model, tok, PROMPTS, lam, **kw)
        ref, _ = hf_greedy(model, tok, PROMPTS, lam)
        assert same_tokens(responses(after, tok.eos_token_id), ref, tok.eos_token_id)
        assert not torch.equal(after[0], before)
        n_weights = sum(p.numel() * 4 for n, p in model.named_parameters() if n.endswith(".base.weight"))
        assert backend.last_sync["bytes"] == n_weights  # the adapted modules' weights, not the whole model
        seqs, mask, P, rmask, sampler = generate_with_sampler_logprobs(
            model, tok, PROMPTS, lam, max_prompt_length=64, max_new_tokens=16, temperature=1.2, top_p=1.0,
            do_sample=True, backend=backend, seeds=torch.tensor([1, 2, 3, 4]))
        with scoped_preference(model, lam):
            ours, _ = response_logprobs(model, seqs, mask, rmask.shape[1], 1.2)                  # (B, T)
        assert ((ours - sampler).abs() * rmask).sum() / rmask.sum() < 1e-4
    finally:
        backend.close()


@needs_vllm
def test_after_an_update_the_next_rollout_reflects_the_new_adapter(server, policy):
    """An optimiser step changes the adapter; after ``after_update`` the engine decodes with the new one (as HF
    does), and without it the old adapter would still be loaded (the sync is what changed the tokens)."""
    tok, model = policy
    backend = make_backend("vllm", url=server.url)
    kw = dict(max_prompt_length=64, max_new_tokens=12, temperature=1.0, top_p=1.0, do_sample=False,
              backend=backend)
    lam = torch.tensor([0.5, 0.5])
    before = generate(model, tok, PROMPTS, lam, **kw)[0]
    with torch.no_grad():  # "the update": a large change of every adapter factor
        for name, p in model.named_parameters():
            if "lora_U" in name:
                p.mul_(-3.0)
    stale = generate(model, tok, PROMPTS, lam, **kw)[0]
    assert torch.equal(stale, before)  # no update announced: the engine still holds the old adapter
    backend.after_update(model)
    after = generate(model, tok, PROMPTS, lam, **kw)
    ref, _ = hf_greedy(model, tok, PROMPTS, lam)
    assert same_tokens(responses(after, tok.eos_token_id), ref, tok.eos_token_id)
    assert not torch.equal(after[0], before)
    assert 0 < backend.last_sync["bytes"] < 1e6  # only the adapter went over


@needs_vllm
def test_an_update_never_reuses_prompt_kv_cached_under_the_old_adapter(server, policy):
    """Prompts longer than a KV block are prefix-cached by the engine; after an update the same prompts must be
    prefilled afresh under the new adapter (vLLM keys the cache by adapter name and path: reloading new weights from
    the same path would reuse the old KV and decode a mix of old and new policy)."""
    tok, model = policy
    backend = make_backend("vllm", url=server.url)
    long = [" ".join(["Tell me more about bread, chess and tomatoes."] * 14) + f" {p}" for p in PROMPTS[:2]]
    kw = dict(max_prompt_length=230, max_new_tokens=8, temperature=1.0, top_p=1.0, do_sample=False)
    lam = torch.tensor([0.3, 0.7])
    generate(model, tok, long, lam, backend=backend, **kw)   # the prompts' blocks are cached now
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_U" in name:
                p.mul_(-3.0)
    backend.after_update(model)
    got = generate(model, tok, long, lam, backend=backend, **kw)
    want = generate(model, tok, long, lam, **kw)              # HF
    assert same_tokens(responses(got, tok.eos_token_id), responses(want, tok.eos_token_id), tok.eos_token_id)


@needs_vllm
def test_two_backends_sharing_one_server_keep_their_own_adapters(server, policy):
    """A trainer's rollouts and its front (or two runs) may share one server by url: each backend's adapters have
    names of their own, so one never decodes under the lambda the other loaded."""
    tok, model = policy
    a, b = make_backend("vllm", url=server.url), make_backend("vllm", url=server.url)
    kw = dict(max_prompt_length=64, max_new_tokens=12, temperature=1.0, top_p=1.0, do_sample=False)
    lam_a, lam_b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    generate(model, tok, PROMPTS, lam_a, backend=a, **kw)   # a loads lam_a into its first slot
    generate(model, tok, PROMPTS, lam_b, backend=b, **kw)   # b loads lam_b into its first slot
    again = generate(model, tok, PROMPTS, lam_a, backend=a, **kw)   # a's slot still holds lam_a: no reload
    ref, _ = hf_greedy(model, tok, PROMPTS, lam_a)
    other, _ = hf_greedy(model, tok, PROMPTS, lam_b)
    assert not torch.equal(ref, other), "the two lambdas must decode differently, or the test proves nothing"
    assert same_tokens(responses(again, tok.eos_token_id), ref, tok.eos_token_id)


@needs_vllm
def test_sampling_is_seeded_per_row(server, policy):
    """The same row seed gives the same sample in any batch (common random numbers across lambdas and batches)."""
    tok, model = policy
    backend = make_backend("vllm", url=server.url)
    kw = dict(max_prompt_length=64, max_new_tokens=12, temperature=1.0, top_p=1.0, do_sample=True,
              backend=backend)
    lam = torch.tensor([0.5, 0.5])
    seeds = torch.tensor([11, 22, 33, 44])
    a = generate(model, tok, PROMPTS, lam, seeds=seeds, **kw)
    b = generate(model, tok, PROMPTS[::-1], lam, seeds=seeds.flip(0), **kw)
    assert same_tokens(responses(a, -1), responses(b, -1).flip(0), -1)
    c = generate(model, tok, PROMPTS, lam, seeds=seeds + 1, **kw)
    assert not torch.equal(c[0], a[0])


@needs_vllm
def test_many_long_seeded_rows_decode_without_crashing_the_engine(server, policy):
    """More prompt tokens in one batch than one engine step holds: with chunked prefill vLLM 0.32's CPU build splits a
    seeded request's prefill and dies ("CPU Generator does not use offset"); the engine starts the server with whole
    prompts per step, so every row comes back."""
    tok, model = policy
    backend = make_backend("vllm", url=server.url)
    long = " ".join(["How do I bake bread and plant tomatoes and learn chess?"] * 14)  # ~200 tokens
    prompts = [f"{i} {long}" for i in range(48)]
    out = generate(model, tok, prompts, torch.tensor([0.5, 0.5]), max_prompt_length=230, max_new_tokens=4,
                   temperature=1.0, top_p=1.0, do_sample=True, backend=backend, seeds=torch.arange(48))
    assert out[0].shape[0] == 48 and int(out[3].sum()) > 0


def vllm_ppo_config(world, base128, out, url, **over):
    return make_config(world, out, actor_model=str(base128),
                       generation={"max_new_tokens": 8, "temperature": 1.0,
                                   "backend": {"name": "vllm", "url": url}}, **over)


class DyingProxy:
    """Forwards to the real server, then stops listening after ``n`` completion requests (the server "dies")."""

    def __init__(self, target: str, n: int) -> None:
        import httpx

        self.left, self.client, proxy = n, httpx.Client(base_url=target, timeout=60), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _forward(self, method):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
                if self.path.startswith("/v1/completions"):
                    proxy.left -= 1
                    if proxy.left < 0:
                        self.close_connection = True
                        threading.Thread(target=proxy.stop, daemon=True).start()
                        return
                r = proxy.client.request(method, self.path, content=body,
                                         headers={"Content-Type": "application/json"})
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()  # the port stops accepting: the trainer's next request is refused


@needs_vllm
def test_a_server_that_dies_mid_run_stops_it_clearly_and_the_run_resumes(world, base128, server, tmp_path):
    from rlhf.runtime import checkpoint
    from rlhf.training.ppo import PPOTrainer

    proxy = DyingProxy(server.url, n=4 * 2)  # rollout_batch_size 4: two steps' rows, then nothing answers
    out = tmp_path / "run"
    cfg = vllm_ppo_config(world, base128, out, proxy.url, save_every=1)
    with pytest.raises(EngineError, match=rf"the vLLM server at {proxy.url} stopped answering .*The run stops here "
                                          r"and its last checkpoint is whole: .*resume with --resume_from latest"):
        PPOTrainer(load_config(PPOConfig, cfg)).train()
    assert checkpoint.resolve("latest", out / "checkpoints").name == "step_00000002"
    assert checkpoint.verify(out / "checkpoints" / "step_00000002") is None
    cfg = vllm_ppo_config(world, base128, out, server.url, save_every=1)
    PPOTrainer(load_config(PPOConfig, cfg, ["--resume_from", "latest"])).train()
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/kl" in r] == [1, 2, 3]
    assert all(0 <= r["rollout/logprob_diff_mean"] <= r["rollout/logprob_diff_max"] for r in rows if "train/kl" in r)

    # evaluation on the same engine: every grid lambda an adapter in one call; greedy, the same front as HF's
    from rlhf.evaluation.evaluate import evaluate, parse_args

    common = ["--run", str(out), "--n_prompts", "4", "--grid", "0.5", "--max_new_tokens", "8", "--greedy",
              "--no_wandb"]
    hf = evaluate(parse_args(common + ["--out", str(tmp_path / "eval_hf")]))
    vl = evaluate(parse_args(common + ["--out", str(tmp_path / "eval_vllm"), "--backend",
                                       f"{{name: vllm, url: '{server.url}'}}"]))
    assert len(hf["points"]) == 3 and vl["points"] == hf["points"]


@needs_vllm
@pytest.mark.slow
def test_vllm_ppo_resumes_exactly_after_kill_9(world, base128, server, tmp_path):
    """Killed (SIGKILL) after its first checkpoint and resumed, a vLLM-backed run logs the metrics of one that was
    never interrupted: the rows' seeds come from the checkpointed generator."""

    def run(out, extra=(), kill=False):
        run_ppo_cli(vllm_ppo_config(world, base128, out, server.url, total_steps=4, save_every=2), extra, kill)

    run(tmp_path / "full")
    run(tmp_path / "killed", kill=True)
    assert len(untimed_metrics(tmp_path / "killed")) < 4, "the kill came too late to test resumption"
    run(tmp_path / "killed", ["--resume_from", "latest"])
    full = untimed_metrics(tmp_path / "full")
    assert untimed_metrics(tmp_path / "killed") == full
    assert len({json.dumps(r.get("train/score/helpful")) for r in full}) > 1  # sampled, not constant


@needs_vllm
@pytest.mark.slow
def test_zero3_on_two_ranks_syncs_the_gathered_adapter(world, base128, server, tmp_path):
    """ZeRO-3 partitions the adapter's factors over 2 ranks: each rank's sync gathers them whole (and only them) and
    loads them under its own adapter names on the shared engine; the engine then samples from exactly the trainer's
    policy (its token log-probs equal the trainer's), step after step."""
    import subprocess

    from tests.helpers import clean_env

    out = tmp_path / "z3"
    cfg = vllm_ppo_config(world, base128, out, server.url, ds_config="ds_configs/zero3.json", world_size=2,
                          total_steps=3)
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", "29791", "rlhf/train_ppo.py", "--config", str(cfg)]
    proc = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [r for r in untimed_metrics(out) if "train/kl" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["rollout/logprob_diff_max"] < 1e-3 and r["rollout/logprob_diff_mean"] < 1e-5 for r in rows), rows
