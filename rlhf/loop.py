"""The one supervised training loop (reward/cost models, SFT, DPO): shards data across ranks, steps a DeepSpeed
engine with gradient accumulation, logs rank-averaged metrics, evaluates on a cadence, shows tqdm on rank 0.

Each trainer supplies only ``step_fn(indices) -> (loss, {metric: float})`` and ``eval_fn() -> {key: float}``.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from rlhf import engine


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
    seconds: float = 0.0


def train_loop(model_engine: Any, n_items: int, *, micro_batch_size: int, grad_accum: int, total_steps: int,
               seed: int, step_fn: Callable[[list[int]], tuple[torch.Tensor, dict[str, float]]],
               eval_fn: Callable[[], dict[str, float]], log_every: int, eval_every: int, tracker: Any,
               desc: str) -> LoopResult:
    from tqdm import tqdm

    rank, world, dev = engine.rank(), engine.world_size(), engine.device()
    res = LoopResult(initial_eval=eval_fn())                  # the untrained baseline, logged at step 0
    tracker.log(res.initial_eval, 0)
    window: dict[str, float] = {}
    n_window = 0
    bar = tqdm(total=total_steps, disable=not engine.is_main(), desc=desc, dynamic_ncols=True)
    t0, epoch, micro = time.time(), 0, 0
    while res.steps < total_steps:
        indices = shard(n_items, epoch, seed, rank, world)
        for start in range(0, len(indices), micro_batch_size):
            loss, metrics = step_fn(indices[start:start + micro_batch_size])
            model_engine.backward(loss)
            model_engine.step()
            micro += 1
            for k, v in {"loss": loss.item(), **metrics}.items():
                window[k] = window.get(k, 0.0) + float(v)
            n_window += 1
            if micro % grad_accum:
                continue
            res.steps += 1
            bar.update(1)
            if res.steps % log_every == 0 or res.steps == total_steps:
                keys = sorted(window)
                summed = engine.all_reduce_sum(torch.tensor([window[k] for k in keys] + [n_window],
                                                            dtype=torch.float64, device=dev)).tolist()
                logs = {f"train/{k}": summed[i] / summed[-1] for i, k in enumerate(keys)}
                logs["train/lr"] = model_engine.get_lr()[0]
                logs["train/epoch"] = epoch
                tracker.log(logs, res.steps)
                res.losses.append(logs["train/loss"])
                bar.set_postfix(loss=f"{logs['train/loss']:.3f}")
                window, n_window = {}, 0
            if res.steps % eval_every == 0 or res.steps == total_steps:
                res.final_eval = eval_fn()
                tracker.log(res.final_eval, res.steps)
                if engine.is_main():
                    bar.write(f"step {res.steps}: " + ", ".join(f"{k}={v:.4f}" for k, v in res.final_eval.items()))
            if res.steps >= total_steps:
                break
        epoch += 1
    bar.close()
    res.seconds = round(time.time() - t0, 1)
    return res
