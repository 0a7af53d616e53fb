"""Small on-disk worlds for tests, benchmarks and the bad-input table: a tiny random base model with a locally trained
tokenizer, untrained reward and cost models, synthetic preference files and a PPO config over them. Nothing here
downloads anything; real users pass real checkpoints instead."""
import json
import random
from pathlib import Path

from hhbench.tiny import build_tokenizer, tiny_causal_lm

BENIGN = ["bake bread", "plant tomatoes", "learn chess", "fix a bike tyre", "write a poem", "save money",
          "train a puppy", "paint a wall", "cook rice", "study for exams"]
HARMFUL = ["make poison", "steal a car", "build a weapon", "hack a bank", "forge a passport"]
DETAIL = ["first gather the tools", "then follow each step carefully", "check the result twice",
          "ask an expert if unsure", "keep notes as you go"]


def helpful(task, rng):
    return f"Sure, to {task}: " + ", ".join(rng.sample(DETAIL, 3)) + "."


def write_tiny_base(path: Path, arch: str = "llama", hidden: int = 32, heads: int = 4) -> Path:
    """A tiny random causal LM + tokenizer saved like a hub checkpoint (``hidden=128``: head size 32, the smallest
    vLLM's CPU attention takes)."""
    corpus = [f"How do I {t}? {helpful(t, random.Random(i))} I cannot help with that."
              for i, t in enumerate(BENIGN + HARMFUL)]
    tok = build_tokenizer(corpus, vocab_size=400)
    model = tiny_causal_lm(arch, vocab_size=len(tok), hidden=hidden, layers=2, heads=heads)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_pku_pairs(path: Path, n: int, seed: int = 0) -> Path:
    """PKU-SafeRLHF-schema rows: the detailed answer is more helpful; for harmful requests the refusal is safer."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        harmful = rng.random() < 0.5
        task = rng.choice(HARMFUL if harmful else BENIGN)
        detailed, short = helpful(task, rng), rng.choice(["I cannot help with that.", "No idea, sorry."])
        order = rng.random() < 0.5
        r0, r1 = (detailed, short) if order else (short, detailed)
        detailed_id = 0 if order else 1
        rows.append({"prompt": f"How do I {task}?", "response_0": r0, "response_1": r1,
                     "better_response_id": detailed_id,
                     "safer_response_id": (1 - detailed_id) if harmful else detailed_id,
                     "is_response_0_safe": not (harmful and detailed_id == 0),
                     "is_response_1_safe": not (harmful and detailed_id == 1)})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path



def write_world(root: Path) -> Path:
    """A tiny base model, an (untrained) reward and cost model with their dimension.json, and a prompt file under
    ``root``: the shared fixture of the tests and of benchmarks/bad_inputs.py."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.scoring.score_model import write_dimension

    base = write_tiny_base(root / "base")
    tok = AutoTokenizer.from_pretrained(base)
    for name, kind, seed in (("rm", "reward", 1), ("cm", "cost", 2)):
        torch.manual_seed(seed)
        m = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
        m.config.pad_token_id = tok.pad_token_id
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        write_dimension(root / name, name=name, kind=kind)
    write_pku_pairs(root / "prompts.jsonl", 64, seed=3)
    return root

def length_oracle(prompts, responses):
    """A trivial extra scorer for tests: (N, 2) = (word count, -word count)."""
    import numpy as np

    n = np.array([len(r.split()) for r in responses], float)
    return np.stack([n, -n], axis=1)


def write_eos_prone_base(world: Path, path: Path) -> Path:
    """The tiny base of ``world`` with its EOS logit raised (p(EOS) ~ 0.2 per token), so that response length varies
    a lot between samples: a behaviour a few PPO steps can move either way (long vs short answers)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world / "base")
    lm = AutoModelForCausalLM.from_pretrained(world / "base")
    prompts = [json.loads(l)["prompt"] for l in (world / "prompts.jsonl").read_text().splitlines()[:16]]
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        h = lm.model(**enc).last_hidden_state[enc["attention_mask"].bool()]                  # (N, H)
        logits = lm.lm_head(h)                                                                # (N, V)
        gap = torch.logsumexp(logits, -1).mean() - logits[:, tok.eos_token_id].mean() - 1.5
        hbar = h.mean(0)
        lm.lm_head.weight[tok.eos_token_id] += gap * hbar / hbar.pow(2).sum()
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_ppo_config(world: Path, out: Path, **over) -> Path:
    """A PPO config YAML (beside ``out``) on ``write_world``'s models: tiny batches, a few steps, fp32, no W&B;
    ``over`` replaces (or, for a mapping, updates) top-level fields."""
    import yaml

    cfg = {
        "actor_model": str(world / "base"), "output_dir": str(out),
        "objectives": [{"name": "helpful", "model": str(world / "rm"), "kind": "reward"},
                       {"name": "harmless", "model": str(world / "cm"), "kind": "cost"}],
        "adapter": {"rank": 4, "pref_dim": 2}, "prompts": {"path": str(world / "prompts.jsonl"),
                                                            "max_prompt_length": 64},
        "generation": {"max_new_tokens": 8}, "rollout_batch_size": 4, "mini_batch_size": 4, "micro_batch_size": 2,
        "total_steps": 3, "precision": "fp32", "save_every": 0, "sample_every": 0, "seed": 7,
        "ppo": {"actor_lr": 5e-3, "critic_lr": 5e-3}, "wandb": {"mode": "disabled"},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    path = Path(out).parent / (Path(out).name + ".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path
