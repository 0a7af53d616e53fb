"""The one supervised training loop (reward/cost models, SFT, DPO): shards data across ranks, steps a DeepSpeed
engine with gradient accumulation, logs rank-averaged metrics, evaluates on a cadence, shows tqdm on rank 0.

Each trainer supplies ``make_batch(indices, micro) -> TrainBatch`` (the rows, and the lambda every forward on them
runs under), ``step_fn(batch) -> (loss, {metric: float})`` and ``eval_fn() -> {key: float}``. The run itself
(directory, lock, seeding, checkpoints, resume checks, metrics.jsonl) is ``rlhf/runtime/run.py``'s, shared with PPO.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch

from rlhf.adapter.svd_lora import scoped_preference
from rlhf.core.batch import TrainBatch
from rlhf.core.config import check, doc_field
from rlhf.data.chat import check_tokenizer_fits, preflight_lengths
from rlhf.runtime import engine
from rlhf.runtime.paths import check_config_paths
from rlhf.runtime.run import Run, RunConfig
from rlhf.training.multi_objective import MultiObjectiveConfig
from rlhf.training.optim import OptimizerFields


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


def forward_scope(model: torch.nn.Module, batch: TrainBatch) -> Any:
    """The context every forward and backward on ``batch`` runs in: its own lambda, or nothing (no adapter)."""
    pref = batch.adapter_preference()
    return scoped_preference(model, pref) if pref is not None else contextlib.nullcontext()


def train_loop(model_engine: Any, run: Run, cfg: "SupervisedConfig", n_items: int, *, total_steps: int,
               make_batch: Callable[[list[int], int], TrainBatch],
               step_fn: Callable[[TrainBatch], tuple[torch.Tensor, dict[str, float]]],
               eval_fn: Callable[[], dict[str, float]], desc: str, front: Any = None,
               checkpoint_policy: Optional[Callable[[int], Callable[[Path], None]]] = None) -> LoopResult:
    """``make_batch(indices, micro)`` gets this rank's rows and the global micro-batch counter (for preference draws);
    forward and backward of ``step_fn`` run inside the batch's own scope (its lambda). Checkpoints every
    ``cfg.save_every`` optimiser steps; a run built with a resume point carries on from the very same row.
    ``front`` (``rlhf/evaluation/front.py`` TrainingFront): the Pareto front evaluated at step 0 and every ``cfg.eval.every``
    optimiser steps, logged, its reference point kept in the checkpoints. ``checkpoint_policy(step)``: a writer of the
    policy as evaluate.py reads it, put into each checkpoint (with the front's ``eval.yaml``)."""
    from tqdm import tqdm

    rank, world, dev = run.rank, run.world, engine.device()
    res, st = LoopResult(), LoopState()
    def evaluate_front() -> None:
        if front is not None:
            from rlhf.evaluation.training import evaluate_and_log

            evaluate_and_log(front, model_engine.module, run, res.steps)

    if run.resume_path is not None:
        saved = run.load_checkpoint({"model": model_engine})
        st = LoopState(**saved["loop"])
        res = LoopResult(**saved["result"], resumed_from=str(run.resume_path))
        if front is not None:
            front.load_state_dict(saved.get("front"))
    else:
        res.initial_eval = eval_fn()                          # the untrained baseline, logged at step 0
        run.log(res.initial_eval, 0)
        evaluate_front()

    def save() -> None:
        run.save_checkpoint(res.steps, {"model": model_engine},
                            {"loop": asdict(st), "result": {k: v for k, v in asdict(res).items() if k != "resumed_from"},
                             "front": front.state_dict() if front is not None else None},
                            policy=checkpoint_policy(res.steps) if checkpoint_policy is not None else None,  # collective
                            front=front)

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
        batch = make_batch(indices[start:start + cfg.micro_batch_size], st.micro)
        with forward_scope(model_engine.module, batch):
            loss, metrics = step_fn(batch)
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
            run.log(logs, res.steps)
            res.losses.append(logs["train/loss"])
            bar.set_postfix(loss=f"{logs['train/loss']:.3f}")
            st.window, st.n_window = {}, 0
        if res.steps % cfg.eval_every == 0 or res.steps == total_steps:
            res.final_eval = eval_fn()
            run.log(res.final_eval, res.steps)
            if engine.is_main():
                bar.write(f"step {res.steps}: " + ", ".join(f"{k}={v:.4f}" for k, v in res.final_eval.items()))
        if front is not None and front.due(res.steps, total_steps):
            evaluate_front()
        saved = cfg.save_every and res.steps % cfg.save_every == 0 and res.steps < total_steps
        if saved:
            res.seconds = round(seconds0 + time.time() - t0, 1)
            save()
        reason = run.stop_requested()  # a signal, or the launcher gone: leave with a checkpoint to resume from
        if reason:
            if not saved:
                res.seconds = round(seconds0 + time.time() - t0, 1)
                save()
            raise run.stopped(res.steps, reason)
    bar.close()
    res.seconds = round(seconds0 + time.time() - t0, 1)
    return res


def fit(model_engine: Any, run: Run, cfg: "SupervisedConfig", n_items: int, *, save: Callable[[LoopResult], Any],
        banner: str, **loop_args: Any) -> Any:
    """Print ``banner`` (rank 0), ``train_loop``, then ``save(result)``; the run is closed (lock released, W&B
    finished) however it ends."""
    if engine.is_main():
        print(f"{banner}, world size {run.world}", flush=True)
    try:
        res = train_loop(model_engine, run, cfg, n_items, **loop_args)
        out = save(res)
        run.close(finished_step=res.steps)
        return out
    finally:
        run.close()


@torch.no_grad()
def vertex_means(key: str, names: Sequence[str], n_eval: int, batch_size: int,
                 measure: Callable[[list[int], int], torch.Tensor]) -> dict[str, float]:
    """``{key/name_i: mean}``: per objective i, a held-out figure measured at its own vertex lambda = e_i, averaged
    over every rank's rows (rank r takes rows r, r + world, ...). ``measure(rows, i)`` sums it over ``rows``."""
    D = len(names)
    idx = list(range(engine.rank(), n_eval, engine.world_size()))
    sums = torch.zeros(D + 1, dtype=torch.float64, device=engine.device())                   # (D + 1,)
    for i0 in range(0, len(idx), batch_size):
        rows = idx[i0:i0 + batch_size]
        for i in range(D):
            sums[i] += measure(rows, i)
        sums[D] += len(rows)
    sums = engine.all_reduce_sum(sums)
    return {f"{key}/{n}": (sums[i] / sums[D]).item() for i, n in enumerate(names)}


# ----------------------------------------------------------------------------------------------------------
# What every offline trainer shares: its config fields, engine set-up, atomic saves and command line
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SupervisedConfig(RunConfig, OptimizerFields):
    """Fields shared by the reward/cost, SFT and DPO trainers on top of the run fields (``rlhf/runtime/run.py``); each
    trainer adds its own data and loss fields."""

    PATH_FIELDS: ClassVar[dict[str, str]] = {'model_name_or_path': 'model', 'tokenizer': 'model'}

    model_name_or_path: str = doc_field("", "model to start from (hub name or path)")
    tokenizer: Optional[str] = doc_field(None, "tokenizer (null: the model's own)")
    epochs: int = doc_field(1, "passes over the training data")
    max_steps: Optional[int] = doc_field(None, "stop after this many optimiser steps (null: epochs decide)")
    micro_batch_size: int = doc_field(8, "rows (pairs) per forward pass per process")
    grad_accum: int = doc_field(1, "micro-batches per optimiser step")
    lr: float = doc_field(2e-5, "peak learning rate")
    warmup_ratio: float = doc_field(0.03, "fraction of optimiser steps with linear warm-up")
    eval_every: int = doc_field(50, "evaluate every N optimiser steps (and at the end)")
    gradient_checkpointing: bool = doc_field(False, "trade compute for activation memory")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.model_name_or_path), "model_name_or_path", "is required: a hub name or a local path")
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be >= 1 or null, got {self.max_steps}")
        check(self.micro_batch_size >= 1, "micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        check(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.eval_every >= 1, "eval_every", f"must be >= 1, got {self.eval_every}")


def start(cfg: SupervisedConfig, trainer: str) -> tuple[Run, Any]:
    """The run (directory guard, lock, resume checks, seeds: before any model loads) and the tokenizer."""
    from transformers import AutoTokenizer

    from rlhf.data.chat import ensure_pad_token

    run = Run(cfg, trainer)
    with run.close_on_error():
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.model_name_or_path)
        ensure_pad_token(tokenizer)
    return run, tokenizer


