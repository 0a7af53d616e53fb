"""Panacea-DPO (``rlhf/train_dpo.py`` has the usage): one DPO loss per preference dimension, aggregated under a
sampled lambda (Panacea §5, HH-DPO). For each dimension i the same prompt has its own preferred and rejected response:

    L_i = -log sigmoid(beta * [(log pi - log pi_ref)(y_w^i) - (log pi - log pi_ref)(y_l^i)])

aggregated by the registry PPO uses; pi_ref is the same network with the adapter off."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Optional

import torch
import torch.nn.functional as F

from rlhf.adapter.svd_lora import adapter_disabled, apply_svd_lora
from rlhf.algo.losses import logprobs_from_logits
from rlhf.core.batch import TrainBatch
from rlhf.core.config import check, doc_field
from rlhf.data.chat import DEFAULT_TEMPLATE, encode_example, pad_batch, split_chat
from rlhf.data.datasets import DataError
from rlhf.rollout.rollout import position_ids_from_mask
from rlhf.runtime import engine
from rlhf.runtime.run import Run
from rlhf.training.loop import (SupervisedConfig, build_engine, fit, forward_scope, load_split, panacea_parts, run_trainer,
                                summary, total_optimizer_steps, vertex_means)
from rlhf.training.multi_objective import MultiObjectiveConfig


def dpo_losses(policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
               beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and reward margin. Inputs: sequence log-probs (..., ) of chosen (w) and rejected (l)."""
    margin = beta * ((policy_w - ref_w) - (policy_l - ref_l))
    return -F.logsigmoid(margin), margin


@dataclass(frozen=True)
class DPODataConfig:
    """Pairs per dimension: PKU-SafeRLHF (ids per dimension) or generic (a chosen/rejected column pair each)."""

    path: str = doc_field("", "hub dataset name or local .json/.jsonl/.parquet/.csv file")
    split: str = doc_field("train", "split (hub datasets)")
    schema: Literal["pku_saferlhf", "generic"] = doc_field("pku_saferlhf", "column layout")
    id_columns: tuple[str, ...] = doc_field(("better_response_id", "safer_response_id"),
                                            "pku_saferlhf: the preferred-response id column of each dimension")
    pair_columns: tuple[tuple[str, str], ...] = doc_field((), "generic: [chosen, rejected] columns per dimension")
    prompt_column: str = doc_field("prompt", "prompt column")
    eval_fraction: float = doc_field(0.05, "rows held out for evaluation")
    max_length: int = doc_field(256, "prompt + response tokens kept (responses truncated at the end)")
    prompt_template: str = doc_field(DEFAULT_TEMPLATE, "layout when the tokenizer has no chat template")
    max_samples: Optional[int] = doc_field(None, "use at most this many rows")

    def __post_init__(self) -> None:
        check(bool(self.path), "data.path", "is required")
        check(0 < self.eval_fraction < 1, "data.eval_fraction", "must be in (0, 1)")


@dataclass(frozen=True)
class DPOConfig(SupervisedConfig, MultiObjectiveConfig):
    """A Panacea-DPO run: the run and training fields (rlhf/runtime/run.py, rlhf/training/loop.py), the multi-objective block
    (rlhf/training/multi_objective.py), the pairs and beta."""

    PATH_FIELDS: ClassVar[dict[str, str]] = {'data.path': 'data'}

    lr: float = doc_field(5e-4, "learning rate (adapter)")
    data: DPODataConfig = doc_field(factory=DPODataConfig, doc="preference pairs per dimension")
    beta: float = doc_field(0.1, "DPO inverse temperature")

    def __post_init__(self) -> None:
        super().__post_init__()
        D = len(self.objectives)
        check(self.adapter is not None, "adapter", "is required: Panacea-DPO trains the SVD-LoRA adapter")
        n_cols = len(self.data.id_columns) if self.data.schema == "pku_saferlhf" else len(self.data.pair_columns)
        check(n_cols == D, "data.id_columns" if self.data.schema == "pku_saferlhf" else "data.pair_columns",
              f"name {n_cols} dimension columns but {D} objectives are configured")
        check(self.beta > 0, "beta", f"must be > 0, got {self.beta}")


