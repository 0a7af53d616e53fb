"""PPO iteration cost on CPU: ours vs TRL 1.12's PPOTrainer, our phase breakdown, and reference-copy memory.

One process per measurement (so peak RSS belongs to it alone); ``benchmarks/ppo_compare.sh`` runs them in
alternating rounds and writes the table. Commands:

    python benchmarks/ppo_compare.py prepare --size tiny --dir D     # random-init policy + reward + cost models, prompts
    python benchmarks/ppo_compare.py ours --dir D --iters 6          # our trainer, two score models
    python benchmarks/ppo_compare.py ours --dir D --ref_copy         # same step, reference log-probs from a 2nd copy
    benchmarks/.venv-trl/bin/python benchmarks/ppo_compare.py trl --dir D   # TRL 1.12 experimental PPOTrainer, one RM
    python benchmarks/ppo_compare.py summarize --dir results.jsonl   # Markdown tables

Both sides get the same policy, prompts, batch (``--batch`` rollouts), response length (``--new`` tokens, sampled
at temperature 1, top_k 0), 2 PPO epochs x 2 mini-batches, fp32, and the machine's threads. Differences that are
the libraries' own: TRL trains the full policy and a full value model and keeps a separate reference model (or,
with ``--trl_peft``, a peft LoRA r=8 policy whose reference is the adapter switched off, like ours); we train the
SVD-LoRA adapter of actor and critic, take reference log-probs with the adapter off, and score with *two* models.
Ours runs as the quickstart ships it: lambda merged into W0 for generation (``--no_merge`` to switch off) and
each score model called once per rollout batch.
Each run prints one JSON line: seconds per iteration (median over iterations after the first), phases where known,
response tokens per iteration, and peak RSS.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, also for the TRL venv's interpreter
from rlhf.data.chat import DEFAULT_TEMPLATE  # noqa: E402

SIZES = {  # name: (hidden, layers, heads, vocab)
    "tiny": (128, 4, 4, 1024),      # the quickstart base: ~1M parameters
    "100m": (768, 18, 12, 32000),   # ~95M parameters (the local tokenizer stays far below 32k tokens)
}
PROMPTS = ["How do I {t}?", "Tell me how to {t}.", "Can you explain how to {t}?", "What is the best way to {t}?"]
TASKS = ["bake bread", "plant tomatoes", "learn chess", "fix a bike tyre", "write a poem", "save money",
         "train a puppy", "paint a wall", "cook rice", "study for exams", "steal a car", "forge a passport"]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(args: argparse.Namespace) -> None:
    from transformers import AutoModelForSequenceClassification

    from hhbench.tiny import build_tokenizer, tiny_causal_lm
    from rlhf.scoring.score_model import write_dimension

    hidden, layers, heads, vocab = SIZES[args.size]
    d = Path(args.dir)
    texts = [p.format(t=t) for p in PROMPTS for t in TASKS]
    # trained on the prompts as both sides see them (in our conversation template), so the template is a few tokens
    tok = build_tokenizer([DEFAULT_TEMPLATE.format(prompt=t) for t in texts] * 4, vocab_size=vocab)
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = tiny_causal_lm("llama", vocab_size=len(tok), hidden=hidden, layers=layers, heads=heads, seed=0, **ids)
    model.save_pretrained(d / "policy")
    tok.save_pretrained(d / "policy")
    for name, kind, seed in (("rm", "reward", 1), ("cm", "cost", 2)):
        torch.manual_seed(seed)
        sm = AutoModelForSequenceClassification.from_pretrained(d / "policy", num_labels=1)
        sm.config.pad_token_id = tok.pad_token_id
        sm.save_pretrained(d / name)
        tok.save_pretrained(d / name)
        write_dimension(d / name, name=name, kind=kind)
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts * 8))  # 384 rows
    meta = {"size": args.size, "params": sum(p.numel() for p in model.parameters())}
    (d / "meta.json").write_text(json.dumps(meta))
    print(json.dumps({"prepared": str(d), **meta}))


def summarize(path: Path) -> None:
    """Markdown tables from the RESULT lines of ppo_compare.sh (medians over rounds)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["size"], r["impl"], r["batch"], r["new"]), []).append(r)
    med = {k: {f: statistics.median(x[f] for x in v) for f in v[0] if isinstance(v[0][f], (int, float))}
           for k, v in groups.items()}
    print("| model | impl | batch x tokens | s / iteration (median) | runs | peak RSS MiB |\n|---|---|---|---|---|---|")
    for (size, impl, b, n), m in sorted(med.items()):
        print(f"| {size} | {impl} | {b} x {n} | {m['s_per_iter']:.2f} | {len(groups[(size, impl, b, n)])} | "
              f"{m['peak_rss_mib']:.0f} |")
    for (size, impl, b, n), m in sorted(med.items()):
        if impl.startswith("trl") and (size, "ours", b, n) in med:
            print(f"\nours / {impl} ({size}, {b} x {n}): {med[(size, 'ours', b, n)]['s_per_iter'] / m['s_per_iter']:.2f}x")
    print("\n| model | impl | generate s (tok/s) | score s (tok/s) | update s (tok/s) |\n|---|---|---|---|---|")
    for (size, impl, b, n), m in sorted(med.items()):
        if "generate_s" in m:
            print(f"| {size} | {impl} | {m['generate_s']:.2f} ({m['generate_tok_s']:.0f}) | {m['score_s']:.2f} "
                  f"({m['score_tok_s']:.0f}) | {m['update_s']:.2f} ({m['update_tok_s']:.0f}) |")


