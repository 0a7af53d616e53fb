"""Forward-pass cost of the SVD-LoRA adapter on CPU.

Compares (A/B alternating, median of repeats, same inputs):
  1. adapted (unmerged) SVD-LoRA, rank k + D = r   vs   peft LoRA of rank r on the same modules;
  2. merged SVD-LoRA (merge_and_unload)             vs   the plain base model.
Goals (issue 2): ratio 1 <= 1.05, ratio 2 <= 1.01.

    python benchmarks/adapter_overhead.py [--sizes tiny,100m] [--repeats 15]
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf.adapter.svd_lora import (SVDLoRAConfig, apply_svd_lora, count_parameters, merge_and_unload, set_preference,
                                   svd_lora_layers)

SIZES = {  # name: (hidden, layers, heads, intermediate, vocab, batch, seq)
    "tiny": (64, 2, 4, 128, 512, 8, 64),
    "100m": (768, 12, 12, 2048, 8000, 2, 128),
}


def timed(model, ids, repeats_inner=1):
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(repeats_inner):
            model(input_ids=ids)
        return (time.perf_counter() - t0) / repeats_inner


def ab(a, b, ids, repeats, inner):
    ta, tb = [], []
    for m in (a, b):  # warm-up
        timed(m, ids, inner)
    for _ in range(repeats):
        ta.append(timed(a, ids, inner))
        tb.append(timed(b, ids, inner))
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="tiny,100m")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--pref_dim", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}")
    print("| model | params | tokens | base ms | merged ms | merged/base | peft LoRA r=%d ms | SVD-LoRA ms | SVD/peft |"
          % (args.rank + args.pref_dim))
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        hidden, layers, heads, inter, vocab, batch, seq = SIZES[size]
        torch.manual_seed(0)
        base = LlamaForCausalLM(LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                            num_key_value_heads=heads, intermediate_size=inter, vocab_size=vocab,
                                            tie_word_embeddings=False)).eval()
        ids = torch.randint(0, vocab, (batch, seq))
        inner = 20 if size == "tiny" else 1
        svd = apply_svd_lora(copy.deepcopy(base), SVDLoRAConfig(rank=args.rank, pref_dim=args.pref_dim))
        with torch.no_grad():
            for _, layer in svd_lora_layers(svd):
                layer.lora_sigma.fill_(0.1)
                layer.lora_s.fill_(0.1)
        lam = [1.0 / args.pref_dim] * args.pref_dim
        set_preference(svd, lam)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=args.rank + args.pref_dim, lora_alpha=512,
                                                                    lora_dropout=0.0, target_modules=targets)).eval()
        merged = merge_and_unload(svd, lam)
        t_base, t_merged = ab(base, merged, ids, args.repeats, inner)
        t_peft, t_svd = ab(peft_model, svd, ids, args.repeats, inner)
        n = count_parameters(base)[1]
        print(f"| {size} | {n / 1e6:.1f}M | {batch}x{seq} | {t_base * 1e3:.2f} | {t_merged * 1e3:.2f} | "
              f"{t_merged / t_base:.3f} | {t_peft * 1e3:.2f} | {t_svd * 1e3:.2f} | {t_svd / t_peft:.3f} |", flush=True)


if __name__ == "__main__":
    main()
