"""Critic-free vs GAE on our loop, and ours vs TRL's GRPOTrainer, per iteration on CPU (issue 19).

One process per measurement (so peak RSS belongs to it alone); ``benchmarks/group_compare.sh`` alternates them in
rounds and writes the tables. Commands:

    python benchmarks/ppo_compare.py prepare --size tiny --dir D        # policy + reward + cost models, prompts
    python benchmarks/group_compare.py ours --dir D --estimator gae     # our trainer, GAE with the D-head critic
    python benchmarks/group_compare.py ours --dir D --estimator group   # our trainer, group baselines, no critic
    python benchmarks/group_compare.py trl --dir D                      # TRL GRPOTrainer, two reward models
    python benchmarks/group_compare.py summarize --dir results.jsonl

Every variant samples ``--batch`` responses of ``--new`` tokens per iteration (temperature 1, top_k 0) and scores
them with the same two models, fp32, one optimiser step per iteration over the whole batch (two micro-batches).
GAE rolls out ``batch`` prompts once each; the group estimator and TRL roll out ``batch / G`` prompts G times each.
TRL trains the full policy for one fixed weighting (``reward_weights`` 0.5 / -0.5: the cost model negated) and
keeps a reference copy for its KL term (beta = our kl_coef); we train the SVD-LoRA adapter for the whole front and
take reference log-probs with the adapter off. Each run prints one RESULT line (seconds per iteration: the median
after the first, the warm-up; peak RSS).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.ppo_compare import peak_rss_mib  # noqa: E402
from rlhf.data.chat import DEFAULT_TEMPLATE  # noqa: E402

KL = 0.05


def run_ours(args: argparse.Namespace) -> dict:
    from rlhf.core.config import load_config
    from rlhf.training.ppo import PPOTrainer
    from rlhf.training.ppo_config import PPOConfig

    d = Path(args.dir)
    out = d / f"group_out_{args.estimator}"
    cfg = load_config(PPOConfig, None, [
        "--actor_model", str(d / "policy"), "--output_dir", str(out), "--overwrite",
        "--objectives", json.dumps([{"name": "helpful", "model": str(d / "rm"), "kind": "reward",
                                     "batch_size": args.batch},
                                    {"name": "harmless", "model": str(d / "cm"), "kind": "cost",
                                     "batch_size": args.batch}]),
        "--adapter.rank", "8", "--adapter.pref_dim", "2", "--prompts.path", str(d / "prompts.jsonl"),
        "--prompts.max_prompt_length", "32", "--generation.max_new_tokens", str(args.new),
        "--generation.merge_adapter", "true", "--advantage.name", args.estimator,
        "--advantage.group_size", str(args.group), "--ppo.kl_coef", str(KL),
        "--rollout_batch_size", str(args.batch), "--mini_batch_size", str(args.batch),
        "--micro_batch_size", str(args.batch // 2), "--ppo.ppo_epochs", "1", "--total_steps", str(args.iters),
        "--precision", "fp32", "--save_every", "0", "--sample_every", "0", "--wandb.mode", "disabled"])
    trainer = PPOTrainer(cfg)
    times, tokens = [], []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        m = trainer.train_step()
        times.append(time.perf_counter() - t0)
        tokens.append(m["perf/generate_tokens_per_s"] * m["time/generate"])
    trainer.run.close()
    return {"impl": f"ours {args.estimator}", "s_per_iter": statistics.median(times[1:]),
            "response_tokens": statistics.median(tokens[1:])}


def run_trl(args: argparse.Namespace) -> dict:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    d = Path(args.dir)
    tok = AutoTokenizer.from_pretrained(d / "policy", padding_side="left")
    prompts = [DEFAULT_TEMPLATE.format(prompt=json.loads(l)["prompt"]) for l in
               (d / "prompts.jsonl").read_text().splitlines()]
    n = args.batch // args.group * (args.iters + 1)
    data = Dataset.from_dict({"prompt": (prompts * (n // len(prompts) + 1))[:n]})
    policy = AutoModelForCausalLM.from_pretrained(d / "policy")
    rewards = [AutoModelForSequenceClassification.from_pretrained(d / name, num_labels=1) for name in ("rm", "cm")]
    cfg = GRPOConfig(output_dir=str(d / "trl_grpo_out"), per_device_train_batch_size=args.batch // 2,
                     gradient_accumulation_steps=2, num_generations=args.group, max_completion_length=args.new,
                     num_iterations=1, beta=KL, reward_weights=[0.5, -0.5], temperature=1.0, top_k=0,
                     learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                     fp16=False, seed=0, disable_tqdm=True, max_steps=args.iters)
    times: list[float] = []

    class Clock(TrainerCallback):  # one optimiser step per iteration: generation batch = the whole batch
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())

    trainer = GRPOTrainer(model=policy, reward_funcs=rewards, args=cfg, train_dataset=data, processing_class=tok,
                          reward_processing_classes=[tok, tok], callbacks=[Clock()])
    t0 = time.perf_counter()
    trainer.train()
    per_iter = [b - a for a, b in zip([t0] + times[:-1], times)]
    return {"impl": f"trl {trl.__version__} GRPO", "s_per_iter": statistics.median(per_iter[1:]),
            "iters": len(per_iter)}


def summarize(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["size"], r["impl"], r["batch"], r["new"]), []).append(r)
    med = {k: {f: statistics.median(x[f] for x in v) for f in ("s_per_iter", "peak_rss_mib")} for k, v in groups.items()}
    print("| model | impl | responses x tokens | s / iteration (median) | runs | peak RSS MiB |\n|---|---|---|---|---|---|")
    for (size, impl, b, n), m in sorted(med.items()):
        print(f"| {size} | {impl} | {b} x {n} | {m['s_per_iter']:.2f} | {len(groups[(size, impl, b, n)])} | "
              f"{m['peak_rss_mib']:.0f} |")
    for (size, impl, b, n), m in sorted(med.items()):
        group = med.get((size, "ours group", b, n))
        if group and impl != "ours group":
            print(f"\nours group / {impl} ({size}, {b} x {n}): {group['s_per_iter'] / m['s_per_iter']:.2f}x time, "
                  f"{group['peak_rss_mib'] / m['peak_rss_mib']:.2f}x peak RSS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["ours", "trl", "summarize"])
    ap.add_argument("--dir", required=True, help="model directory from ppo_compare.py prepare (summarize: results)")
    ap.add_argument("--estimator", choices=["gae", "group"], default="group")
    ap.add_argument("--batch", type=int, default=64, help="sampled responses per iteration")
    ap.add_argument("--group", type=int, default=4, help="samples per prompt (group estimator, TRL)")
    ap.add_argument("--new", type=int, default=40, help="response tokens")
    ap.add_argument("--iters", type=int, default=6, help="iterations; the first is warm-up")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.mode == "summarize":
        return summarize(Path(args.dir))
    res = run_ours(args) if args.mode == "ours" else run_trl(args)
    res.update(**json.loads((Path(args.dir) / "meta.json").read_text()), batch=args.batch, new=args.new,
               peak_rss_mib=round(peak_rss_mib(), 1), threads=torch.get_num_threads())
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
