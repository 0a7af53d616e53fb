"""Train a reward (higher = better) or cost (higher = worse) model.

    deepspeed reward_models/train.py --config configs/<rm>.yaml [--key value ...]
    python reward_models/train.py --config ... (one process, no launcher needed)

Data flows: preference rows -> pairs -> tokenised (better, worse) batches -> end scores (2B,) -> loss -> DeepSpeed
step; every ``eval_every`` optimiser steps, pairwise (and for costs, sign) accuracy on the held-out split.
The output directory is an ordinary HF sequence-classification model + tokenizer + ``dimension.json``.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from rlhf import engine
from rlhf.config import ConfigError, check, describe, doc_field, load_config, split_config_arg, to_dict
from rlhf.data import ensure_pad_token
from rlhf.loop import total_optimizer_steps, train_loop
from rlhf.tracking import Tracker, WandbConfig
from reward_models.data import PairTensors, PreferenceDataConfig, load_pairs
from reward_models.losses import score_model_loss
from reward_models.score_model import end_scores, write_dimension


@dataclass(frozen=True)
class ScoreTrainConfig:
    """One score model: what to start from, which data, how to train, where to write."""

    model_name_or_path: str = doc_field("", "backbone to start from (hub name or path); a causal LM is fine")
    tokenizer_name_or_path: Optional[str] = doc_field(None, "tokenizer (null: the model's own)")
    output_dir: str = doc_field("runs/score_model", "where the trained model, tokenizer and dimension.json go")
    name: str = doc_field("helpful", "objective name recorded in dimension.json (e.g. helpful, harmless)")
    kind: Literal["reward", "cost"] = doc_field("reward", "reward: higher = better; cost: higher = worse")
    data: PreferenceDataConfig = doc_field(factory=PreferenceDataConfig, doc="preference data")
    ds_config: str = doc_field("ds_configs/zero2.json", "DeepSpeed JSON; its \"auto\" keys are filled from here")
    precision: Literal["fp32", "bf16", "fp16"] = doc_field("bf16", "training precision")
    epochs: int = doc_field(1, "passes over the training pairs")
    max_steps: Optional[int] = doc_field(None, "stop after this many optimiser steps (null: epochs decide)")
    micro_batch_size: int = doc_field(8, "pairs per forward pass per process")
    grad_accum: int = doc_field(1, "micro-batches per optimiser step")
    lr: float = doc_field(2e-5, "peak learning rate")
    weight_decay: float = doc_field(0.1, "AdamW weight decay")
    warmup_ratio: float = doc_field(0.03, "fraction of steps with linear warm-up")
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = doc_field("cosine", "decay after warm-up")
    max_grad_norm: float = doc_field(1.0, "gradient clipping")
    score_reg_coef: float = doc_field(0.001, "coefficient of mean(score^2), keeps scores near 0")
    eval_every: int = doc_field(50, "evaluate every N optimiser steps (and at the end)")
    log_every: int = doc_field(10, "log training metrics every N optimiser steps")
    eval_batch_size: int = doc_field(16, "pairs per evaluation forward pass")
    gradient_checkpointing: bool = doc_field(False, "trade compute for activation memory")
    seed: int = doc_field(42, "seed for data order, held-out split and init")
    wandb: WandbConfig = doc_field(factory=WandbConfig, doc="W&B logging")

    def __post_init__(self) -> None:
        check(bool(self.model_name_or_path), "model_name_or_path", "is required: a hub name or a local path")
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be >= 1 or null, got {self.max_steps}")
        check(self.micro_batch_size >= 1, "micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        check(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(self.score_reg_coef >= 0, "score_reg_coef", f"must be >= 0, got {self.score_reg_coef}")
        check(self.eval_every >= 1 and self.log_every >= 1, "eval_every", "eval_every and log_every must be >= 1")


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: PairTensors, kind: str, batch_size: int) -> dict[str, float]:
    """Pairwise accuracy, score mean/std (and sign accuracy for costs) over the held-out pairs, summed over ranks."""
    model.eval()
    dev = engine.device()
    idx = list(range(engine.rank(), len(data), engine.world_size()))
    # correct, count, sum, sum^2, n_scores, sign_correct, sign_count
    acc = torch.zeros(7, dtype=torch.float64, device=dev)
    for start in range(0, len(idx), batch_size):
        batch = data.batch(idx[start:start + batch_size])
        scores = end_scores(model, batch["input_ids"].to(dev), batch["attention_mask"].to(dev))  # (2b,)
        better, worse = scores.chunk(2)                                                          # (b,), (b,)
        margin = better - worse if kind == "reward" else worse - better
        signs = torch.cat([batch["better_sign"], batch["worse_sign"]]).to(dev)                  # (2b,)
        known = signs != 0
        acc += torch.tensor([(margin > 0).sum().item(), margin.numel(), scores.sum().item(),
                             scores.pow(2).sum().item(), scores.numel(),
                             ((signs * scores)[known] > 0).sum().item(), known.sum().item()],
                            dtype=torch.float64, device=dev)
    engine.all_reduce_sum(acc)
    model.train()
    correct, count, s, s2, n, sc, sn = acc.tolist()
    mean = s / max(n, 1)
    out = {"eval/accuracy": correct / max(count, 1), "eval/score_mean": mean,
           "eval/score_std": math.sqrt(max(s2 / max(n, 1) - mean * mean, 0.0))}
    if kind == "cost" and sn > 0:
        out["eval/sign_accuracy"] = sc / sn
    return out


def _save(model_engine: Any, tokenizer: Any, cfg: ScoreTrainConfig, out: Path, metrics: dict[str, Any]) -> None:
    """Write model + tokenizer + dimension.json to a temp dir, then rename: a crash never leaves half a model."""
    state = engine.full_state_dict(model_engine)  # collective under ZeRO-3: every rank takes part
    if engine.is_main():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model_engine.module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_dimension(tmp, name=cfg.name, kind=cfg.kind, **metrics)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    engine.barrier()


def train(cfg: ScoreTrainConfig) -> dict[str, Any]:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, get_scheduler

    engine.init_distributed()
    world = engine.world_size()
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_name_or_path or cfg.model_name_or_path)
    ensure_pad_token(tokenizer)
    # Data first: every data error surfaces before a model is loaded or a step is spent.
    train_pairs, eval_pairs = load_pairs(cfg.data, cfg.kind, cfg.seed)
    train_data = PairTensors(train_pairs, tokenizer, cfg.data.max_length, cfg.data.prompt_template, "training")
    eval_data = PairTensors(eval_pairs, tokenizer, cfg.data.max_length, cfg.data.prompt_template, "evaluation")
    total_steps = total_optimizer_steps(len(train_data), cfg.micro_batch_size, cfg.grad_accum, cfg.epochs,
                                        cfg.max_steps)
    ds_config = engine.resolve_ds_config(
        cfg.ds_config, micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum, lr=cfg.lr,
        weight_decay=cfg.weight_decay, precision=cfg.precision, max_grad_norm=cfg.max_grad_norm,
        hidden_size=getattr(AutoConfig.from_pretrained(cfg.model_name_or_path), "hidden_size", None))
    with engine.zero3_init(ds_config):
        model = AutoModelForSequenceClassification.from_pretrained(cfg.model_name_or_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    warmup = int(cfg.warmup_ratio * total_steps)
    model_engine = engine.initialize(model, ds_config, lambda opt: get_scheduler(
        cfg.lr_scheduler, opt, num_warmup_steps=warmup, num_training_steps=total_steps))
    out = Path(cfg.output_dir)
    tracker = Tracker(cfg.wandb, to_dict(cfg), str(out.parent / (out.name + "_wandb")), active=engine.is_main())
    if engine.is_main():
        print(f"[reward_models] {cfg.kind} model '{cfg.name}': {len(train_data)} train / {len(eval_data)} eval pairs, "
              f"world size {world}, {total_steps} optimiser steps of {cfg.micro_batch_size * cfg.grad_accum * world} "
              f"pairs", flush=True)
    dev = engine.device()

    def step_fn(indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = train_data.batch(indices)
        scores = end_scores(model_engine, batch["input_ids"].to(dev), batch["attention_mask"].to(dev))   # (2B,)
        better, worse = scores.chunk(2)                                                                 # (B,)
        loss, m = score_model_loss(better, worse, cfg.kind, cfg.score_reg_coef,
                                   batch["better_sign"].to(dev), batch["worse_sign"].to(dev))
        return loss, {"accuracy": m["accuracy"].item()}

    model_engine.train()
    res = train_loop(model_engine, len(train_data), micro_batch_size=cfg.micro_batch_size,
                     grad_accum=cfg.grad_accum, total_steps=total_steps, seed=cfg.seed, step_fn=step_fn,
                     eval_fn=lambda: evaluate(model_engine, eval_data, cfg.kind, cfg.eval_batch_size),
                     log_every=cfg.log_every, eval_every=cfg.eval_every, tracker=tracker, desc=f"train {cfg.name}")
    metrics, step = res.final_eval, res.steps
    summary = {"accuracy": metrics.get("eval/accuracy"), "sign_accuracy": metrics.get("eval/sign_accuracy"),
               "score_mean": metrics.get("eval/score_mean"), "score_std": metrics.get("eval/score_std"),
               "initial_accuracy": res.initial_eval["eval/accuracy"], "first_loss": res.losses[0],
               "final_loss": res.losses[-1],
               "train_steps": step, "world_size": world, "train_pairs": len(train_data),
               "eval_pairs": len(eval_data), "seconds": res.seconds,
               "base_model": cfg.model_name_or_path}
    _save(model_engine, tokenizer, cfg, out, summary)
    tracker.finish()
    if engine.is_main():
        print(f"[reward_models] saved {out} ({summary})", flush=True)
    return summary


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(__doc__ + "\nFields (YAML keys / --overrides):\n" + describe(ScoreTrainConfig))
        return
    path, overrides = split_config_arg(argv)
    try:
        cfg = load_config(ScoreTrainConfig, path, overrides)
    except ConfigError as err:
        sys.exit(f"config error: {err}")
    train(cfg)


if __name__ == "__main__":
    main()