class DPOData:
    """Per row: the distinct responses (ids with prompt) and per dimension (chosen index, rejected index)."""

    def __init__(self, rows: list[dict[str, Any]], cfg: DPODataConfig, tokenizer: Any,
                 numbers: Optional[list[int]] = None) -> None:
        """``numbers``: each row's number in the file (for messages)."""
        self.pad_id = tokenizer.pad_token_id
        self.rows: list[tuple[list[tuple[list[int], int]], list[tuple[int, int]]]] = []
        self.dropped = self.truncated = 0
        for n, row in zip(numbers or range(len(rows)), rows):
            try:
                self._add(row, cfg, tokenizer)
            except DataError as err:
                raise DataError(f"{cfg.path!r} row {n}: {err}") from None
        if self.dropped:
            warnings.warn(f"dropped {self.dropped} rows where a dimension's chosen and rejected responses are "
                          f"identical")
        if self.truncated:
            warnings.warn(f"{self.truncated} sequences exceed data.max_length={cfg.max_length}; truncated at the end")
        if not self.rows:
            raise DataError(f"{cfg.path!r} has no usable rows (every pair has identical responses)")

    def _add(self, row: dict[str, Any], cfg: DPODataConfig, tokenizer: Any) -> None:
        prompt = row[cfg.prompt_column]
        if cfg.schema == "pku_saferlhf":
            texts = [row["response_0"], row["response_1"]]
            pairs = [(int(row[c]), 1 - int(row[c])) for c in cfg.id_columns]
        else:
            texts, pairs = [], []
            for chosen, rejected in cfg.pair_columns:
                (chat, c_text), (_, r_text) = split_chat(row[chosen]), split_chat(row[rejected])
                prompt = chat or prompt  # UltraFeedback style: the chosen column holds the whole chat
                for t in (c_text, r_text):
                    if t not in texts:
                        texts.append(t)
                pairs.append((texts.index(c_text), texts.index(r_text)))
        if any(c == r or texts[c].strip() == texts[r].strip() for c, r in pairs):
            self.dropped += 1
            return
        seqs = []
        for t in texts:
            p_ids, r_ids = encode_example(tokenizer, prompt, t, cfg.prompt_template)
            ids = p_ids + r_ids
            self.truncated += len(ids) > cfg.max_length
            seqs.append((ids[:cfg.max_length], min(len(p_ids), cfg.max_length - 1)))
        self.rows.append((seqs, pairs))

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: list[int]) -> dict[str, Any]:
        seqs, pairs, row_of = [], [], []
        for b, i in enumerate(indices):
            s, p = self.rows[i]
            base = len(seqs)
            seqs += s
            row_of += [b] * len(s)
            pairs.append([(base + c, base + r) for c, r in p])
        ids, mask = pad_batch([x for x, _ in seqs], self.pad_id)                               # (S, L)
        loss_mask = mask.clone()
        for j, (_, plen) in enumerate(seqs):
            loss_mask[j, :plen] = 0
        return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask,
                "pairs": torch.tensor(pairs), "row_of": torch.tensor(row_of)}                  # (B, D, 2), (S,)


def sequence_logprobs(model: Any, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """(S,) summed log-probs of the response tokens."""
    ids, mask = b["input_ids"], b["attention_mask"]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                   use_cache=False).logits[:, :-1]                                             # (S, L-1, V)
    lp = logprobs_from_logits(logits, ids[:, 1:])                                              # (S, L-1)
    return (lp * b["loss_mask"][:, 1:]).sum(-1)                                                # (S,)


def train(cfg: DPOConfig) -> Path:
    return run_trainer(cfg, "dpo", _train)


