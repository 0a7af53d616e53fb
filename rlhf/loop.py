"""The one supervised training loop (reward/cost models, SFT, DPO): shards data across ranks, steps a DeepSpeed
engine with gradient accumulation, logs rank-averaged metrics, evaluates on a cadence, shows tqdm on rank 0.

Each trainer supplies only ``step_fn(indices, micro) -> (loss, {metric: float})`` and ``eval_fn() -> {key: float}``;
the loop also writes resumable checkpoints (``rlhf/checkpoint.py``'s format) and resumes from them.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch

from rlhf import checkpoint, engine
from rlhf.config import check, doc_field
from rlhf.tracking import WandbConfig


def shard(n: int, epoch: int, seed: int, rank: int, world: int) -> list[int]:
    """This rank's indices for one epoch: a seeded shuffle, padded by wrapping so every rank gets as many."""
    order = list(range(n))
    random.Random(seed + epoch).shuffle(order)
    per_rank = math.ceil(n / world)
    order += order[: per_rank * world - n]
    return order[rank::world]


def total_optimizer_steps(n: int, micro_batch_size: int, grad_accum: int, epochs: int, max_steps: int | None) -> int:
    micro_per_epoch = math.ceil(n / (micro_batch_size * engine.world_size()))
    return max_steps or max(1, (micro_per_epoch * epochs) // grad_accum)


@dataclass
class LoopResult:
    steps: int = 0
    losses: list[float] = field(default_factory=list)     # logged training losses, in order
    initial_eval: dict[str, float] = field(default_factory=dict)
    final_eval: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0                                  # training time, summed over resumptions
    resumed_from: Optional[str] = None


@dataclass
class LoopState:
    """Where the loop is, saved in every checkpoint: with the engine's optimiser/scheduler and each rank's RNG this is
    everything needed for a resumed run to take exactly the steps the uninterrupted run would have taken."""

    micro: int = 0            # micro-batches in all: gives epoch and row position, and drives the preference draws
    window: dict[str, float] = field(default_factory=dict)  # metric sums since the last log line
    n_window: int = 0


def checkpoint_root(cfg: "SupervisedConfig") -> Path:
    """``<output_dir>_checkpoints``: beside the result, never inside it, because the final save replaces
    ``output_dir`` (plain SFT and score models write an HF model there)."""
    out = Path(cfg.output_dir)
    return out.parent / (out.name + "_checkpoints")


def resume_point(cfg: "SupervisedConfig") -> Optional[Path]:
    """The checkpoint to resume from, checked against this config before any model is loaded (null: a fresh run)."""
    from rlhf.config import to_dict

    if cfg.resume_from is None:
        return None
    path, saved = checkpoint.resolve_compatible(cfg.resume_from, checkpoint_root(cfg), to_dict(cfg))
    if saved["world_size"] != engine.world_size():
        raise checkpoint.ResumeError(
            f"{path} was written by {saved['world_size']} processes but {engine.world_size()} were launched: the data "
            f"shards differ, so launch {saved['world_size']} processes to resume it")
    return path


def train_loop(model_engine: Any, cfg: "SupervisedConfig", n_items: int, *, total_steps: int,
               step_fn: Callable[[list[int], int], tuple[torch.Tensor, dict[str, float]]],
               eval_fn: Callable[[], dict[str, float]], tracker: Any, desc: str,
               resume: Optional[Path] = None) -> LoopResult:
    """``step_fn(indices, micro)`` gets this rank's rows and the global micro-batch counter (for preference draws).
    Checkpoints every ``cfg.save_every`` optimiser steps into ``checkpoint_root(cfg)``; ``resume`` (from
    ``resume_point``) restores engine, RNG and ``LoopState`` and carries on from the same row."""
    from tqdm import tqdm

    from rlhf.config import to_dict

    rank, world, dev = engine.rank(), engine.world_size(), engine.device()
    res, st = LoopResult(), LoopState()
    if resume is not None:
        saved = checkpoint.load(resume, {"model": model_engine})
        st = LoopState(**saved["loop"])
        res = LoopResult(**saved["result"], resumed_from=str(resume))
        if engine.is_main():
            print(f"[{desc}] resumed from {resume} at step {res.steps}", flush=True)
    else:
        res.initial_eval = eval_fn()                          # the untrained baseline, logged at step 0
        tracker.log(res.initial_eval, 0)

    def save() -> None:
        trainer_state = {"step": res.steps, "world_size": world, "config": to_dict(cfg), "loop": asdict(st),
                         "result": {k: v for k, v in asdict(res).items() if k != "resumed_from"}}
        checkpoint.save(checkpoint_root(cfg), res.steps, {"model": model_engine}, trainer_state, cfg.keep_last)

    bar = tqdm(total=total_steps, initial=res.steps, disable=not engine.is_main(), desc=desc, dynamic_ncols=True)
    t0, seconds0 = time.time(), res.seconds
    # Every epoch gives each rank the same number of micro-batches (shard pads), so the counter alone says where
    # the loop is: a resumed run continues from the very row the interrupted one would have read next.
    per_epoch = math.ceil(math.ceil(n_items / world) / cfg.micro_batch_size)
    indices, indices_epoch = [], -1
    while res.steps < total_steps:
        epoch, position = divmod(st.micro, per_epoch)
        if epoch != indices_epoch:
            indices, indices_epoch = shard(n_items, epoch, cfg.seed, rank, world), epoch
        start = position * cfg.micro_batch_size
        loss, metrics = step_fn(indices[start:start + cfg.micro_batch_size], st.micro)
        model_engine.backward(loss)
        model_engine.step()
        st.micro += 1
        for k, v in {"loss": loss.item(), **metrics}.items():
            st.window[k] = st.window.get(k, 0.0) + float(v)
        st.n_window += 1
        if st.micro % cfg.grad_accum:
            continue
        res.steps += 1
        bar.update(1)
        if res.steps % cfg.log_every == 0 or res.steps == total_steps:
            keys = sorted(st.window)
            summed = engine.all_reduce_sum(torch.tensor([st.window[k] for k in keys] + [st.n_window],
                                                        dtype=torch.float64, device=dev)).tolist()
            logs = {f"train/{k}": summed[i] / summed[-1] for i, k in enumerate(keys)}
            logs["train/lr"] = model_engine.get_lr()[0]
            logs["train/epoch"] = epoch
            tracker.log(logs, res.steps)
            res.losses.append(logs["train/loss"])
            bar.set_postfix(loss=f"{logs['train/loss']:.3f}")
            st.window, st.n_window = {}, 0
        if res.steps % cfg.eval_every == 0 or res.steps == total_steps:
            res.final_eval = eval_fn()
            tracker.log(res.final_eval, res.steps)
            if engine.is_main():
                bar.write(f"step {res.steps}: " + ", ".join(f"{k}={v:.4f}" for k, v in res.final_eval.items()))
        if cfg.save_every and res.steps % cfg.save_every == 0 and res.steps < total_steps:
            res.seconds = round(seconds0 + time.time() - t0, 1)
            save()
    bar.close()
    res.seconds = round(seconds0 + time.time() - t0, 1)
    return res


# ----------------------------------------------------------------------------------------------------------
# What every offline trainer shares: its config fields, engine set-up, atomic saves and command line
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SupervisedConfig:
    """Fields shared by the reward/cost, SFT and DPO trainers (each adds its own data and loss fields)."""

    model_name_or_path: str = doc_field("", "model to start from (hub name or path)")
    tokenizer: Optional[str] = doc_field(None, "tokenizer (null: the model's own)")
    output_dir: str = doc_field("runs/out", "where the result goes")
    ds_config: str = doc_field("ds_configs/zero2.json", "DeepSpeed JSON; its \"auto\" keys are filled from here")
    precision: Literal["fp32", "bf16", "fp16"] = doc_field("bf16", "training precision")
    epochs: int = doc_field(1, "passes over the training data")
    max_steps: Optional[int] = doc_field(None, "stop after this many optimiser steps (null: epochs decide)")
    micro_batch_size: int = doc_field(8, "rows (pairs) per forward pass per process")
    grad_accum: int = doc_field(1, "micro-batches per optimiser step")
    lr: float = doc_field(2e-5, "peak learning rate")
    weight_decay: float = doc_field(0.0, "AdamW weight decay")
    warmup_ratio: float = doc_field(0.03, "fraction of steps with linear warm-up")
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = doc_field("cosine", "decay after warm-up")
    max_grad_norm: float = doc_field(1.0, "gradient clipping")
    eval_every: int = doc_field(50, "evaluate every N optimiser steps (and at the end)")
    log_every: int = doc_field(10, "log training metrics every N optimiser steps")
    gradient_checkpointing: bool = doc_field(False, "trade compute for activation memory")
    seed: int = doc_field(42, "seed for data order, held-out split and init")
    save_every: int = doc_field(200, "checkpoint every N optimiser steps into <output_dir>_checkpoints (0: only the "
                                     "final result)")
    keep_last: int = doc_field(2, "checkpoints kept (the oldest beyond this are deleted)")
    resume_from: Optional[str] = doc_field(None, "checkpoint directory, or 'latest' in <output_dir>_checkpoints")
    wandb: WandbConfig = doc_field(factory=WandbConfig, doc="W&B logging")

    def __post_init__(self) -> None:
        check(bool(self.model_name_or_path), "model_name_or_path", "is required: a hub name or a local path")
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be >= 1 or null, got {self.max_steps}")
        check(self.micro_batch_size >= 1, "micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        check(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(self.eval_every >= 1 and self.log_every >= 1, "eval_every", "eval_every and log_every must be >= 1")
        check(self.save_every >= 0, "save_every", f"must be >= 0 (0: no mid-run checkpoints), got {self.save_every}")
        check(self.keep_last >= 1, "keep_last", f"must be >= 1, got {self.keep_last}")


def start(cfg: SupervisedConfig) -> Any:
    """Distributed init, seed, and the tokenizer (with a pad token)."""
    from transformers import AutoTokenizer

    from rlhf.data import ensure_pad_token

    engine.init_distributed()
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.model_name_or_path)
    ensure_pad_token(tokenizer)
    return tokenizer


def build_engine(cfg: SupervisedConfig, load_model: Callable[[], torch.nn.Module], total_steps: int,
                 prepare: Optional[Callable[[torch.nn.Module], None]] = None) -> Any:
    """Resolve the DeepSpeed config, load the model (partitioned at load under ZeRO-3), let the trainer
    ``prepare`` it (e.g. apply the adapter), and wrap it in an engine with a warm-up + decay schedule."""
    from transformers import AutoConfig, get_scheduler

    hidden = getattr(AutoConfig.from_pretrained(cfg.model_name_or_path).get_text_config(), "hidden_size", None)
    ds_config = engine.resolve_ds_config(
        cfg.ds_config, micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum, lr=cfg.lr,
        weight_decay=cfg.weight_decay, precision=cfg.precision, max_grad_norm=cfg.max_grad_norm, hidden_size=hidden)
    with engine.zero3_init(ds_config):
        model = load_model()
    if prepare is not None:
        prepare(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    warmup = int(cfg.warmup_ratio * total_steps)
    return engine.initialize(model, ds_config, lambda opt: get_scheduler(
        cfg.lr_scheduler, opt, num_warmup_steps=warmup, num_training_steps=total_steps))


def tracker_for(cfg: SupervisedConfig) -> Any:
    from rlhf.config import to_dict
    from rlhf.tracking import Tracker

    out = Path(cfg.output_dir)
    return Tracker(cfg.wandb, to_dict(cfg), str(out.parent / (out.name + "_wandb")), active=engine.is_main())


def save_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Rank 0 writes into ``target.tmp`` and renames it over ``target``: a crash never leaves half a result."""
    target = Path(target)
    if engine.is_main():
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    engine.barrier()
    return target


def summary(res: LoopResult) -> dict[str, Any]:
    return {"steps": res.steps, "initial_eval": res.initial_eval, "final_eval": res.final_eval,
            "first_loss": res.losses[0], "final_loss": res.losses[-1], "losses": res.losses, "seconds": res.seconds,
            "resumed_from": res.resumed_from}


def cli(cls: type, train_fn: Callable[[Any], Any], doc: str, argv: Optional[list[str]] = None) -> None:
    """``--config PATH [--key value ...]`` or ``--help`` (every field with its documentation)."""
    from rlhf.config import ConfigError, describe, load_config, split_config_arg

    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(doc + "\nFields (YAML keys / --overrides):\n" + describe(cls))
        return
    path, overrides = split_config_arg(argv)
    try:
        cfg = load_config(cls, path, overrides)
    except ConfigError as err:
        sys.exit(f"config error: {err}")
    train_fn(cfg)


def split_rows(rows: Any, eval_fraction: float, seed: int, path: str) -> tuple[list[Any], list[Any]]:
    """(train, held-out) rows by a seeded shuffle; refuses a dataset too small to hold any row out."""
    from rlhf.data import DataError

    rows = list(rows)
    n_eval = max(1, int(round(eval_fraction * len(rows))))
    if len(rows) - n_eval < 1:
        raise DataError(f"dataset {path!r} has {len(rows)} rows: too few to hold out {n_eval} for evaluation")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]