def run_trainer(cfg: SupervisedConfig, trainer: str, body: Callable[[Any, Run, Any], Any]) -> Any:
    """``body(cfg, run, tokenizer)`` inside the run (built first, before any model loads); any failure, while the
    trainer is built or trains, releases the run for the next attempt (in this process too)."""
    run, tokenizer = start(cfg, trainer)
    with run.close_on_error():
        return body(cfg, run, tokenizer)


def _ds_config(cfg: SupervisedConfig, **resolve: Any) -> dict[str, Any]:
    """The run's DeepSpeed config with its "auto" keys resolved from the training fields (``resolve``: the model's
    hidden size, and the world size where no processes run yet)."""
    return engine.resolve_ds_config(cfg.ds_config, micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum,
                                    lr=cfg.lr, weight_decay=cfg.weight_decay, precision=cfg.precision,
                                    max_grad_norm=cfg.max_grad_norm, **resolve)


def build_engine(cfg: SupervisedConfig, run: Run, load_model: Callable[[], torch.nn.Module], total_steps: int,
                 prepare: Optional[Callable[[torch.nn.Module], None]] = None, tokenizer: Any = None,
                 max_length: Optional[int] = None) -> Any:
    """Refuse what the model's config already rules out (a finished run resumed, a tokenizer or ``max_length`` the
    model cannot take), resolve the DeepSpeed config, load the model (partitioned at load under ZeRO-3), let the
    trainer ``prepare`` it (e.g. apply the adapter), and wrap it in an engine with a warm-up + decay schedule."""
    from transformers import AutoConfig

    run.refuse_if_finished(total_steps, "max_steps (or epochs)")
    model_config = AutoConfig.from_pretrained(cfg.model_name_or_path)
    if tokenizer is not None:
        check_tokenizer_fits(tokenizer, model_config, f"model_name_or_path {cfg.model_name_or_path!r}")
    if max_length is not None:
        preflight_lengths(model_config, "model_name_or_path", cfg.model_name_or_path, max_length, "data.max_length")
    hidden = getattr(model_config.get_text_config(), "hidden_size", None)
    ds_config = _ds_config(cfg, hidden_size=hidden)
    with engine.zero3_init(ds_config):
        model = load_model()
    if prepare is not None:
        prepare(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return engine.initialize(model, ds_config, cfg.scheduler(total_steps))


def panacea_parts(block: MultiObjectiveConfig, model_engine: Any, tokenizer: Any, run_info: dict[str, Any]
                  ) -> tuple[Callable[[int], Any], Any]:
    """For a run with the adapter (DPO, Panacea-SFT), from its multi-objective ``block``: ``policy(step)``, the writer
    of the policy as evaluate.py reads it (into each checkpoint and the result; ``run_info``: its run.json fields),
    and the in-training front (None when ``eval.every`` is 0). Collective: the base fingerprint is taken once here,
    W0 being frozen."""
    from rlhf.adapter.policy import adapter_writer, base_fingerprint
    from rlhf.scoring.scorer import Scorer

    fingerprint = base_fingerprint(model_engine)

    def policy(step: int) -> Callable[[Path], None]:
        return adapter_writer(model_engine, tokenizer, step=step, fingerprint=fingerprint, run_info=run_info)

    front = None
    if block.eval.every:  # the front during training, scored by the objectives' sources
        front = block.training_front(tokenizer, Scorer(block.objectives, device=engine.device()), engine.rank(),
                                   engine.world_size(), synced_gpus=engine.world_size() > 1 and
                                   model_engine.zero_optimization_stage() == 3)
    return policy, front


def summary(res: LoopResult) -> dict[str, Any]:
    return {"steps": res.steps, "initial_eval": res.initial_eval, "final_eval": res.final_eval,
            "first_loss": res.losses[0], "final_loss": res.losses[-1], "losses": res.losses, "seconds": res.seconds,
            "resumed_from": res.resumed_from}


def dry_run(cfg: SupervisedConfig) -> dict[str, Any]:
    """Validate what can be validated without loading a model: the config (already), the DeepSpeed JSON with its
    "auto" keys resolved, and the batch arithmetic."""
    check_config_paths(cfg)
    world = cfg.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    ds = _ds_config(cfg, hidden_size=4096, world=world)
    engine.check_ds_config(ds, world)
    return {"world_size": world, "zero_stage": engine.zero_stage(ds), "precision": cfg.precision,
            "train_batch_size": ds["train_batch_size"], "grad_accum": cfg.grad_accum}


def load_split(run: Run, data: Any, seed: int, columns: Sequence[str], non_null: Sequence[str], hint: str,
               make: Callable[[list[Any], Any, list[int]], Any]) -> tuple[Any, Any]:
    """The offline trainers' data: rows of ``data.path`` (kept by fingerprint for the resume check), their columns
    and nulls checked, split into (train, held-out) by a seeded shuffle, each made by ``make(rows, data, row
    numbers)``."""
    from rlhf.data.datasets import check_no_nulls, load_rows, require_columns

    rows = load_rows(data.path, data.split, data.max_samples)
    run.register_data("data.path", data.path, rows)  # a resume refuses a changed file
    require_columns(rows, list(columns), data.path, hint=hint)
    check_no_nulls(rows, list(non_null), data.path)
    train_rows, eval_rows, train_at, eval_at = split_rows(rows, data.eval_fraction, seed, data.path)
    return make(train_rows, data, train_at), make(eval_rows, data, eval_at)


def split_rows(rows: Any, eval_fraction: float, seed: int, path: str
               ) -> tuple[list[Any], list[Any], list[int], list[int]]:
    """(train rows, held-out rows, their row numbers in the file) by a seeded shuffle; refuses a dataset too small to
    hold any row out."""
    from rlhf.data.datasets import DataError

    rows = list(rows)
    n_eval = max(1, int(round(eval_fraction * len(rows))))
    if len(rows) - n_eval < 1:
        raise DataError(f"dataset {path!r} has {len(rows)} rows: too few to hold out {n_eval} for evaluation")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    train, held = order[n_eval:], order[:n_eval]
    return [rows[i] for i in train], [rows[i] for i in held], train, held
