"""The PPO run's config: one frozen dataclass per section, every field documented, validated before compute."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from rlhf.config import check, doc_field
from rlhf.data import DEFAULT_TEMPLATE
from rlhf.preference import PreferenceConfig
from rlhf.scoring import ObjectiveConfig
from rlhf.svd_lora import SVDLoRAConfig
from rlhf.tracking import WandbConfig


@dataclass(frozen=True)
class PromptDataConfig:
    """Prompts to roll out on."""

    path: str = doc_field("", "hub dataset name or local .json/.jsonl/.parquet/.csv file")
    split: str = doc_field("train", "split (hub datasets)")
    prompt_column: str = doc_field("prompt", "column holding the user prompt")
    max_prompt_length: int = doc_field(128, "prompt tokens kept (left-truncated)")
    prompt_template: str = doc_field(DEFAULT_TEMPLATE, "layout when the policy tokenizer has no chat template")
    max_samples: Optional[int] = doc_field(None, "use at most this many prompts (null: all)")

    def __post_init__(self) -> None:
        check(bool(self.path), "prompts.path", "is required: a hub dataset name or a local prompt file")
        check(self.max_prompt_length >= 1, "prompts.max_prompt_length", "must be >= 1")


@dataclass(frozen=True)
class PTXConfig:
    """Optional language-model loss on SFT data mixed into the actor update (InstructGPT's PPO-ptx)."""

    path: Optional[str] = doc_field(None, "SFT dataset (null: no PTX)")
    text_column: str = doc_field("text", "column with the full training text")
    coef: float = doc_field(0.0, "weight of the PTX loss")
    max_length: int = doc_field(512, "tokens per PTX sequence")

    def __post_init__(self) -> None:
        check(self.coef >= 0, "ptx.coef", f"must be >= 0, got {self.coef}")
        check(self.path is None or self.coef > 0, "ptx.coef", "must be > 0 when ptx.path is set")


@dataclass(frozen=True)
class PPOHyperParams:
    """PPO hyper-parameters; defaults follow DESIGN.md §1 (gamma 1, GAE lambda 0.95) and safe-rlhf."""

    kl_coef: float = doc_field(0.02, "beta of the per-token KL penalty -beta (log pi - log pi_ref)")
    clip_ratio: float = doc_field(0.2, "PPO ratio clip epsilon")
    value_clip: float = doc_field(5.0, "value-loss clip around the old values")
    score_clip: float = doc_field(50.0, "end scores clipped to +-score_clip")
    gamma: float = doc_field(1.0, "discount")
    gae_lambda: float = doc_field(0.95, "GAE lambda")
    ppo_epochs: int = doc_field(1, "passes over each rollout batch")
    whiten_advantages: bool = doc_field(False, "normalise each dimension's advantages over the batch")
    actor_lr: float = doc_field(1e-4, "actor (adapter) learning rate")
    critic_lr: float = doc_field(5e-4, "critic (adapter + value heads) learning rate")
    weight_decay: float = doc_field(0.0, "AdamW weight decay")
    warmup_steps: int = doc_field(0, "linear warm-up optimiser steps")
    lr_scheduler: Literal["constant_with_warmup", "cosine", "linear"] = doc_field("constant_with_warmup", "schedule")
    max_grad_norm: float = doc_field(1.0, "gradient clipping")
    critic_warmup_steps: int = doc_field(0, "PPO steps at the start that train only the critic")

    def __post_init__(self) -> None:
        check(self.kl_coef >= 0, "ppo.kl_coef", f"must be >= 0, got {self.kl_coef}")
        check(0 < self.clip_ratio < 1, "ppo.clip_ratio", f"must be in (0, 1), got {self.clip_ratio}")
        check(self.value_clip > 0 and self.score_clip > 0, "ppo.value_clip", "value_clip and score_clip must be > 0")
        check(0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "ppo.gamma", "gamma and gae_lambda must be in [0, 1]")
        check(self.ppo_epochs >= 1, "ppo.ppo_epochs", f"must be >= 1, got {self.ppo_epochs}")
        check(self.actor_lr > 0 and self.critic_lr > 0, "ppo.actor_lr", "actor_lr and critic_lr must be > 0")


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling during rollouts."""

    max_new_tokens: int = doc_field(128, "response length cap")
    temperature: float = doc_field(1.0, "sampling temperature (log-probs use the same temperature)")
    top_p: float = doc_field(1.0, "nucleus sampling")
    merge_adapter: bool = doc_field(
        False, "generate with W0 + dW(lambda) merged (2x faster on GPU; one extra copy of the adapted weights "
               "during generation; needs per-batch lambda and ZeRO stage 0-2)")
    backend: Literal["hf", "hf_static_compile"] = doc_field(
        "hf", "decoder (rlhf/generation.py): hf = eager dynamic cache; hf_static_compile = static cache + "
              "torch.compile, compiled once per run, lambda a graph input (GPU; ZeRO stage 0-2)")
    compile_backend: str = doc_field("inductor", "torch.compile backend for hf_static_compile ('eager' on CPU)")

    def __post_init__(self) -> None:
        check(self.max_new_tokens >= 1, "generation.max_new_tokens", "must be >= 1")
        check(self.temperature > 0, "generation.temperature", f"must be > 0, got {self.temperature}")
        check(0 < self.top_p <= 1, "generation.top_p", f"must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class PPOConfig:
    """A Panacea PPO run: ``deepspeed rlhf/train_ppo.py --config configs/<x>.yaml [--key value ...]``."""

    actor_model: str = doc_field("", "SFT policy: hub name or path (any HF causal LM)")
    tokenizer: Optional[str] = doc_field(None, "policy tokenizer (null: the actor's)")
    critic_model: Optional[str] = doc_field(None, "critic backbone (null: the actor's base)")
    output_dir: str = doc_field("runs/ppo", "run directory: checkpoints/, final adapter, metrics.jsonl")
    objectives: tuple[ObjectiveConfig, ...] = doc_field((), "the D objectives, in lambda order")
    adapter: SVDLoRAConfig = doc_field(factory=SVDLoRAConfig, doc="SVD-LoRA of actor and critic (pref_dim = D)")
    prompts: PromptDataConfig = doc_field(factory=PromptDataConfig, doc="prompt dataset")
    preference: PreferenceConfig = doc_field(factory=PreferenceConfig, doc="lambda sampling")
    aggregation: Literal["ls", "tche", "stche"] = doc_field("ls", "ls: sum lambda_i A_i; tche: Tchebycheff; stche: smooth")
    tche_ideal: Optional[tuple[float, ...]] = doc_field(None, "Tche ideal point z (null: running max of J_i)")
    stche_mu: float = doc_field(0.1, "temperature of smooth Tchebycheff")
    ppo: PPOHyperParams = doc_field(factory=PPOHyperParams, doc="PPO hyper-parameters")
    generation: GenerationConfig = doc_field(factory=GenerationConfig, doc="rollout sampling")
    ptx: PTXConfig = doc_field(factory=PTXConfig, doc="optional PTX loss")
    rollout_batch_size: int = doc_field(16, "prompts per rank per PPO step")
    mini_batch_size: int = doc_field(16, "samples per rank per optimiser step (divides rollout_batch_size)")
    micro_batch_size: int = doc_field(8, "samples per forward/backward (divides mini_batch_size)")
    total_steps: int = doc_field(100, "PPO steps (rollout + update)")
    ds_config: str = doc_field("ds_configs/zero2.json", "DeepSpeed JSON for actor and critic (\"auto\" filled here)")
    precision: Literal["fp32", "bf16", "fp16"] = doc_field("bf16", "training precision")
    world_size: Optional[int] = doc_field(None, "expected process count: checked at launch, used by --dry_run")
    seed: int = doc_field(42, "seed of data order, lambda draws and sampling")
    save_every: int = doc_field(50, "checkpoint every N steps (0: only at the end)")
    keep_last: int = doc_field(2, "checkpoints kept")
    log_every: int = doc_field(1, "log metrics every N steps")
    sample_every: int = doc_field(10, "log a table of sample completions every N steps (0: never)")
    max_bad_batches: int = doc_field(3, "abort after this many batches in a row with NaN/inf scores")
    resume_from: Optional[str] = doc_field(None, "checkpoint directory, or 'latest' in output_dir/checkpoints")
    eval_scorers: dict[str, str] = doc_field(
        factory=dict, doc="extra scorers for evaluate.py, name -> 'module:function' (e.g. a ground-truth oracle)")
    dry_run: bool = doc_field(False, "validate config, DeepSpeed settings and batch arithmetic; load no model")
    wandb: WandbConfig = doc_field(factory=WandbConfig, doc="W&B logging")

    def __post_init__(self) -> None:
        check(bool(self.actor_model), "actor_model", "is required: an SFT causal LM (hub name or path)")
        check(len(self.objectives) >= 1, "objectives", "needs at least one objective (name, model, kind)")
        names = [o.name for o in self.objectives]
        check(len(set(names)) == len(names), "objectives", f"names must be unique, got {names}")
        D = len(self.objectives)
        check(self.adapter.pref_dim == D, "adapter.pref_dim",
              f"is {self.adapter.pref_dim} but {D} objectives are configured ({names}); they must match")
        if self.preference.mode == "fixed":
            check(len(self.preference.fixed) == D, "preference.fixed",
                  f"has {len(self.preference.fixed)} entries but {D} objectives are configured ({names})")
        if self.tche_ideal is not None:
            check(len(self.tche_ideal) == D, "tche_ideal", f"needs {D} entries, got {len(self.tche_ideal)}")
        check(self.stche_mu > 0, "stche_mu", f"must be > 0, got {self.stche_mu}")
        check(self.rollout_batch_size >= 1, "rollout_batch_size", "must be >= 1")
        check(self.mini_batch_size >= 1 and self.rollout_batch_size % self.mini_batch_size == 0, "mini_batch_size",
              f"must divide rollout_batch_size ({self.rollout_batch_size}), got {self.mini_batch_size}")
        check(self.micro_batch_size >= 1 and self.mini_batch_size % self.micro_batch_size == 0, "micro_batch_size",
              f"must divide mini_batch_size ({self.mini_batch_size}), got {self.micro_batch_size}")
        check(self.total_steps >= 1, "total_steps", "must be >= 1")
        check(self.save_every >= 0 and self.keep_last >= 1, "save_every", "save_every >= 0 and keep_last >= 1")
        check(self.max_bad_batches >= 1, "max_bad_batches", "must be >= 1")
        check(self.world_size is None or self.world_size >= 1, "world_size", "must be >= 1 or null")
        check(not (self.generation.merge_adapter and self.preference.per == "sample"), "generation.merge_adapter",
              "needs one lambda per batch (preference.per: batch); per-sample lambdas cannot be merged")

    @property
    def grad_accum(self) -> int:
        return self.mini_batch_size // self.micro_batch_size

    @property
    def objective_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objectives)
