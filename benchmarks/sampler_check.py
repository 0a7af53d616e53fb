"""Do two rollout engines sample the same distribution? A controlled check on a trained run: the same prompts under
the same lambda, sampled N times by each backend (HF with the global generator as a PPO rollout does, vLLM with
per-row seeds), compared on what PPO sees: the trainer's mean token log-prob of the samples (minus the entropy rate),
response length, the EOS rate and the trainer-vs-reference KL of the samples; each with its standard error.

    python benchmarks/sampler_check.py --run runs/quickstart/ppo --prompts runs/quickstart/data/prompts.jsonl \
        [--n 512] [--lambda 0.5,0.5] [--backends hf,hf_merged,vllm]

``hf_merged`` decodes with lambda merged into W0 (``generation.merge_adapter``, the shipped HF setting).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/quickstart/ppo")
    ap.add_argument("--prompts", default="runs/quickstart/data/prompts.jsonl")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lambda", dest="lam", default="0.5,0.5")
    ap.add_argument("--max_new_tokens", type=int, default=40)
    ap.add_argument("--max_prompt_length", type=int, default=32)
    ap.add_argument("--backends", default="hf,hf_merged,vllm")
    args = ap.parse_args()
    import contextlib

    from rlhf.adapter.policy import load_run_model
    from rlhf.adapter.svd_lora import merged
    from rlhf.data.chat import DEFAULT_TEMPLATE, format_prompt
    from rlhf.rollout.backends import make_backend
    from rlhf.rollout.rollout import generate, policy_and_reference_logprobs

    torch.manual_seed(0)
    model, tok, info = load_run_model(args.run)
    raw = [json.loads(l)["prompt"] for l in Path(args.prompts).read_text().splitlines()]
    template = info.prompt_template or DEFAULT_TEMPLATE
    texts = [format_prompt(tok, p, template) for p in raw]
    lam = torch.tensor([float(x) for x in args.lam.split(",")])
    rows = []
    for name in args.backends.split(","):
        merge = name == "hf_merged"
        backend = make_backend("vllm", max_model_len=256) if name == "vllm" else make_backend("hf")
        lp, lengths, eos, kl = [], [], [], []
        t = time.perf_counter()
        for start in range(0, args.n, args.batch):
            batch = [texts[(start + i) % len(texts)] for i in range(args.batch)]
            with merged(model, lam) if merge else contextlib.nullcontext():
                seqs, mask, P, rmask = generate(model, tok, batch, None if merge else lam,
                                                max_prompt_length=args.max_prompt_length,
                                                max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0,
                                                do_sample=True, backend=backend)
            old, ref = policy_and_reference_logprobs(model, seqs, mask, rmask.shape[1], 1.0, lam)  # (B, T) each
            n = rmask.sum(1).clamp(min=1)                                                           # (B,)
            lp += ((old * rmask).sum(1) / n).tolist()
            kl += (((old - ref) * rmask).sum(1)).tolist()
            lengths += rmask.sum(1).tolist()
            ended = (seqs[:, P:] == tok.eos_token_id) & rmask.bool()
            eos += ended.any(1).float().tolist()
        if hasattr(backend, "close"):
            backend.close()
        row = {"backend": name, "n": len(lp), "seconds": round(time.perf_counter() - t, 1)}
        for key, values in (("mean_token_logprob", lp), ("response_length", lengths), ("eos_rate", eos),
                            ("kl_to_reference", kl)):
            m, se = stats(values)
            row[key] = [round(m, 4), round(se, 4)]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| backend | samples | mean token log-prob | response length | EOS rate | KL to reference (sum) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cell = lambda k: f"{r[k][0]} ± {r[k][1]}"  # noqa: E731
        print(f"| {r['backend']} | {r['n']} | {cell('mean_token_logprob')} | {cell('response_length')} | "
              f"{cell('eos_rate')} | {cell('kl_to_reference')} |")


if __name__ == "__main__":
    main()
