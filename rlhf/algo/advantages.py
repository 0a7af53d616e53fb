"""Vector advantages (B, T, D) from per-dimension end scores (B, D): the estimator registry, pure torch, no state.

- ``gae``: rewards per dimension are the end score on the last response token, zero elsewhere; per-dimension GAE
  against a lambda-conditioned critic with D value heads (DESIGN.md §1 "Vector rewards").
- ``group``: critic-free (GRPO/RLOO style). Each prompt is sampled G times under one lambda; per dimension a
  sample's advantage is its end score minus its group's baseline (the group mean, or the mean of the other G - 1
  samples: RLOO's leave-one-out), optionally divided by the group's std, broadcast over the response tokens.
  Dividing by the std changes what lambda weighs: ``sum_i lambda_i A_i`` then mixes *standardised* advantages, so a
  dimension whose scores hardly vary within a group gets as much push per unit of lambda as one that varies a lot
  (lambda weighs per-dimension rank-like signals, not score units).

Either way the KL penalty ``-beta * (log pi - log pi_ref)`` is its own per-token reward with its own reward-to-go,
added exactly once after the aggregation (``sum_i w_i A_i + A_kl``), so both estimators optimise the same
KL-regularised objective at the same ``kl_coef`` and the policy gets per-token credit for the KL term.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional, Protocol

import torch

from rlhf.core.config import check, doc_field
from rlhf.core.registry import Plugin, Registry


def last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each sequence's last response token (0 for an empty response)."""
    t = torch.arange(response_mask.shape[1], device=response_mask.device)                    # (T,)
    return (response_mask * t).argmax(-1)                                                     # (B,)


def token_rewards(end_scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D): each dimension's end score ``(B, D)`` on the last response token."""
    B, T = response_mask.shape
    rewards = end_scores.new_zeros(B, T, end_scores.shape[-1])                                # (B, T, D)
    rewards[torch.arange(B, device=end_scores.device), last_token_index(response_mask)] = end_scores
    return rewards * response_mask.unsqueeze(-1)


def kl_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, beta: float,
               response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token KL estimate ``log pi - log pi_ref`` (B, T) and its penalty reward ``-beta * kl`` (B, T)."""
    kl = (logprobs - ref_logprobs) * response_mask                                            # (B, T)
    return kl, -beta * kl


def gae(rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, vectorised over every leading and trailing dimension.

    rewards, values: (B, T) or (B, T, D); response_mask: (B, T). Positions after the end are terminal (value 0).
    Returns (advantages, returns), each shaped like ``rewards``.
    """
    mask = response_mask if rewards.dim() == 2 else response_mask.unsqueeze(-1)               # (B, T[, 1])
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)                                                    # (B, T[, D])
    next_adv = torch.zeros_like(rewards[:, 0])                                                # (B[, D])
    next_value = torch.zeros_like(rewards[:, 0])                                              # (B[, D])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]                             # (B[, D])
        next_adv = delta + gamma * lam * next_adv
        advantages[:, t] = next_adv
        next_value = values[:, t]
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def reward_to_go(rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, T) discounted sum of future rewards: GAE with no critic (values 0, lambda 1)."""
    return gae(rewards, torch.zeros_like(rewards), response_mask, gamma, 1.0)[0]


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each trailing dimension of ``x`` (B, T[, D]) to zero mean, unit std over masked tokens."""
    m = mask if x.dim() == 2 else mask.unsqueeze(-1)
    n = m.sum(dim=(0, 1)).clamp(min=1)
    mean = (x * m).sum(dim=(0, 1)) / n
    var = (((x - mean) * m) ** 2).sum(dim=(0, 1)) / n
    return (x - mean) * torch.rsqrt(var + eps) * m


