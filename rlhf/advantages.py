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
from typing import Callable, Optional

import torch


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


@dataclass(frozen=True)
class Estimator:
    """An advantage estimator: ``estimate(scores (B, D), values (B, T, D) | None, response_mask (B, T), **params)``
    -> (advantages (B, T, D), returns (B, T, D) | None: the critic's targets). ``params``: gamma, gae_lambda,
    group_size, baseline, std_normalize (each estimator reads its own)."""

    name: str
    needs_critic: bool
    estimate: Callable[..., tuple[torch.Tensor, Optional[torch.Tensor]]]


def _gae_estimate(scores: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, *, gamma: float,
                  gae_lambda: float, **_: object) -> tuple[torch.Tensor, torch.Tensor]:
    rewards = token_rewards(scores.to(values), response_mask)                                # (B, T, D)
    return gae(rewards, values, response_mask.float(), gamma, gae_lambda)                     # (B, T, D) each


def _group_estimate(scores: torch.Tensor, values: None, response_mask: torch.Tensor, *, group_size: int,
                    baseline: str, std_normalize: bool, **_: object) -> tuple[torch.Tensor, None]:
    adv = group_advantages(scores, group_size, baseline, std_normalize)                       # (B, D)
    return adv[:, None, :] * response_mask.unsqueeze(-1).to(adv), None                        # (B, T, D)


ESTIMATORS: dict[str, Estimator] = {
    "gae": Estimator("gae", needs_critic=True, estimate=_gae_estimate),
    "group": Estimator("group", needs_critic=False, estimate=_group_estimate),
}
