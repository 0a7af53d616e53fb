"""Supervised fine-tuning (``rlhf/train_sft.py`` has the usage): plain SFT (``adapter: null``: full weights, an HF
checkpoint, how the embedded benchmark builds its base models) and Panacea-SFT (one target column per objective, one
language-model loss each, aggregated under a sampled lambda written into the SVD-LoRA adapter; Panacea §3.3)."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import torch

from rlhf.adapter.svd_lora import SVDLoRAConfig, apply_svd_lora
from rlhf.core.batch import TrainBatch
from rlhf.core.config import check, doc_field
from rlhf.data.chat import DEFAULT_TEMPLATE, encode_example, pad_batch, split_chat
from rlhf.data.datasets import DataError
from rlhf.runtime import engine
from rlhf.runtime.run import Run
from rlhf.scoring.objectives import ObjectiveConfig
from rlhf.training.loop import (SupervisedConfig, build_engine, fit, forward_scope, load_split, panacea_parts, run_trainer,
                                summary, total_optimizer_steps, vertex_means)
from rlhf.training.multi_objective import MultiObjectiveConfig

SUMMARY = "sft_summary.json"  # written last: its presence marks a finished run


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
class SFTConfig(SupervisedConfig, MultiObjectiveConfig):
    """An SFT or Panacea-SFT run: the run and training fields (rlhf/runtime/run.py, rlhf/training/loop.py), the multi-objective
    block (rlhf/training/multi_objective.py; plain SFT: one objective and no adapter) and the targets."""

    PATH_FIELDS: ClassVar[dict[str, str]] = {'data.path': 'data'}

    objectives: tuple[ObjectiveConfig, ...] = doc_field((ObjectiveConfig(name="sft"),),
                                                        "objective names, one per response column")
    adapter: Optional[SVDLoRAConfig] = doc_field(None, "null: full fine-tuning (plain SFT); set: Panacea-SFT")
    data: SFTDataConfig = doc_field(factory=SFTDataConfig, doc="training data")

    def __post_init__(self) -> None:
        super().__post_init__()
        D = len(self.objectives)
        check(len(self.data.response_columns) == D, "data.response_columns",
              f"has {len(self.data.response_columns)} columns but {D} objectives {list(self.objective_names)}")
        check(self.adapter is not None or D == 1, "adapter",
              f"plain SFT (adapter: null) takes one objective; {D} need an adapter")


class SFTData:
    """Token ids per row: prompt (unlabelled) + each objective's response + EOS (labelled)."""

    def __init__(self, rows: list[dict[str, Any]], cfg: SFTDataConfig, tokenizer: Any,
                 numbers: Optional[list[int]] = None) -> None:
        """``numbers``: each row's number in the file (for messages)."""
        self.pad_id, D = tokenizer.pad_token_id, len(cfg.response_columns)
        self.items: list[list[tuple[list[int], int]]] = []  # row -> per dimension (ids, prompt length)
        n_trunc = 0
        for n, row in zip(numbers or range(len(rows)), rows):
            per_dim = []
            for col in cfg.response_columns:
                chat, response = split_chat(row[col])   # a column may hold the whole chat (UltraFeedback style)
                try:
                    p_ids, r_ids = encode_example(tokenizer, chat or row[cfg.prompt_column], response,
                                                  cfg.prompt_template)
                except DataError as err:
                    raise DataError(f"{cfg.path!r} row {n}, column {col!r}: {err}") from None
                ids = p_ids + r_ids
                if len(ids) > cfg.max_length:
                    n_trunc += 1
                    ids = ids[:cfg.max_length]
                per_dim.append((ids, min(len(p_ids), cfg.max_length - 1)))
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


def lm_losses(model: Any, data: SFTData, indices: list[int], dims: range | list[int], dev: torch.device,
              per_row: bool = False) -> torch.Tensor:
    """Mean token cross-entropy of each listed objective's targets: (len(dims),) over the batch's tokens, or with
    ``per_row`` (B, len(dims)), each row's own mean (per-sample preferences weight rows separately)."""
    out = []
    for d in dims:
        b = {k: v.to(dev) for k, v in data.batch(indices, d).items()}
        if not per_row:
            out.append(model(**b, use_cache=False).loss)
            continue
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
        labels = b["labels"][:, 1:]                                                               # (B, L-1)
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100,
                                               reduction="none")                                 # (B, L-1)
        out.append(ce.sum(-1) / (labels != -100).sum(-1).clamp(min=1))                         # (B,)
    return torch.stack(out, dim=-1)                                                              # (D,) or (B, D)


