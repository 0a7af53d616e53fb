"""The product's own GPU path end to end, in one prepared call (``bash benchmarks/gpu_e2e.sh``; issue 21).

    python benchmarks/gpu_e2e.py --out DIR            # one GPU: 1.1B Llama (TinyLlama shape), bf16
    python benchmarks/gpu_e2e.py --out DIR --tiny     # the same items on CPU with tiny models (checks the script)

Items, each through the real commands (``deepspeed --num_gpus 1 rlhf/train_ppo.py`` ...); a failing item prints its
traceback and the next one runs:
  1. PPO, a few steps per setting: ZeRO-2 + HF generate with lambda merged; ZeRO-2 + the compiled static-cache decode
     (``hf_static_compile``, CUDA graphs via reduce-overhead); ZeRO-3 + HF generate; the critic-free group
     estimator; then a checkpoint resume of the first;
  2. ``rlhf/evaluate.py`` on 11 preferences; one reward-model training of a few steps.
Then one table (per-phase seconds, rollout tokens/s and % of the decode memory floor, update MFU counting the FLOPs
the update needs, peak GPU memory, first-step compile overhead), printed and written to DIR/gpu_e2e.json.

Decode memory floor: a decode step must read every weight once (bf16: 2 bytes a parameter) and each row's KV cache;
``floor tokens/s = batch / ((2 N + KV bytes) / HBM bandwidth)``. Update FLOPs: W0 is frozen, so the actor (and the
critic with GAE) needs the forward (2 N per token) and the input gradients (2 N per token), not the weight
gradients: ``4 N x tokens`` per trained model; MFU = FLOPs / (update seconds x bf16 peak).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf.algo.advantages import ADVANTAGES  # noqa: E402

# H200 SXM: 4.8 TB/s HBM3e, ~989 TFLOP/s dense bf16 (the device notes measure ~790 TFLOP/s on matmuls)
HBM_BYTES_PER_S = 4.8e12
PEAK_BF16_FLOPS = 989e12

SHAPES = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "tinyllama-1.1b": (2048, 22, 32, 4, 5632, 32000),
    "score-0.3b": (1024, 16, 16, 8, 2816, 32000),   # the random-init reward and cost models on the GPU
    "tiny": (64, 2, 4, 2, 128, 512),
}


def log(msg: str) -> None:
    print(f"[gpu_e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare(root: Path, tiny: bool) -> dict:
    """A random-init policy of the shape, two random-init score models, prompts, preference pairs."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hhbench.task import write_task
    from hhbench.tiny import build_tokenizer
    from rlhf.scoring.score_model import write_dimension

    shape = "tiny" if tiny else "tinyllama-1.1b"
    hidden, layers, heads, kv, inter, vocab = SHAPES[shape]
    files = write_task(root / "data", seed=0, n_sft=10, n_pref=512, n_prompts=1024, n_eval=64)
    from rlhf.data.chat import DEFAULT_TEMPLATE

    texts = [DEFAULT_TEMPLATE.format(prompt=json.loads(l)["prompt"])
             for l in Path(files["prompts"]).read_text().splitlines()]
    tok = build_tokenizer(texts * 4, vocab_size=min(vocab, 4096))  # the prompts in their template: a few tokens
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=1024,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         tie_word_embeddings=False)
    policy = LlamaForCausalLM(config)
    policy.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    n_params = sum(p.numel() for p in policy.parameters())
    del policy
    from transformers import LlamaForSequenceClassification

    sh, sl, shd, skv, si, _ = SHAPES["tiny" if tiny else "score-0.3b"]
    score_config = LlamaConfig(vocab_size=vocab, hidden_size=sh, num_hidden_layers=sl, num_attention_heads=shd,
                               num_key_value_heads=skv, intermediate_size=si, max_position_embeddings=1024,
                               pad_token_id=tok.pad_token_id, num_labels=1)
    for name, kind, seed in (("rm", "reward", 1), ("cm", "cost", 2)):
        torch.manual_seed(seed)
        sm = LlamaForSequenceClassification(score_config)
        sm.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        write_dimension(root / name, name=name, kind=kind)
    return {"shape": shape, "params": n_params, "hidden": hidden, "layers": layers, "kv_heads": kv, "heads": heads,
            "files": files}