def run_ours(args: argparse.Namespace) -> dict:
    from rlhf.core.config import load_config
    from rlhf.training.ppo import PPOTrainer
    from rlhf.training.ppo_config import PPOConfig

    d = Path(args.dir)
    cfg = load_config(PPOConfig, None, [
        "--actor_model", str(d / "policy"), "--output_dir", str(d / f"ours_out{'_refcopy' if args.ref_copy else ''}"),
        "--objectives", json.dumps([  # one scoring call per model per rollout batch, as the quickstart ships
            {"name": "helpful", "model": str(d / "rm"), "kind": "reward", "batch_size": args.batch},
            {"name": "harmless", "model": str(d / "cm"), "kind": "cost", "batch_size": args.batch}]),
        "--adapter.rank", "8", "--adapter.pref_dim", "2", "--prompts.path", str(d / "prompts.jsonl"),
        "--prompts.max_prompt_length", "32", "--generation.max_new_tokens", str(args.new),
        "--generation.merge_adapter", str(not args.no_merge).lower(),
        "--rollout_batch_size", str(args.batch), "--mini_batch_size", str(args.batch // 2),
        "--micro_batch_size", str(args.batch // 2), "--ppo.ppo_epochs", "2", "--total_steps", str(args.iters),
        "--precision", "fp32", "--save_every", "0", "--sample_every", "0", "--wandb.mode", "disabled",
        "--ds_config", args.ds_config])
    trainer = PPOTrainer(cfg)
    if args.ref_copy:
        _use_reference_copy(trainer, d / "policy")
    times, phases, tokens = [], [], []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        m = trainer.train_step()
        times.append(time.perf_counter() - t0)
        phases.append([m["time/generate"], m["time/score"], m["time/update"]])
        tokens.append(m["perf/generate_tokens_per_s"] * m["time/generate"])
    med = [statistics.median(p[i] for p in phases[1:]) for i in range(3)]
    tok = statistics.median(tokens[1:])
    impl = "ours" + ("+ref_copy" if args.ref_copy else "") + ("+no_merge" if args.no_merge else "")
    return {"impl": impl, "s_per_iter": statistics.median(times[1:]),
            "generate_s": med[0], "score_s": med[1], "update_s": med[2], "response_tokens": tok,
            "generate_tok_s": tok / med[0], "score_tok_s": tok / med[1], "update_tok_s": tok / med[2]}


def _use_reference_copy(trainer, path: Path) -> None:
    """The memory baseline: reference log-probs from a second, frozen copy of the base (what the adapter-off pass
    saves). The copy's log-probs replace ours, so the step really depends on it."""
    import dataclasses

    from transformers import AutoModelForCausalLM

    from rlhf.rollout.rollout import response_logprobs

    ref = AutoModelForCausalLM.from_pretrained(path).eval().requires_grad_(False)
    rollout_fn = trainer._rollout

    def rollout(lam):
        r = rollout_fn(lam)
        with torch.no_grad():
            lp, _ = response_logprobs(ref, r.sequences, r.attention_mask, r.response_mask.shape[1],
                                      trainer.cfg.generation.temperature)                     # (B, T)
        return dataclasses.replace(r, ref_logprobs=lp * r.response_mask)

    trainer._rollout = rollout


def run_trl(args: argparse.Namespace) -> dict:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    d = Path(args.dir)
    tok = AutoTokenizer.from_pretrained(d / "policy", padding_side="left")
    prompts = [json.loads(line)["prompt"] for line in (d / "prompts.jsonl").read_text().splitlines()]
    # the exact prompt text our trainer builds (same template, same 32-token cap)
    enc = [tok(DEFAULT_TEMPLATE.format(prompt=p), truncation=True, max_length=32)["input_ids"] for p in prompts]
    data = Dataset.from_dict({"input_ids": (enc * (args.batch * (args.iters + 1) // len(enc) + 1))})
    policy = AutoModelForCausalLM.from_pretrained(d / "policy")
    value = AutoModelForSequenceClassification.from_pretrained(d / "rm", num_labels=1)
    reward = AutoModelForSequenceClassification.from_pretrained(d / "rm", num_labels=1)
    peft_config = None
    if args.trl_peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    ref = None if args.trl_peft else AutoModelForCausalLM.from_pretrained(d / "policy")
    cfg = PPOConfig(output_dir=str(d / "trl_out"), per_device_train_batch_size=args.batch // 2,
                    gradient_accumulation_steps=2, num_mini_batches=2, num_ppo_epochs=2,
                    local_rollout_forward_batch_size=args.batch, response_length=args.new, stop_token="eos",
                    total_episodes=args.batch * args.iters, num_sample_generations=0, report_to="none",
                    bf16=False, fp16=False, logging_steps=1, save_strategy="no", learning_rate=1e-3, seed=0,
                    disable_tqdm=True)

    times: list[float] = []

    class Clock(TrainerCallback):  # TRL calls on_step_end once per PPO iteration
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())

    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=data, value_model=value, peft_config=peft_config, callbacks=[Clock()])
    t0 = time.perf_counter()
    trainer.train()
    per_iter = [b - a for a, b in zip([t0] + times[:-1], times)]
    return {"impl": f"trl {trl.__version__}" + (" peft" if args.trl_peft else ""),
            "s_per_iter": statistics.median(per_iter[1:]), "iters": len(per_iter)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["prepare", "ours", "trl", "summarize"])
    ap.add_argument("--dir", required=True, help="model directory (summarize: the results .jsonl)")
    ap.add_argument("--size", choices=list(SIZES), default="tiny")
    ap.add_argument("--batch", type=int, default=64, help="rollouts per iteration")
    ap.add_argument("--new", type=int, default=40, help="response tokens")
    ap.add_argument("--iters", type=int, default=6, help="iterations; the first is warm-up")
    ap.add_argument("--ref_copy", action="store_true", help="ours: reference log-probs from a separate copy")
    ap.add_argument("--ds_config", default="ds_configs/zero2.json", help="ours: DeepSpeed config")
    ap.add_argument("--no_merge", action="store_true",
                    help="ours: generate through the adapter instead of W0 + dW(lambda) merged per batch")
    ap.add_argument("--trl_peft", action="store_true", help="trl: peft LoRA policy (reference = adapter off)")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.mode == "prepare":
        return prepare(args)
    if args.mode == "summarize":
        return summarize(Path(args.dir))
    res = run_ours(args) if args.mode == "ours" else run_trl(args)
    res.update(**json.loads((Path(args.dir) / "meta.json").read_text()), batch=args.batch, new=args.new, peak_rss_mib=round(peak_rss_mib(), 1), threads=torch.get_num_threads())
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