def train(cfg: SFTConfig) -> Path:
    return run_trainer(cfg, "sft", _train)


def _train(cfg: SFTConfig, run: Run, tokenizer: Any) -> Path:
    from transformers import AutoModelForCausalLM

    d = cfg.data
    columns = [d.prompt_column, *d.response_columns]
    train_data, eval_data = load_split(run, d, cfg.seed, columns, columns,
                                       "set data.prompt_column / data.response_columns",
                                       lambda rows, data, at: SFTData(rows, data, tokenizer, at))
    D = len(cfg.objectives)
    total_steps = total_optimizer_steps(len(train_data), cfg.micro_batch_size, cfg.grad_accum, cfg.epochs,
                                        cfg.max_steps)
    model_engine = build_engine(cfg, run, lambda: AutoModelForCausalLM.from_pretrained(cfg.model_name_or_path),
                                total_steps,
                                prepare=(lambda m: apply_svd_lora(m, cfg.adapter)) if cfg.adapter else None,
                                tokenizer=tokenizer, max_length=cfg.data.max_length)
    info = cfg.run_info("sft", cfg.model_name_or_path, prompt_template=cfg.data.prompt_template)
    policy, front = panacea_parts(cfg, model_engine, tokenizer, info) if cfg.adapter else (None, None)
    run.start_tracking()
    aggregation, dev = cfg.aggregation.build(), engine.device()
    sampler = cfg.preference.build(len(cfg.objectives), cfg.seed)

    per_row = cfg.preference.per_row

    def make_batch(indices: list[int], micro: int) -> TrainBatch:
        # drawn before the forward, so that the adapter's input and the loss weights are the same lambda
        lam = None if cfg.adapter is None else sampler.for_micro_batch(
            micro, cfg.grad_accum, engine.rank(), len(indices))                                 # (D,) or (B, D)
        return TrainBatch(indices=tuple(indices), tensors={}, preference=lam)

    def step_fn(batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        losses = lm_losses(model_engine, train_data, list(batch.indices), range(D), dev, per_row)  # (D,) | (B, D)
        if batch.preference is None:
            return losses[0], {}
        loss = aggregation.loss(losses, batch.preference.to(dev))              # () or (B,)
        means = losses.mean(0) if per_row else losses                                           # (D,)
        return loss.mean(), {f"loss/{n}": v.item() for n, v in zip(cfg.objective_names, means)}

    def eval_loss(rows: list[int], i: int) -> torch.Tensor:
        """Objective i's held-out cross-entropy, summed over rows; Panacea-SFT reads it at vertex e_i."""
        vertex = torch.nn.functional.one_hot(torch.tensor(i), D).float()                      # (D,)
        with forward_scope(model_engine.module, TrainBatch((), {}, vertex if cfg.adapter else None)):
            return lm_losses(model_engine, eval_data, rows, [i], dev)[0].double() * len(rows)

    return fit(model_engine, run, cfg, len(train_data), total_steps=total_steps, make_batch=make_batch,
               step_fn=step_fn, desc="sft", save=lambda res: _save(run, model_engine, tokenizer, policy, res),
               front=front, checkpoint_policy=policy,
               eval_fn=lambda: vertex_means("eval/loss", cfg.objective_names, len(eval_data), cfg.micro_batch_size,
                                            eval_loss),
               banner=f"[sft] {'Panacea-SFT' if cfg.adapter else 'SFT'} of {cfg.model_name_or_path}: "
                      f"{len(train_data)} rows, {total_steps} optimiser steps")


def _save(run: Run, model_engine: Any, tokenizer: Any, policy: Optional[Callable[[int], Any]], res: Any) -> Path:
    """Plain SFT (``policy`` None): an HF checkpoint in output_dir. Panacea-SFT: output_dir/policy (the run format,
    written by ``policy(step)``)."""
    if policy is None:
        state = engine.full_state_dict(model_engine, only_trainable=False)
    else:
        write_policy = policy(res.steps)

    def write(tmp: Path) -> None:
        if policy is None:
            model_engine.module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        else:
            write_policy(tmp)
        (tmp / SUMMARY).write_text(json.dumps(summary(res), indent=2))

    target = run.save_result(write, subdir=None if policy is None else "policy", marker=SUMMARY)
    if engine.is_main():
        print(f"[sft] saved {target}", flush=True)
    return target
