"""The PPO run's config: one frozen dataclass per section, every field documented, validated before compute."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from rlhf.algo.advantages import ADVANTAGES, AdvantageConfig
from rlhf.core.config import check, doc_field
from rlhf.core.registry import check_zero_stage
from rlhf.data.chat import DEFAULT_TEMPLATE
from rlhf.rollout.backends import SamplingFields
from rlhf.runtime.run import RunConfig
from rlhf.scoring.objectives import OBJECTIVES
from rlhf.training.multi_objective import MultiObjectiveConfig
from rlhf.training.optim import OptimizerFields


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
class PPOHyperParams(OptimizerFields):
    """PPO hyper-parameters; defaults follow DESIGN.md §1 (gamma 1, GAE lambda 0.95) and safe-rlhf. The optimiser
    fields (weight decay, clipping, schedule) are ``rlhf/training/optim.py``'s, shared with every trainer."""

    kl_coef: float = doc_field(0.02, "beta of the per-token KL penalty -beta (log pi - log pi_ref)")
    clip_ratio: float = doc_field(0.2, "PPO ratio clip epsilon")
    value_clip: float = doc_field(5.0, "value-loss clip around the old values")
    score_clip: float = doc_field(50.0, "end scores clipped to +-score_clip")
    gamma: float = doc_field(1.0, "discount (of the KL reward-to-go and of GAE)")
    ppo_epochs: int = doc_field(1, "passes over each rollout batch")
    whiten_advantages: bool = doc_field(False, "normalise each dimension's advantages over the batch")
    actor_lr: float = doc_field(1e-4, "actor (adapter) learning rate")
    critic_lr: float = doc_field(5e-4, "critic (adapter + value heads) learning rate")
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = doc_field(
        "constant_with_warmup", "schedule after warm-up (PPO keeps the rate: the data distribution moves)")
    critic_warmup_steps: int = doc_field(0, "PPO steps at the start that train only the critic")
    tis_cap: Optional[float] = doc_field(
        None, "truncated importance sampling for an engine that samples with its own numerics (vLLM): each token's "
              "policy loss is weighted by min(pi_old / pi_sampler, tis_cap) (null: off; e.g. 2.0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.kl_coef >= 0, "ppo.kl_coef", f"must be >= 0, got {self.kl_coef}")
        check(0 < self.clip_ratio < 1, "ppo.clip_ratio", f"must be in (0, 1), got {self.clip_ratio}")
        check(self.value_clip > 0 and self.score_clip > 0, "ppo.value_clip", "value_clip and score_clip must be > 0")
        check(0 <= self.gamma <= 1, "ppo.gamma", f"must be in [0, 1], got {self.gamma}")
        check(self.ppo_epochs >= 1, "ppo.ppo_epochs", f"must be >= 1, got {self.ppo_epochs}")
        check(self.actor_lr > 0 and self.critic_lr > 0, "ppo.actor_lr", "actor_lr and critic_lr must be > 0")
        check(self.critic_warmup_steps >= 0, "ppo.critic_warmup_steps", "must be >= 0")
        check(self.tis_cap is None or self.tis_cap >= 1, "ppo.tis_cap",
              f"must be >= 1 (a cap on pi_old / pi_sampler) or null, got {self.tis_cap}")


@dataclass(frozen=True)
class GenerationConfig(SamplingFields):
    """Sampling during rollouts (the sampling fields are shared with evaluation: ``rlhf/rollout/backends.py``)."""

    merge_adapter: bool = doc_field(
        False, "generate with W0 + dW(lambda) merged (2x faster on GPU; one extra copy of the adapted weights "
               "during generation; needs per-batch lambda and ZeRO stage 0-2)")


@dataclass(frozen=True)
class PPOConfig(RunConfig, MultiObjectiveConfig):
    """A Panacea PPO run: ``deepspeed rlhf/train_ppo.py --config configs/<x>.yaml [--key value ...]``.

    The run fields (output_dir, seed, checkpoints, resume, W&B: ``rlhf/runtime/run.py``) and the multi-objective block
    (objectives, adapter, preference, aggregation: ``rlhf/training/multi_objective.py``) are shared with every trainer."""

    PATH_FIELDS: ClassVar[dict[str, str]] = {'actor_model': 'model', 'tokenizer': 'model', 'critic_model': 'model', 'prompts.path': 'data', 'ptx.path': 'data'}

    actor_model: str = doc_field("", "SFT policy: hub name or path (any HF causal LM)")
    tokenizer: Optional[str] = doc_field(None, "policy tokenizer (null: the actor's)")
    critic_model: Optional[str] = doc_field(None, "critic backbone (null: the actor's base)")
    prompts: PromptDataConfig = doc_field(factory=PromptDataConfig, doc="prompt dataset")
    ppo: PPOHyperParams = doc_field(factory=PPOHyperParams, doc="PPO hyper-parameters")
    advantage: AdvantageConfig = doc_field(factory=ADVANTAGES.default_block, doc="how per-dimension advantages are "
                                                                                 "estimated")
    generation: GenerationConfig = doc_field(factory=GenerationConfig, doc="rollout sampling")
    ptx: PTXConfig = doc_field(factory=PTXConfig, doc="optional PTX loss")
    rollout_batch_size: int = doc_field(16, "sampled responses per rank per PPO step (group estimator: "
                                            "rollout_batch_size / group_size prompts, each sampled group_size times)")
    mini_batch_size: int = doc_field(16, "samples per rank per optimiser step (divides rollout_batch_size)")
    micro_batch_size: int = doc_field(8, "samples per forward/backward (divides mini_batch_size)")
    total_steps: int = doc_field(100, "PPO steps (rollout + update)")
    sample_every: int = doc_field(10, "log a table of sample completions every N steps (0: never)")
    max_bad_batches: int = doc_field(3, "abort after this many batches in a row with NaN/inf scores")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.actor_model), "actor_model", "is required: an SFT causal LM (hub name or path)")
        check(self.adapter is not None, "adapter", "is required: PPO trains the SVD-LoRA adapter")
        for i, o in enumerate(self.objectives):
            check(o.SCORES, f"objectives[{i}]", f"objective {o.name!r} names no source of scores; give it one of "
                                                f"{OBJECTIVES.names()} (e.g. model: PATH of a score model)")
        check(self.rollout_batch_size >= 1, "rollout_batch_size", "must be >= 1")
        check(self.mini_batch_size >= 1 and self.rollout_batch_size % self.mini_batch_size == 0, "mini_batch_size",
              f"must divide rollout_batch_size ({self.rollout_batch_size}), got {self.mini_batch_size}")
        check(self.micro_batch_size >= 1 and self.mini_batch_size % self.micro_batch_size == 0, "micro_batch_size",
              f"must divide mini_batch_size ({self.mini_batch_size}), got {self.micro_batch_size}")
        check(self.total_steps >= 1, "total_steps", "must be >= 1")
        check(self.max_bad_batches >= 1, "max_bad_batches", "must be >= 1")
        check(not (self.generation.merge_adapter and self.preference.per_row), "generation.merge_adapter",
              "needs one lambda per batch; per-sample lambdas (preference.per: sample) cannot be merged")
        check(not (self.preference.per_row and not self.generation.backend.PER_ROW_PREFERENCE), "preference",
              f"draws one lambda per sample but generation backend {self.generation.backend.NAME!r} decodes a batch "
              f"under one lambda")
        if not self.advantage.NEEDS_CRITIC:
            check(self.critic_model is None, "critic_model",
                  f"must be null: advantage estimator {self.advantage.NAME!r} trains no critic")
            check(self.ppo.critic_warmup_steps == 0, "ppo.critic_warmup_steps",
                  f"must be 0: advantage estimator {self.advantage.NAME!r} trains no critic to warm up")

    @property
    def grad_accum(self) -> int:
        return self.mini_batch_size // self.micro_batch_size


def check_runtime(cfg: PPOConfig, world: int, hidden_size: Optional[int] = None) -> tuple[dict, dict]:
    """Checks that need the DeepSpeed JSON, run by ``--dry_run`` and by the trainer before any model loads: the
    resolved actor and critic DeepSpeed configs (they differ only in learning rate), refused where the ZeRO stage
    cannot serve the generation settings."""
    from rlhf.runtime import engine

    common = dict(micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum,
                  weight_decay=cfg.ppo.weight_decay, precision=cfg.precision, max_grad_norm=cfg.ppo.max_grad_norm,
                  hidden_size=hidden_size, world=world)
    actor = engine.resolve_ds_config(cfg.ds_config, lr=cfg.ppo.actor_lr, **common)
    critic = engine.resolve_ds_config(cfg.ds_config, lr=cfg.ppo.critic_lr, **common)
    stage = engine.zero_stage(actor)
    check(not (cfg.generation.merge_adapter and stage == 3), "generation.merge_adapter",
          f"needs ZeRO stage 0-2 ({cfg.ds_config} is stage 3: no rank holds full weights to merge into)")
    check_zero_stage(cfg, stage, cfg.ds_config)  # every plug-in block's own ZERO_STAGES
    return actor, critic
