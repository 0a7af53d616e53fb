"""Past one machine, on paper: GPU memory per rank and a step-time estimate for a Panacea PPO step (issue 21).

    python benchmarks/capacity.py                      # the standard table (1B, 7B, 70B; 8 x 80 GB; ZeRO 2 / 3)
    python benchmarks/capacity.py --model 7b --gpus 16 --gpu_mem 80 --zero 3 --estimator gae --prompts 1024

Memory per GPU (bytes), bf16 weights and activations, fp32 optimiser state for the trainable adapter only:
  actor W0 2N, critic backbone 2N (GAE only), D score models 2 N_s each (all three / G under ZeRO-3, plus the largest
  layer gathered twice over for prefetch); adapter params (k + D) (in + out) per adapted linear: fp32 master + Adam
  m, v = 12 bytes each, bf16 grad 2 (/ G under ZeRO 1-3); the merged-lambda copy of the adapted weights (ZeRO 0-2 with
  merge); the rollout KV cache 2 L kv_heads head_dim (P + T) B_rollout 2; training activations of one micro-batch,
  b s h L (34 + 5 a s / h) bytes (Megatron's count, no recomputation; with gradient checkpointing 2 b s h L), and the
  fp32 logits of the response positions b T V 4 (they dominate at large vocabularies).
Step time (seconds) for ``prompts`` rollouts of P prompt + T new tokens, data parallel over G GPUs:
  generation: T decode steps of B_rank rows, each reading 2N bytes of weights + the KV cache at ``rollout_floor`` of
  the HBM bandwidth (ZeRO-3: plus gathering the 2N bytes over the interconnect every step, which dominates);
  compute: forwards 2N per token (reference + old log-probs, critic values, D score models at 2 N_s), the updates at
  4N per token per trained model (W0 frozen: no weight gradients) x epochs, at ``mfu`` of the bf16 peak;
  ZeRO-3 training adds an all-gather of 2N bytes per forward and per backward of each micro-batch.
The defaults for the fractions are the ones measured here and published (RESULTS.md "Capacity").
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlhf.algo.advantages import ADVANTAGES  # noqa: E402

MODELS = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "135m": (576, 30, 9, 3, 1536, 49152),        # SmolLM2-135M (measured on CPU here)
    "1b": (2048, 22, 32, 4, 5632, 32000),         # TinyLlama 1.1B (the H200 measurements)
    "7b": (4096, 32, 32, 32, 11008, 32000),       # Llama-2-7B / Alpaca-7B (the paper's HH run)
    "13b": (5120, 40, 40, 40, 13824, 32000),
    "70b": (8192, 80, 64, 8, 28672, 32000),
    "350m": (1024, 24, 16, 16, 4096, 50272),      # OPT-350M (DeepSpeed-Chat's reward model)
}
GPUS = {"h200": (141, 4.8e12, 989e12), "h100": (80, 3.35e12, 989e12), "a800": (80, 2.0e12, 312e12),
        "a100-80": (80, 2.0e12, 312e12), "a100-40": (40, 1.55e12, 312e12)}  # GiB, HBM B/s, bf16 dense FLOP/s


def n_params(shape: tuple) -> tuple[int, int, int]:
    """(total params, params in the adapted linears, number of adapted linears) of a Llama shape."""
    h, L, heads, kv, inter, V = shape
    hd = h // heads
    attn = h * h + 2 * h * kv * hd + h * h
    mlp = 3 * h * inter
    return L * (attn + mlp) + 2 * V * h, L * (attn + mlp), 7 * L


@dataclass
class Setting:
    model: str = "7b"
    score_model: str = ""          # "" = same size as the policy (the paper: beaver-7b reward and cost)
    critic_model: str = ""         # "" = the policy's size (ours: the critic is the actor's base with D heads)
    gen_batch: int = 64            # rows one GPU decodes at once (a rank's rollouts go in chunks of this)
    gpu: str = "a800"
    gpus: int = 8
    zero: int = 3
    offload: bool = False          # ZeRO-3 offload of parameters and optimiser state to CPU
    estimator: str = "gae"
    D: int = 2
    rank: int = 8
    prompts: int = 1024            # rollouts per step, all GPUs together
    prompt_len: int = 512
    new_tokens: int = 512
    micro: int = 8                 # training micro-batch per GPU
    epochs: int = 1
    checkpointing: bool = True
    merge: bool = False
    rollout_floor: float = 0.3     # fraction of the decode memory floor the rollouts reach
    mfu: float = 0.3               # fraction of the bf16 peak the forward/backward passes reach
    interconnect: float = 25e9     # bytes/s per GPU for ZeRO-3 gathers across nodes (200 Gb/s IB); NVLink ~4e11
    pcie: float = 25e9             # bytes/s host <-> GPU (ZeRO-3 offload streams the weights over it)


def estimate(s: Setting) -> dict:
    shape = MODELS[s.model]
    h, L, heads, kv, inter, V = shape
    N, N_lin, n_lin = n_params(shape)
    Ns = n_params(MODELS[s.score_model or s.model])[0]
    Nc = n_params(MODELS[s.critic_model or s.model])[0]
    G, gib = s.gpus, 2**30
    mem_gpu, hbm, peak = GPUS[s.gpu]
    critic = ADVANTAGES.get(s.estimator).NEEDS_CRITIC
    backbones = 2 * N + (2 * Nc if critic else 0) + 2 * Ns * s.D                   # bf16 weights
    largest_layer = 2 * (N_lin / L)
    weights = backbones / G + 2 * largest_layer if s.zero == 3 else backbones
    if s.offload and s.zero == 3:
        weights = 2 * largest_layer * (2 + s.D)
    adapter = n_lin * (s.rank + s.D) * (2 * h + 2 * inter) / 2 * (2 if critic else 1)   # ~mean (in + out) per linear
    opt = adapter * (12 + 2) / (G if s.zero >= 1 else 1) * (0 if s.offload else 1)
    merge_copy = 2 * N_lin if s.merge and s.zero < 3 else 0
    B_rank = math.ceil(s.prompts / G)
    rows = min(B_rank, s.gen_batch)
    chunks = math.ceil(B_rank / rows)
    kv_cache = 2 * L * kv * (h // heads) * (s.prompt_len + s.new_tokens) * rows * 2
    seq = s.prompt_len + s.new_tokens
    act = (2 * s.micro * seq * h * L) if s.checkpointing else s.micro * seq * h * L * (34 + 5 * heads * seq / h)
    logits = s.micro * s.new_tokens * V * 4
    total = weights + opt + merge_copy + max(kv_cache, act + logits)
    # time
    tokens = s.prompts * seq
    step_floor = (2 * N + kv_cache) / hbm
    per_step = step_floor / s.rollout_floor
    if s.zero == 3 and s.offload:                                                   # every step streams W from host
        per_step = max(per_step, 2 * N / G / s.pcie + 2 * N * (G - 1) / G / s.interconnect)
    elif s.zero == 3:
        per_step = max(per_step, 2 * N * (G - 1) / G / s.interconnect)             # every decode step gathers W
    gen = chunks * s.new_tokens * per_step
    fwd_flops = 2 * tokens * (2 * N + (Nc if critic else 0) + s.D * Ns)              # ref+old, values, scores
    upd_flops = 4 * tokens * (N + (Nc if critic else 0)) * s.epochs
    compute = (fwd_flops + upd_flops) / (G * peak * s.mfu)
    gather = 0.0
    if s.zero == 3:
        micro_steps = math.ceil(B_rank / s.micro) * s.epochs
        gather = micro_steps * 2 * 2 * (N + (Nc if critic else 0)) * (G - 1) / G / s.interconnect
    step = gen + compute + gather
    return {**asdict(s), "params_b": round(N / 1e9, 2), "mem_per_gpu_gib": round(total / gib, 1),
            "fits": total / gib < mem_gpu * 0.9, "weights_gib": round(weights / gib, 1),
            "kv_cache_gib": round(kv_cache / gib, 1), "activations_gib": round((act + logits) / gib, 1),
            "generate_s": round(gen, 1), "compute_s": round(compute, 1), "zero3_gather_s": round(gather, 1),
            "step_s": round(step, 1), "s_per_1024_prompts": round(step * 1024 / s.prompts, 1)}


def table(rows: list[dict]) -> str:
    cols = ["model", "gpu", "gpus", "zero", "offload", "estimator", "prompts", "mem_per_gpu_gib", "fits",
            "generate_s", "compute_s", "zero3_gather_s", "s_per_1024_prompts"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def standard() -> list[dict]:
    """Which configurations fit, for 1B, 7B and 70B (1024 rollouts of 512 + 512 tokens a step; 1B: the H200 run)."""
    rows = []
    for model, gpus, zero, offload in (("1b", 1, 2, False), ("7b", 8, 2, False), ("7b", 8, 3, False),
                                       ("7b", 16, 3, False), ("70b", 8, 3, False), ("70b", 8, 3, True),
                                       ("70b", 64, 3, False)):
        for est in ("gae", "group"):
            gpu = "h200" if model == "1b" else "a800"
            rows.append(estimate(Setting(model=model, gpu=gpu, gpus=gpus, zero=zero, offload=offload, estimator=est,
                                         prompts=64 if model == "1b" else 1024,
                                         prompt_len=128 if model == "1b" else 512,
                                         new_tokens=128 if model == "1b" else 512, micro=8,
                                         interconnect=4e11 if gpus <= 8 else 25e9)))
    return rows


def checks() -> list[dict]:
    """The model against what was measured and published (RESULTS.md "Capacity" compares them)."""
    return [
        # measured here on one H200 (DESIGN.md §4): eager HF generate 64 x (128 + 128) at 4.1k tok/s ~ 2.0 s; LoRA
        # train step 32 x 256 at 39k tok/s
        dict(name="H200 1.1B, eager rollouts (measured 2.0 s generate)",
             **estimate(Setting(model="1b", gpu="h200", gpus=1, zero=2, prompts=64, prompt_len=128, new_tokens=128,
                                rollout_floor=0.034, mfu=0.10))),
        # OpenRLHF (vLLM rollouts, Ray): 7B PPO on 16 A800, 471 s per 1024 prompts
        dict(name="OpenRLHF 7B PPO, 16 A800 (published 471 s / 1024 prompts)",
             **estimate(Setting(model="7b", gpu="a800", gpus=16, zero=3, prompts=1024, prompt_len=1024,
                                new_tokens=1024, micro=4, rollout_floor=0.3, mfu=0.3))),
        # DeepSpeed-Chat step 3 (Hybrid Engine: TP generation): OPT-13B + OPT-350M RM, 8 A100-40G, 10.8 h for
        # 131.9k queries of 256 + 256 tokens in steps of 1024 (129 steps: 301 s per 1024 prompts)
        dict(name="DeepSpeed-Chat 13B step 3, 8 A100-40G (published 301 s / 1024 prompts)",
             **estimate(Setting(model="13b", score_model="350m", critic_model="350m", D=1, gpu="a100-40", gpus=8,
                                zero=3, prompts=1024, prompt_len=256, new_tokens=256, micro=4, gen_batch=16,
                                rollout_floor=0.3, mfu=0.3, interconnect=3e11))),
    ]


def paper_run() -> dict:
    """The paper's HH run with us (configs/ppo_paper_hh.yaml): Alpaca-7B, beaver-7b reward + cost, 8 A800, ZeRO-3,
    300 steps of 128 prompts (PKU-SafeRLHF prompts ~128 tokens) and 512 new tokens."""
    step = estimate(Setting(model="7b", gpu="a800", gpus=8, zero=3, prompts=128, prompt_len=128, new_tokens=512,
                            micro=4, interconnect=4e11, rollout_floor=0.05, mfu=0.15))
    fast = estimate(Setting(model="7b", gpu="a800", gpus=8, zero=2, merge=True, prompts=128, prompt_len=128,
                            new_tokens=512, micro=4, interconnect=4e11, rollout_floor=0.3, mfu=0.3))
    return {"zero3_hf_eager": step, "zero2_merged_fast_decode": fast,
            "hours_300_steps": {"zero3_hf_eager": round(step["step_s"] * 300 / 3600, 1),
                                "zero2_merged_fast_decode": round(fast["step_s"] * 300 / 3600, 1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f, v in asdict(Setting()).items():
        ap.add_argument(f"--{f}", type=(lambda x: x.lower() in ("1", "true", "yes")) if isinstance(v, bool) else type(v),
                        default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    given = {k: v for k, v in vars(args).items() if k != "json" and v is not None}
    if given:
        rows = [estimate(Setting(**{**asdict(Setting()), **given}))]
        print(json.dumps(rows, indent=2) if args.json else table(rows))
        return
    if args.json:
        print(json.dumps({"standard": standard(), "checks": checks(), "paper_run": paper_run()}, indent=2))
        return
    print("Which configurations fit (1024 rollouts of 512 + 512 tokens a step; 1B: 64 of 128 + 128 on an H200):\n")
    print(table(standard()))
    print("\nChecks against measured and published figures:\n")
    for c in checks():
        print(f"- {c['name']}: model {c['s_per_1024_prompts']} s / 1024 prompts (generate {c['generate_s']} s, "
              f"compute {c['compute_s']} s, ZeRO-3 gathers {c['zero3_gather_s']} s per step of {c['prompts']}), "
              f"{c['mem_per_gpu_gib']} GiB per GPU")
    p = paper_run()
    print(f"\nThe paper's HH run (Alpaca-7B + two 7B score models, 8 A800, 300 steps x 128 prompts): "
          f"{p['hours_300_steps']['zero3_hf_eager']} h with ZeRO-3 and eager HF decoding "
          f"({p['zero3_hf_eager']['step_s']} s/step, {p['zero3_hf_eager']['mem_per_gpu_gib']} GiB/GPU); "
          f"{p['hours_300_steps']['zero2_merged_fast_decode']} h with ZeRO-2, lambda merged and the fast decode at 30% "
          f"of the floor ({p['zero2_merged_fast_decode']['mem_per_gpu_gib']} GiB/GPU, fits: "
          f"{p['zero2_merged_fast_decode']['fits']})")


if __name__ == "__main__":
    main()
