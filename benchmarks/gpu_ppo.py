"""One prepared GPU run: the phases of a Panacea PPO step on a random-init 1.1B Llama (bf16), plus a smoke test of
the adapter math on CUDA. Needs only torch + transformers (no DeepSpeed), so it runs on a bare GPU image.

    python benchmarks/gpu_ppo.py [--batch 64 --prompt 128 --new 128] [--out results.json]
    python benchmarks/gpu_ppo.py --tiny          # a seconds-long CPU check of the script itself

Measures: rollout tokens/s (HF eager generate) with the SVD-LoRA adapter unmerged, merged for the batch's lambda,
merged with the static-cache + torch.compile backend (compile time and recompiles after a new lambda reported),
and with per-sample lambdas; the reference/old log-prob passes; one actor update (forward + backward + AdamW on
the adapter) with its MFU; peak memory; and the decode memory floor (weights read once per step at the measured
copy bandwidth). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf.adapter.svd_lora import (SVDLoRAConfig, adapter_disabled, apply_svd_lora, merge_preference, set_preference,
                                   svd_lora_layers, unmerge_preference)
from rlhf.algo.losses import policy_loss
from rlhf.rollout.backends import HFStaticCompiled, compiled_graphs
from rlhf.rollout.rollout import policy_and_reference_logprobs, response_logprobs


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int = 1):
    fn()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    sync()
    return (time.perf_counter() - t0) / repeats, out


def copy_bandwidth(dev: torch.device) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read and written."""
    x = torch.empty(1 << 28, dtype=torch.float32, device=dev)  # 1 GiB
    y = torch.empty_like(x)
    t, _ = timed(lambda: y.copy_(x), repeats=5)
    return 2 * x.numel() * 4 / t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--update_micro", type=int, default=16)
    ap.add_argument("--peak_tflops", type=float, default=989.0, help="dense bf16 peak of the card (H100/H200 SXM)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if args.tiny:
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=512)
        args.batch, args.prompt, args.new, args.update_micro = 4, 8, 8, 2
    else:  # TinyLlama-1.1B shape
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                          num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    n_base = sum(p.numel() for p in model.parameters())
    apply_svd_lora(model, SVDLoRAConfig(rank=8, pref_dim=2))
    with torch.no_grad():
        for _, layer in svd_lora_layers(model):
            layer.lora_sigma.fill_(0.01)
            layer.lora_s.fill_(0.01)
    lam = torch.tensor([0.3, 0.7])
    B, P, T = args.batch, args.prompt, args.new
    prompts = torch.randint(3, cfg.vocab_size, (B, P), device=dev)
    mask = torch.ones_like(prompts)
    gen = dict(max_new_tokens=T, min_new_tokens=T, do_sample=True, top_k=0, pad_token_id=0, eos_token_id=2)
    rows, results = [], {"device": torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor(),
                         "torch": torch.__version__, "params": n_base, "batch": B, "prompt": P, "new": T}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def rollout(pref):
        set_preference(model, pref)
        with torch.no_grad():
            return model.generate(input_ids=prompts, attention_mask=mask, **gen)

    t_unmerged, seqs = timed(lambda: rollout(lam))
    rows.append(("generate, adapter unmerged", t_unmerged, B * T / t_unmerged))
    merge_preference(model, lam)
    t_merged, _ = timed(lambda: model.generate(input_ids=prompts, attention_mask=mask, **gen))
    rows.append(("generate, lambda merged into W0", t_merged, B * T / t_merged))
    # hf_static_compile (rlhf/rollout/backends.py): static KV cache + compiled decode step; CUDA graphs on the GPU
    backend = HFStaticCompiled("inductor" if dev.type == "cuda" else "eager",
                               "reduce-overhead" if dev.type == "cuda" else None)
    static = dict(gen, cache_implementation="static", compile_config=backend.compile_config)
    g0, t0 = compiled_graphs(), time.perf_counter()
    t_static, _ = timed(lambda: model.generate(input_ids=prompts, attention_mask=mask, **static))
    results["static_compile_first_call_s"] = time.perf_counter() - t0 - t_static
    unmerge_preference(model)
    merge_preference(model, torch.tensor([0.8, 0.2]))  # a new lambda: same graph, weights changed in place
    g1 = compiled_graphs()
    model.generate(input_ids=prompts, attention_mask=mask, **static)
    results["recompiles_after_new_lambda"] = compiled_graphs() - g1
    results["graphs_compiled"] = g1 - g0
    unmerge_preference(model)
    rows.append(("generate, merged, static cache + torch.compile", t_static, B * T / t_static))
    per_sample = torch.distributions.Dirichlet(torch.ones(2)).sample((B,))
    t_ps, _ = timed(lambda: rollout(per_sample))
    rows.append(("generate, per-sample lambda (eval)", t_ps, B * T / t_ps))
    with adapter_disabled(model):
        t_base, _ = timed(lambda: model.generate(input_ids=prompts, attention_mask=mask, **gen))
    rows.append(("generate, no adapter (reference)", t_base, B * T / t_base))

    full_mask = torch.ones_like(seqs)
    set_preference(model, lam)
    with torch.no_grad():
        t_old, old = timed(lambda: response_logprobs(model, seqs, full_mask, T, 1.0)[0])
        with adapter_disabled(model):
            t_ref, ref = timed(lambda: response_logprobs(model, seqs, full_mask, T, 1.0)[0])
        t_both, _ = timed(lambda: policy_and_reference_logprobs(model, seqs, full_mask, T, 1.0, lam))
    rows.append(("old log-probs (adapter on)", t_old, B * (P + T) / t_old))
    rows.append(("ref log-probs (adapter off)", t_ref, B * (P + T) / t_ref))
    rows.append(("old + ref log-probs in one pass (as PPO runs)", t_both, 2 * B * (P + T) / t_both))

    # actor update: micro-batches of the rollout, LS loss, AdamW on the adapter only
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=dev.type == "cuda")
    adv = torch.randn(B, T, 2, device=dev)
    m = args.update_micro

    def update():
        for s in range(0, B, m):
            lp, _ = response_logprobs(model, seqs[s:s + m], full_mask[s:s + m], T, 1.0)
            loss, _ = policy_loss(lp, old[s:s + m], adv[s:s + m], torch.zeros_like(lp), torch.ones_like(lp),
                                  lam.to(dev), clip=0.2)  # LS: the weights are lambda
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t_upd, loss = timed(update)
    tokens = B * (P + T)
    flops = 4 * n_base * tokens  # forward 2N + input-gradient 2N per token; frozen W0 needs no weight gradient
    rows.append(("actor update (fwd+bwd+AdamW)", t_upd, tokens / t_upd))
    results["update_mfu"] = flops / t_upd / (args.peak_tflops * 1e12) if dev.type == "cuda" else None
    assert torch.isfinite(loss), "non-finite loss on the device"
    assert old.shape == (B, T) and torch.isfinite(old).all() and torch.isfinite(ref).all()

    bw = copy_bandwidth(dev) if dev.type == "cuda" else None
    if bw:
        floor_step = 2 * n_base / (bw / 2)  # weights read once per decode step; copy counts read + write
        results["decode_floor_tokens_per_s"] = B / floor_step
        results["copy_bandwidth_TBps"] = bw / 1e12
        results["rollout_fraction_of_floor_merged"] = (B * T / t_merged) / results["decode_floor_tokens_per_s"]
        results["rollout_fraction_of_floor_static_compile"] = (B * T / t_static) / results["decode_floor_tokens_per_s"]
    if dev.type == "cuda":
        results["peak_memory_GiB"] = torch.cuda.max_memory_allocated() / 2 ** 30
    results["phases"] = [{"phase": r[0], "seconds": r[1], "tokens_per_s": r[2]} for r in rows]
    print(f"\n{results['device']}, torch {results['torch']}, {n_base / 1e9:.2f}B params, batch {B}, "
          f"prompt {P} + {T} new tokens, bf16")
    print("| phase | seconds | tokens/s |\n|---|---|---|")
    for name, t, tps in rows:
        print(f"| {name} | {t:.3f} | {tps:,.0f} |")
    for k in ("decode_floor_tokens_per_s", "rollout_fraction_of_floor_merged",
              "rollout_fraction_of_floor_static_compile", "static_compile_first_call_s", "graphs_compiled",
              "recompiles_after_new_lambda", "update_mfu", "peak_memory_GiB", "copy_bandwidth_TBps"):
        if results.get(k) is not None:
            print(f"{k}: {results[k]:.4g}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