def ppo_config(root: Path, name: str, tiny: bool, **over) -> Path:
    import yaml

    cfg = {
        "actor_model": str(root / "policy"), "output_dir": str(root / name),
        "objectives": [{"name": "helpful", "model": str(root / "rm"), "kind": "reward", "batch_size": 64},
                       {"name": "harmless", "model": str(root / "cm"), "kind": "cost", "batch_size": 64}],
        "adapter": {"rank": 8, "pref_dim": 2}, "prompts": {"path": str(root / "data" / "prompts.jsonl"),
                                                            "max_prompt_length": 32 if tiny else 128},
        "generation": {"max_new_tokens": 8 if tiny else 128, "merge_adapter": True, "backend": "hf"},
        "ppo": {"ppo_epochs": 1, "kl_coef": 0.05},
        "rollout_batch_size": 8 if tiny else 64, "mini_batch_size": 8 if tiny else 64,
        "micro_batch_size": 4 if tiny else 16, "total_steps": 3, "precision": "fp32" if tiny else "bf16",
        "ds_config": "ds_configs/zero2.json", "save_every": 2, "sample_every": 0, "wandb": {"mode": "disabled"},
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(script: str, *args: str, port: int) -> subprocess.CompletedProcess:
    cmd = ["deepspeed", "--num_gpus", "1", "--master_port", str(port), script, *args]
    log("+ " + " ".join(cmd))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def phase_figures(run: Path, meta: dict, estimator: str, tiny: bool) -> dict:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if "time/generate" in r]
    later = rows[1:] or rows
    med = {k: statistics.median(r[k] for r in later) for k in ("time/generate", "time/score", "time/update",
                                                                 "perf/generate_tokens_per_s", "perf/update_tokens")}
    n, B = meta["params"], 8 if tiny else 64
    new, prompt = (8, 32) if tiny else (128, 128)
    head_dim = meta["hidden"] // meta["heads"]
    kv_bytes = 2 * meta["layers"] * meta["kv_heads"] * head_dim * 2 * (prompt + new / 2)  # K and V, mean context
    floor_tok_s = B / ((2 * n + B * kv_bytes) / HBM_BYTES_PER_S)
    trained = 2 if ADVANTAGES.get(estimator).NEEDS_CRITIC else 1                          # actor (+ critic)
    flops = 4 * n * med["perf/update_tokens"] * trained
    out = {"generate_s": med["time/generate"], "score_s": med["time/score"], "update_s": med["time/update"],
           "rollout_tok_s": med["perf/generate_tokens_per_s"],
           "pct_decode_floor": 100 * med["perf/generate_tokens_per_s"] / floor_tok_s, "decode_floor_tok_s": floor_tok_s,
           "update_mfu_pct": 100 * flops / (med["time/update"] * PEAK_BF16_FLOPS),
           "first_step_extra_s": rows[0]["time/generate"] - med["time/generate"] if rows else None}
    if "perf/peak_gpu_mem_gib" in rows[-1]:
        out["peak_gpu_mem_gib"] = max(r["perf/peak_gpu_mem_gib"] for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/gpu_e2e"))
    ap.add_argument("--tiny", action="store_true", help="CPU check of every item with tiny models")
    ap.add_argument("--work", default=None, help="where models and runs go (default: OUT/work)")
    args = ap.parse_args()
    import torch

    out = Path(args.out)
    root = Path(args.work) if args.work else out / "work"
    root.mkdir(parents=True, exist_ok=True)
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for mod in ("transformers", "deepspeed", "peft", "datasets"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as err:  # printed, not fatal: the item that needs it fails on its own
            versions[mod] = f"missing ({type(err).__name__})"
    log(json.dumps(versions))
    results: dict = {"versions": versions, "items": {}}
    meta = prepare(root, args.tiny)
    log(f"prepared {meta['shape']} ({meta['params'] / 1e9:.2f}B params)")
    compile_backend = {"compile_backend": "eager"} if args.tiny else {}
    settings = [
        ("zero2_hf_merged", {}, "gae"),
        ("zero2_static_compile", {"generation": {"backend": "hf_static_compile", **compile_backend}}, "gae"),
        ("zero3_hf", {"ds_config": "ds_configs/zero3.json", "generation": {"merge_adapter": False}}, "gae"),
        ("zero2_group", {"advantage": {"name": "group", "group_size": 4}}, "group"),
    ]
    port = 29900
    for name, over, estimator in settings:
        port += 1
        try:
            t0 = time.time()
            launch("rlhf/train_ppo.py", "--config", str(ppo_config(root, name, args.tiny, **over)), "--overwrite",
                   port=port)
            results["items"][name] = {"ok": True, "wall_s": round(time.time() - t0, 1),
                                      **phase_figures(root / name, meta, estimator, args.tiny)}
        except Exception:
            traceback.print_exc()
            results["items"][name] = {"ok": False, "error": traceback.format_exc()[-2000:]}
    items = [("resume", lambda: launch("rlhf/train_ppo.py", "--config", str(root / "zero2_hf_merged.yaml"),
                                       "--resume_from", "latest", "--total_steps", "5", port=29950)),
             ("evaluate_11", lambda: subprocess.run(
                 [sys.executable, "rlhf/evaluate.py", "--run", str(root / "zero2_hf_merged"), "--prompts",
                  str(root / "data" / "eval_prompts.jsonl"), "--grid", "0.1", "--n_prompts", "64", "--batch_size",
                  "16", "--max_new_tokens", "8" if args.tiny else "128", "--with_base", "--no_wandb", "--out",
                  str(root / "eval")], cwd=ROOT, check=True, capture_output=True, text=True)),
             ("reward_model", lambda: launch("reward_models/train.py", "--config", str(rm_config(root, args.tiny)),
                                             "--overwrite", port=29951))]
    for name, fn in items:
        try:
            t0 = time.time()
            fn()
            results["items"][name] = {"ok": True, "wall_s": round(time.time() - t0, 1)}
        except Exception:
            traceback.print_exc()
            results["items"][name] = {"ok": False, "error": traceback.format_exc()[-2000:]}
    if results["items"].get("resume", {}).get("ok"):
        steps = [json.loads(l)["step"] for l in (root / "zero2_hf_merged" / "metrics.jsonl").read_text().splitlines()
                 if "time/generate" in l]
        results["items"]["resume"]["steps_logged"] = steps
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_e2e.json").write_text(json.dumps({**results, "meta": {k: v for k, v in meta.items() if k != "files"}},
                                                 indent=2))
    print("\n| item | ok | wall s | generate s | score s | update s | rollout tok/s | % decode floor | update MFU % |"
          " peak GPU GiB | first-step extra s |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results["items"].items():
        f = lambda k, fmt="{:.2f}": fmt.format(r[k]) if r.get(k) is not None else "-"  # noqa: E731
        print(f"| {name} | {r['ok']} | {r.get('wall_s', '-')} | {f('generate_s')} | {f('score_s')} | {f('update_s')} | "
              f"{f('rollout_tok_s', '{:.0f}')} | {f('pct_decode_floor', '{:.1f}')} | {f('update_mfu_pct', '{:.1f}')} | "
              f"{f('peak_gpu_mem_gib', '{:.1f}')} | {f('first_step_extra_s', '{:.1f}')} |")
    log(f"wrote {out / 'gpu_e2e.json'}")


def rm_config(root: Path, tiny: bool) -> Path:
    import yaml

    path = root / "rm.yaml"
    path.write_text(yaml.safe_dump({
        "model_name_or_path": str(root / "policy"), "output_dir": str(root / "rm_trained"), "name": "helpful",
        "kind": "reward", "data": {"path": str(root / "data" / "preferences.jsonl"), "schema": "pku_saferlhf",
                                   "max_length": 64 if tiny else 256},
        "max_steps": 4, "micro_batch_size": 8, "precision": "fp32" if tiny else "bf16", "eval_every": 100,
        "save_every": 0, "ds_config": "ds_configs/zero2.json", "wandb": {"mode": "disabled"}}))
    return path


if __name__ == "__main__":
    main()