def group_advantages(scores: torch.Tensor, group_size: int, baseline: str = "mean", std_normalize: bool = False,
                     eps: float = 1e-6) -> torch.Tensor:
    """(B, D) critic-free advantages: rows [g*G, (g+1)*G) are one prompt's G samples under one lambda.

    mean: ``s_j - mean_k s_k``; loo: ``s_j - mean_{k != j} s_k`` (= G / (G - 1) times the former); with
    ``std_normalize`` divided by the group's (unbiased) std per dimension.
    """
    B, D = scores.shape
    G = group_size
    if B % G:
        raise ValueError(f"{B} rows do not split into groups of {G}")
    s = scores.float().view(B // G, G, D)                                                   # (B/G, G, D)
    adv = s - s.mean(1, keepdim=True)                                                        # (B/G, G, D)
    if baseline == "loo":
        adv = adv * (G / (G - 1))
    elif baseline != "mean":
        raise ValueError(f"unknown group baseline {baseline!r}; choose mean or loo")
    if std_normalize:
        adv = adv / (s.std(1, keepdim=True) + eps)
    return adv.view(B, D).to(scores.dtype)


# ----------------------------------------------------------------------------------------------------------
# The plug-in point: ``advantage: {name: gae | group, ...}``
# ----------------------------------------------------------------------------------------------------------

class Estimator(Protocol):
    """What the trainer calls: ``estimate(scores (B, D), values (B, T, D) | None, response_mask (B, T))`` ->
    (advantages (B, T, D), returns (B, T, D) | None: the critic's targets). Settings are bound at ``build``."""

    def estimate(self, scores: torch.Tensor, values: Optional[torch.Tensor], response_mask: torch.Tensor
                 ) -> tuple[torch.Tensor, Optional[torch.Tensor]]: ...


@dataclass(frozen=True)
class AdvantageConfig(Plugin):
    """How per-dimension advantages are estimated. ``advantage: group`` is short for ``{name: group}``."""

    NEEDS_CRITIC: ClassVar[bool] = True       # the trainer builds, steps and saves a D-head critic

    @property
    def samples_per_prompt(self) -> int:
        """Responses sampled per prompt in a rollout (``rollout_batch_size`` counts responses)."""
        return 1

    def build(self, gamma: float) -> Estimator:
        raise NotImplementedError


ADVANTAGES: Registry = Registry("advantage estimator", AdvantageConfig, default="gae")


@ADVANTAGES.register("gae")
@dataclass(frozen=True)
class GAEConfig(AdvantageConfig):
    """Per-dimension GAE against a lambda-conditioned critic with D value heads."""

    gae_lambda: float = doc_field(0.95, "GAE lambda (DESIGN.md §1: 0.95)")

    def __post_init__(self) -> None:
        check(0 <= self.gae_lambda <= 1, "gae_lambda", f"must be in [0, 1], got {self.gae_lambda}")

    def build(self, gamma: float) -> Estimator:
        return GAE(gamma, self.gae_lambda)


@dataclass(frozen=True)
class GAE:
    gamma: float
    gae_lambda: float

    def estimate(self, scores: torch.Tensor, values: Optional[torch.Tensor], response_mask: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        rewards = token_rewards(scores.to(values), response_mask)                            # (B, T, D)
        return gae(rewards, values, response_mask.float(), self.gamma, self.gae_lambda)       # (B, T, D) each


@ADVANTAGES.register("group")
@dataclass(frozen=True)
class GroupConfig(AdvantageConfig):
    """Critic-free: each prompt sampled group_size times under one lambda; end score minus the group's baseline."""

    NEEDS_CRITIC: ClassVar[bool] = False

    group_size: int = doc_field(4, "samples per prompt (G); rollout_batch_size counts samples, so a step rolls out "
                                   "rollout_batch_size / G prompts")
    baseline: Literal["mean", "loo"] = doc_field("mean", "the group mean, or leave-one-out (RLOO: the mean of the "
                                                         "other G - 1 samples)")
    std_normalize: bool = doc_field(False, "divide each dimension's advantages by the group's std (lambda then "
                                           "weighs standardised advantages, not score units)")

    def __post_init__(self) -> None:
        check(self.group_size >= 2, "group_size", f"must be >= 2 (a baseline needs other samples), got "
                                                  f"{self.group_size}")

    @property
    def samples_per_prompt(self) -> int:
        return self.group_size

    def check(self, run_cfg: Any, path: str) -> None:
        batch = getattr(run_cfg, "rollout_batch_size", None)
        check(batch is None or batch % self.group_size == 0, f"{path}.group_size",
              f"must divide rollout_batch_size ({batch}: samples per step), got {self.group_size}")

    def build(self, gamma: float) -> Estimator:
        return GroupBaseline(self.group_size, self.baseline, self.std_normalize)


@dataclass(frozen=True)
class GroupBaseline:
    group_size: int
    baseline: str
    std_normalize: bool

    def estimate(self, scores: torch.Tensor, values: Optional[torch.Tensor], response_mask: torch.Tensor
                 ) -> tuple[torch.Tensor, None]:
        adv = group_advantages(scores, self.group_size, self.baseline, self.std_normalize)   # (B, D)
        return adv[:, None, :] * response_mask.unsqueeze(-1).to(adv), None                    # (B, T, D)
