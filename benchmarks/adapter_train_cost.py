"""Training-step cost of one SVD-LoRA adapted linear pair on CPU (forward + backward, W0 frozen).

    python benchmarks/adapter_train_cost.py [--tokens 1024] [--repeats 12]

Times a 768 -> 2048 -> 768 pair (the ~100M model's MLP shape) A/B-alternating: W0 alone (only the input gradient
flows through it), the adapter as shipped, and two rewrites that were tried and not kept (the output add fused into
one addmm; the singular values folded into V). The adapter adds ~2% FLOPs, but its 10-column matmuls run
memory-bound, which is what this measures (benchmarks/RESULTS.md, issue 8).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from rlhf.adapter.svd_lora import AdapterState, SVDLoRAConfig, SVDLoRALayer


def adapted(i: int, o: int) -> SVDLoRALayer:
    layer = SVDLoRALayer(nn.Linear(i, o, bias=False).requires_grad_(False), SVDLoRAConfig(rank=8, pref_dim=2))
    layer.state = AdapterState(preference=torch.tensor([0.5, 0.5]))
    return layer


def fused_add(layer: SVDLoRALayer, x: torch.Tensor) -> torch.Tensor:
    out = layer.base(x)                                                                 # (T, out)
    h = (x @ layer.lora_V) * (layer.c * layer.singular_values())                        # (T, k+D)
    return torch.addmm(out, h, layer.lora_U.T)


def scaled_v(layer: SVDLoRALayer, x: torch.Tensor) -> torch.Tensor:
    v = layer.lora_V * (layer.c * layer.singular_values())                              # (in, k+D)
    return torch.addmm(layer.base(x), x @ v, layer.lora_U.T)


VARIANTS = {"W0 only": lambda layer, x: layer.base(x), "SVD-LoRA (shipped)": lambda layer, x: layer(x),
            "tried: fused add": fused_add, "tried: sv folded into V": scaled_v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=12)
    args = ap.parse_args()
    torch.manual_seed(0)
    up, down = adapted(768, 2048), adapted(2048, 768)
    x0 = torch.randn(args.tokens, 768)                                                  # (T, 768)
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for _ in range(args.repeats):
        for name, f in VARIANTS.items():
            x = x0.clone().requires_grad_(True)
            t0 = time.perf_counter()
            f(down, torch.relu(f(up, x))).pow(2).mean().backward()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["W0 only"][2:])
    print(f"| variant ({args.tokens} tokens, {torch.get_num_threads()} threads) | ms | vs W0 only |\n|---|---|---|")
    for name, t in times.items():
        ms = statistics.median(t[2:])
        print(f"| {name} | {1000 * ms:.1f} | {ms / base:.2f}x |")


if __name__ == "__main__":
    main()
