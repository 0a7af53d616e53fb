"""Supervised fine-tuning: plain SFT (D = 1, full weights) and Panacea-SFT (D targets, SVD-LoRA, aggregated).

    deepspeed rlhf/train_sft.py --config configs/<x>.yaml [--key value ...]
    python rlhf/train_sft.py --help

Plain SFT (``adapter: null``, one response column) trains every weight and writes an ordinary HF checkpoint: it
builds the base models of the embedded benchmark. Panacea-SFT (``adapter`` set, one response column per
objective) computes one language-model loss per dimension ``L_i`` on the same prompts and aggregates them under a
sampled lambda with the registry PPO uses (``ls``: sum_i lambda_i L_i; ``tche``: max_i lambda_i L_i), the
preference written into the adapter (Panacea §3.3, chat experiments). Output: ``output_dir/policy/`` (the run
format ``evaluate.py`` reads).
"""
from __future__ import annotations

import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from rlhf import engine
from rlhf.aggregation import get_aggregator
from rlhf.config import ConfigError, check, describe, doc_field, load_config, split_config_arg, to_dict
from rlhf.data import DEFAULT_TEMPLATE, DataError, ensure_pad_token, format_prompt, load_rows, pad_batch, \
    require_columns
from rlhf.loop import total_optimizer_steps, train_loop
from rlhf.preference import PreferenceConfig, sample_preference
from rlhf.svd_lora import SVDLoRAConfig, apply_svd_lora, save_adapter, set_preference
from rlhf.tracking import Tracker, WandbConfig


@dataclass(frozen=True)
class SFTDataConfig:
    """Prompts with one target response column per objective."""

    path: str = doc_field("", "hub dataset name or local .json/.jsonl/.parquet/.csv file")
    split: str = doc_field("train", "split (hub datasets)")
    prompt_column: str = doc_field("prompt", "column with the user prompt")
    response_columns: tuple[str, ...] = doc_field(("response",), "target columns, one per objective (lambda order)")
    eval_fraction: float = doc_field(0.05, "fraction of rows held out for evaluation")
    max_length: int = doc_field(256, "prompt + response tokens kept (responses truncated at the end)")
    prompt_template: str = doc_field(DEFAULT_TEMPLATE, "layout when the tokenizer has no chat template")
    max_samples: Optional[int] = doc_field(None, "use at most this many rows (null: all)")

    def __post_init__(self) -> None:
        check(bool(self.path), "data.path", "is required: a hub dataset name or a local data file")
        check(len(self.response_columns) >= 1, "data.response_columns", "needs at least one column")
        check(0 < self.eval_fraction < 1, "data.eval_fraction", f"must be in (0, 1), got {self.eval_fraction}")


@dataclass(frozen=True)
class SFTConfig:
    """An SFT or Panacea-SFT run."""

    model_name_or_path: str = doc_field("", "model to fine-tune (hub name or path)")
    tokenizer: Optional[str] = doc_field(None, "tokenizer (null: the model's own)")
    output_dir: str = doc_field("runs/sft", "where the model (plain SFT) or policy/ (Panacea-SFT) goes")
    objectives: tuple[str, ...] = doc_field(("sft",), "objective names, one per response column")
    adapter: Optional[SVDLoRAConfig] = doc_field(None, "null: full fine-tuning (plain SFT); set: Panacea-SFT")
    data: SFTDataConfig = doc_field(factory=SFTDataConfig, doc="training data")
    preference: PreferenceConfig = doc_field(factory=PreferenceConfig, doc="lambda sampling (Panacea-SFT)")
    aggregation: Literal["ls", "tche", "stche"] = doc_field("ls", "how per-dimension losses combine")
    stche_mu: float = doc_field(0.1, "temperature of smooth Tchebycheff")
    ds_config: str = doc_field("ds_configs/zero2.json", "DeepSpeed JSON (\"auto\" keys filled from here)")
    precision: Literal["fp32", "bf16", "fp16"] = doc_field("bf16", "training precision")
    epochs: int = doc_field(1, "passes over the data")
    max_steps: Optional[int] = doc_field(None, "stop after this many optimiser steps (null: epochs decide)")
    micro_batch_size: int = doc_field(8, "rows per forward pass per process")
    grad_accum: int = doc_field(1, "micro-batches per optimiser step")
    lr: float = doc_field(2e-5, "peak learning rate")
    weight_decay: float = doc_field(0.0, "AdamW weight decay")
    warmup_ratio: float = doc_field(0.03, "fraction of steps with linear warm-up")
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = doc_field("cosine", "decay after warm-up")
    max_grad_norm: float = doc_field(1.0, "gradient clipping")
    eval_every: int = doc_field(100, "evaluate every N optimiser steps (and at the end)")
    log_every: int = doc_field(10, "log every N optimiser steps")
    gradient_checkpointing: bool = doc_field(False, "trade compute for activation memory")
    seed: int = doc_field(42, "seed")
    wandb: WandbConfig = doc_field(factory=WandbConfig, doc="W&B logging")

    def __post_init__(self) -> None:
        check(bool(self.model_name_or_path), "model_name_or_path", "is required")
        D = len(self.objectives)
        check(len(self.data.response_columns) == D, "data.response_columns",
              f"has {len(self.data.response_columns)} columns but {D} objectives {list(self.objectives)}")
        if self.adapter is None:
            check(D == 1, "adapter", f"plain SFT (adapter: null) takes one objective; {D} need an adapter")
        else:
            check(self.adapter.pref_dim == D, "adapter.pref_dim",
                  f"is {self.adapter.pref_dim} but {D} objectives are configured; they must match")
        check(self.epochs >= 1 and self.micro_batch_size >= 1 and self.grad_accum >= 1, "epochs",
              "epochs, micro_batch_size and grad_accum must be >= 1")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


