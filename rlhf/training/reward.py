"""Training reward and cost models (``reward_models/train.py`` has the usage): preference rows -> pairs ->
tokenised (better, worse) batches -> end scores -> the pairwise (and, for costs, sign) loss -> DeepSpeed steps; the
result is an ordinary HF sequence-classification model + tokenizer + ``dimension.json``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from rlhf.algo.score_losses import score_model_loss
from rlhf.core.batch import TrainBatch
from rlhf.core.config import check, doc_field
from rlhf.data.pairs import PairTensors, PreferenceDataConfig, load_pairs
from rlhf.runtime import engine
from rlhf.runtime.run import Run
from rlhf.scoring.score_model import DIMENSION_FILE, end_scores, write_dimension
from rlhf.training.loop import SupervisedConfig, build_engine, fit, run_trainer, total_optimizer_steps


@dataclass(frozen=True)
class ScoreTrainConfig(SupervisedConfig):
    """One score model: the shared training fields (rlhf/training/loop.py) plus what to score and how."""

    PATH_FIELDS: ClassVar[dict[str, str]] = {'data.path': 'data', 'data.eval_path': 'data'}

    name: str = doc_field("helpful", "objective name recorded in dimension.json (e.g. helpful, harmless)")
    kind: Literal["reward", "cost"] = doc_field("reward", "reward: higher = better; cost: higher = worse")
    data: PreferenceDataConfig = doc_field(factory=PreferenceDataConfig, doc="preference data")
    score_reg_coef: float = doc_field(0.001, "coefficient of mean(score^2), keeps scores near 0")
    eval_batch_size: int = doc_field(16, "pairs per evaluation forward pass")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.score_reg_coef >= 0, "score_reg_coef", f"must be >= 0, got {self.score_reg_coef}")


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: PairTensors, kind: str, batch_size: int) -> dict[str, float]:
    """Pairwise accuracy, score mean/std (and sign accuracy for costs) over the held-out pairs, summed over ranks."""
    model.eval()
    dev = engine.device()
    idx = list(range(engine.rank(), len(data), engine.world_size()))
    # correct, count, sum, sum^2, n_scores, sign_correct, sign_count
    acc = torch.zeros(7, dtype=torch.float64, device=dev)
    for i0 in range(0, len(idx), batch_size):
        batch = data.batch(idx[i0:i0 + batch_size])
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


def train(cfg: ScoreTrainConfig) -> dict[str, Any]:
    return run_trainer(cfg, "reward_models", _train)


def _train(cfg: ScoreTrainConfig, run: Run, tokenizer: Any) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification

    # Data first: every data error surfaces before a model is loaded or a step is spent.
    train_pairs, eval_pairs = load_pairs(cfg.data, cfg.kind, cfg.seed)
    for field in ("data.path", "data.eval_path"):  # a resume refuses a changed file
        path = getattr(cfg.data, field.split(".")[1])
        if path:
            run.register_data(field, path, None)
    train_data = PairTensors(train_pairs, tokenizer, cfg.data.max_length, cfg.data.prompt_template, "training")
    eval_data = PairTensors(eval_pairs, tokenizer, cfg.data.max_length, cfg.data.prompt_template, "evaluation")
    total_steps = total_optimizer_steps(len(train_data), cfg.micro_batch_size, cfg.grad_accum, cfg.epochs,
                                        cfg.max_steps)

    def load() -> torch.nn.Module:
        model = AutoModelForSequenceClassification.from_pretrained(cfg.model_name_or_path, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        return model

    model_engine = build_engine(cfg, run, load, total_steps, tokenizer=tokenizer, max_length=cfg.data.max_length)
    run.start_tracking()
    world, dev = engine.world_size(), engine.device()

    def make_batch(indices: list[int], micro: int) -> TrainBatch:
        return TrainBatch(indices=tuple(indices), tensors={k: v.to(dev) for k, v in train_data.batch(indices).items()})

    def step_fn(batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        b = batch.tensors
        scores = end_scores(model_engine, b["input_ids"], b["attention_mask"])                          # (2B,)
        better, worse = scores.chunk(2)                                                                 # (B,)
        loss, m = score_model_loss(better, worse, cfg.kind, cfg.score_reg_coef, b["better_sign"], b["worse_sign"])
        return loss, {"accuracy": m["accuracy"].item()}

    def save(res: Any) -> dict[str, Any]:
        m = res.final_eval
        result = {"accuracy": m.get("eval/accuracy"), "sign_accuracy": m.get("eval/sign_accuracy"),
                  "score_mean": m.get("eval/score_mean"), "score_std": m.get("eval/score_std"),
                  "initial_accuracy": res.initial_eval["eval/accuracy"], "first_loss": res.losses[0],
                  "final_loss": res.losses[-1], "train_steps": res.steps, "world_size": world,
                  "train_pairs": len(train_data), "eval_pairs": len(eval_data), "seconds": res.seconds,
                  "base_model": cfg.model_name_or_path}
        state = engine.full_state_dict(model_engine)  # collective under ZeRO-3: every rank takes part

        def write(tmp: Path) -> None:
            model_engine.module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            write_dimension(tmp, name=cfg.name, kind=cfg.kind, **result)

        out = run.save_result(write, marker=DIMENSION_FILE)
        if engine.is_main():
            print(f"[reward_models] saved {out} ({result})", flush=True)
        return result

    model_engine.train()
    return fit(model_engine, run, cfg, len(train_data), total_steps=total_steps, make_batch=make_batch,
               step_fn=step_fn, eval_fn=lambda: evaluate(model_engine, eval_data, cfg.kind, cfg.eval_batch_size),
               desc=f"train {cfg.name}", save=save,
               banner=f"[reward_models] {cfg.kind} model '{cfg.name}': {len(train_data)} train / {len(eval_data)} "
                      f"eval pairs, {total_steps} optimiser steps of {cfg.micro_batch_size * cfg.grad_accum * world} "
                      f"pairs")