def _train(cfg: DPOConfig, run: Run, tokenizer: Any) -> Path:
    from transformers import AutoModelForCausalLM

    d = cfg.data
    needed = ([d.prompt_column, "response_0", "response_1", *d.id_columns] if d.schema == "pku_saferlhf"
              else [d.prompt_column, *[c for pair in d.pair_columns for c in pair]])
    train_data, eval_data = load_split(run, d, cfg.seed, needed, [c for c in needed if c not in d.id_columns],
                                       "check data.schema / data.id_columns / data.pair_columns",
                                       lambda rows, data, at: DPOData(rows, data, tokenizer, at))
    D = len(cfg.objectives)
    total_steps = total_optimizer_steps(len(train_data), cfg.micro_batch_size, cfg.grad_accum, cfg.epochs,
                                        cfg.max_steps)

    def prepare(model: torch.nn.Module) -> None:
        apply_svd_lora(model, cfg.adapter)
        model.eval()  # no dropout: policy and reference log-probs must compare like with like

    model_engine = build_engine(cfg, run, lambda: AutoModelForCausalLM.from_pretrained(cfg.model_name_or_path),
                                total_steps, prepare, tokenizer=tokenizer, max_length=cfg.data.max_length)
    info = cfg.run_info("dpo", cfg.model_name_or_path, prompt_template=cfg.data.prompt_template)
    policy, front = panacea_parts(cfg, model_engine, tokenizer, info)
    run.start_tracking()
    aggregation, dev = cfg.aggregation.build(), engine.device()
    sampler = cfg.preference.build(len(cfg.objectives), cfg.seed)

    def to_batch(data: DPOData, indices: list[int], lam: torch.Tensor) -> TrainBatch:
        t = {k: v.to(dev) for k, v in data.batch(indices).items()}
        return TrainBatch(indices=tuple(indices), tensors=t, preference=lam.to(dev), row_of=t["row_of"])

    def per_dim(batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) DPO losses and margins; the caller runs it inside the batch's scope (its lambda)."""
        b = batch.tensors
        policy = sequence_logprobs(model_engine, b)                                            # (S,)
        with torch.no_grad(), adapter_disabled(model_engine.module):
            ref = sequence_logprobs(model_engine, b)                                           # (S,)
        w, l = b["pairs"][..., 0], b["pairs"][..., 1]                                           # (B, D) each
        return dpo_losses(policy[w], policy[l], ref[w], ref[l], cfg.beta)

    def make_batch(indices: list[int], micro: int) -> TrainBatch:
        lam = sampler.for_micro_batch(micro, cfg.grad_accum, engine.rank(), len(indices))        # (D,) or (B, D)
        return to_batch(train_data, indices, lam)

    def step_fn(batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        losses, margins = per_dim(batch)                                                         # (B, D)
        if batch.preference.dim() == 1:   # one lambda for the batch: aggregate the batch-mean losses
            loss = aggregation.loss(losses.mean(0), batch.preference)
        else:                             # one lambda per row: aggregate each row under its own, then average
            loss = aggregation.loss(losses, batch.preference).mean()
        metrics = {}
        for i, n in enumerate(cfg.objective_names):
            metrics[f"loss/{n}"] = losses[:, i].mean().item()
            metrics[f"reward_margin/{n}"] = margins[:, i].mean().item()
            metrics[f"accuracy/{n}"] = (margins[:, i] > 0).float().mean().item()
        return loss, metrics

    def eval_correct(rows: list[int], i: int) -> torch.Tensor:
        """Held-out pairs of dimension i ranked right at vertex e_i (ties count 1/2), summed over rows."""
        batch = to_batch(eval_data, rows, F.one_hot(torch.tensor(i), D).float())
        with forward_scope(model_engine.module, batch):
            _, margins = per_dim(batch)
        return ((margins[:, i] > 0).double() + 0.5 * (margins[:, i] == 0).double()).sum()

    return fit(model_engine, run, cfg, len(train_data), total_steps=total_steps, make_batch=make_batch,
               step_fn=step_fn, desc="dpo", save=lambda res: _save(run, policy(res.steps), res), front=front,
               checkpoint_policy=policy,
               eval_fn=lambda: vertex_means("eval/accuracy", cfg.objective_names, len(eval_data),
                                            cfg.micro_batch_size, eval_correct),
               banner=f"[dpo] {D} objectives {list(cfg.objective_names)}, aggregation={cfg.aggregation.NAME}: "
                      f"{len(train_data)} rows, {total_steps} optimiser steps")


def _save(run: Run, write_policy: Callable[[Path], None], res: Any) -> Path:
    def write(tmp: Path) -> None:
        write_policy(tmp)
        (tmp / "dpo_summary.json").write_text(json.dumps(summary(res), indent=2))

    target = run.save_result(write, subdir="policy")
    if engine.is_main():
        print(f"[dpo] saved {target}", flush=True)
    return target