class SFTData:
    """Token ids per row: prompt (unlabelled) + each objective's response + EOS (labelled)."""

    def __init__(self, rows: list[dict[str, Any]], cfg: SFTDataConfig, tokenizer: Any) -> None:
        self.pad_id, D = tokenizer.pad_token_id, len(cfg.response_columns)
        prompts = [format_prompt(tokenizer, r[cfg.prompt_column], cfg.prompt_template) for r in rows]
        p_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        self.items: list[list[tuple[list[int], int]]] = []  # row -> per dimension (ids, prompt length)
        n_trunc = 0
        for i, row in enumerate(rows):
            per_dim = []
            for col in cfg.response_columns:
                r_ids = tokenizer(" " + str(row[col]), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                ids = (p_ids[i] + r_ids)
                if len(ids) > cfg.max_length:
                    n_trunc += 1
                    ids = ids[:cfg.max_length]
                per_dim.append((ids, min(len(p_ids[i]), cfg.max_length - 1)))
            self.items.append(per_dim)
        if n_trunc:
            warnings.warn(f"{n_trunc} of {len(rows) * D} sequences exceed data.max_length={cfg.max_length} and were "
                          f"truncated at the end")

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: list[int], dim: int) -> dict[str, torch.Tensor]:
        seqs = [self.items[i][dim] for i in indices]
        ids, mask = pad_batch([s for s, _ in seqs], self.pad_id)                                # (B, L)
        labels = ids.masked_fill(mask == 0, -100)
        for b, (_, plen) in enumerate(seqs):
            labels[b, :plen] = -100                                                               # no loss on prompt
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lm_losses(model: Any, data: SFTData, indices: list[int], D: int, dev: torch.device) -> torch.Tensor:
    """(D,) mean token cross-entropy of each objective's targets."""
    out = []
    for d in range(D):
        b = {k: v.to(dev) for k, v in data.batch(indices, d).items()}
        out.append(model(**b, use_cache=False).loss)
    return torch.stack(out)                                                                      # (D,)


