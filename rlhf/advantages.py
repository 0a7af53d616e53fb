"""Vector rewards and per-dimension GAE (DESIGN.md §1 "Vector rewards"). Pure torch, no state.

Rewards per dimension: the end score on the last response token, zero elsewhere. The KL penalty
``-beta * (log pi - log pi_ref)`` is kept as its own per-token reward with its own reward-to-go, so that the
aggregation adds it exactly once (LS: ``sum_i lambda_i A_i + A_kl``; Tche: outside the min).
"""
from __future__ import annotations

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