def train(cfg: SFTConfig) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, get_scheduler

    engine.init_distributed()
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.model_name_or_path)
    ensure_pad_token(tokenizer)
    d = cfg.data
    rows = load_rows(d.path, d.split, d.max_samples)
    require_columns(rows, [d.prompt_column, *d.response_columns], d.path,
                    hint="set data.prompt_column / data.response_columns")
    rows = list(rows)
    n_eval = max(1, int(round(d.eval_fraction * len(rows))))
    if len(rows) - n_eval < 1:
        raise DataError(f"dataset {d.path!r} has {len(rows)} rows: too few to hold out {n_eval} for evaluation")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    train_data = SFTData([rows[i] for i in order[n_eval:]], d, tokenizer)
    eval_data = SFTData([rows[i] for i in order[:n_eval]], d, tokenizer)
    D = len(cfg.objectives)
    total_steps = total_optimizer_steps(len(train_data), cfg.micro_batch_size, cfg.grad_accum, cfg.epochs,
                                        cfg.max_steps)
    ds_config = engine.resolve_ds_config(
        cfg.ds_config, micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum, lr=cfg.lr,
        weight_decay=cfg.weight_decay, precision=cfg.precision, max_grad_norm=cfg.max_grad_norm,
        hidden_size=getattr(AutoConfig.from_pretrained(cfg.model_name_or_path).get_text_config(), "hidden_size", None))
    with engine.zero3_init(ds_config):
        model = AutoModelForCausalLM.from_pretrained(cfg.model_name_or_path)
    if cfg.adapter is not None:
        apply_svd_lora(model, cfg.adapter)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    warmup = int(cfg.warmup_ratio * total_steps)
    model_engine = engine.initialize(model, ds_config, lambda opt: get_scheduler(
        cfg.lr_scheduler, opt, num_warmup_steps=warmup, num_training_steps=total_steps))
    out = Path(cfg.output_dir)
    tracker = Tracker(cfg.wandb, to_dict(cfg), str(out.parent / (out.name + "_wandb")), active=engine.is_main())
    aggregator, dev = get_aggregator(cfg.aggregation), engine.device()
    state = {"micro": 0}

    def step_fn(indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        losses = lm_losses(model_engine, train_data, indices, D, dev)                            # (D,)
        if cfg.adapter is None:
            return losses[0], {}
        # one lambda per optimiser step, identical on every rank (preference.py)
        lam = sample_preference(cfg.preference, D, cfg.seed, state["micro"] // cfg.grad_accum)  # (D,)
        state["micro"] += 1
        set_preference(model_engine.module, lam)
        loss = aggregator(losses, lam.to(dev), mu=cfg.stche_mu)
        return loss, {f"loss/{n}": v.item() for n, v in zip(cfg.objectives, losses)}

    @torch.no_grad()
    def eval_fn() -> dict[str, float]:
        """Held-out cross-entropy per objective; Panacea-SFT evaluates each objective at its own vertex."""
        idx = list(range(engine.rank(), len(eval_data), engine.world_size()))
        sums = torch.zeros(D + 1, dtype=torch.float64, device=dev)
        for start in range(0, len(idx), cfg.micro_batch_size):
            batch = idx[start:start + cfg.micro_batch_size]
            for i in range(D):
                if cfg.adapter is not None:
                    set_preference(model_engine.module, torch.nn.functional.one_hot(torch.tensor(i), D).float())
                sums[i] += lm_losses(model_engine, eval_data, batch, D, dev)[i].double() * len(batch)
            sums[D] += len(batch)
        sums = engine.all_reduce_sum(sums)
        return {f"eval/loss/{n}": (sums[i] / sums[D]).item() for i, n in enumerate(cfg.objectives)}

    if engine.is_main():
        print(f"[sft] {'Panacea-SFT' if cfg.adapter else 'SFT'} of {cfg.model_name_or_path}: {len(train_data)} rows, "
              f"{total_steps} optimiser steps, world size {engine.world_size()}", flush=True)
    res = train_loop(model_engine, len(train_data), micro_batch_size=cfg.micro_batch_size,
                     grad_accum=cfg.grad_accum, total_steps=total_steps, seed=cfg.seed, step_fn=step_fn,
                     eval_fn=eval_fn, log_every=cfg.log_every, eval_every=cfg.eval_every, tracker=tracker,
                     desc="sft")
    final = _save(model_engine, tokenizer, cfg, out, res)
    tracker.finish()
    return final


def _save(model_engine: Any, tokenizer: Any, cfg: SFTConfig, out: Path, res: Any) -> Path:
    """Plain SFT: an HF checkpoint in output_dir. Panacea-SFT: output_dir/policy. Written to a temp dir, renamed."""
    import json

    from rlhf.runs import write_run_info

    state = engine.full_state_dict(model_engine, only_trainable=cfg.adapter is not None)
    target = out if cfg.adapter is None else out / "policy"
    if engine.is_main():
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if cfg.adapter is None:
            model_engine.module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        else:
            save_adapter(model_engine.module, tmp, state_dict=state)
            write_run_info(tmp, trainer="sft", base_model=cfg.model_name_or_path, objectives=[],
                           preference=cfg.preference, eval_scorers={}, step=res.steps)
        tokenizer.save_pretrained(tmp)
        (tmp / "sft_summary.json").write_text(json.dumps(
            {"steps": res.steps, "initial_eval": res.initial_eval, "final_eval": res.final_eval,
             "first_loss": res.losses[0], "final_loss": res.losses[-1], "seconds": res.seconds}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        print(f"[sft] saved {target}", flush=True)
    engine.barrier()
    return target


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(__doc__ + "\nFields (YAML keys / --overrides):\n" + describe(SFTConfig))
        return
    path, overrides = split_config_arg(argv)
    try:
        cfg = load_config(SFTConfig, path, overrides)
    except ConfigError as err:
        sys.exit(f"config error: {err}")
    train(cfg)


if __name__ == "__main__":
    main()
