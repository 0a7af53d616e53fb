"""PPO losses: small pure functions (clipped surrogate, aggregated policy loss, clipped per-dimension value loss).

Shapes: B batch, T response tokens, D objectives, V vocabulary.
"""
from __future__ import annotations

from typing import Optional

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int | tuple[int, ...]] = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (``mask`` broadcasts against ``x``)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, L) log-probability of ``labels`` (B, L) under ``logits`` (B, L, V), computed in fp32."""
    logp = torch.log_softmax(logits.float(), dim=-1)                                          # (B, L, V)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)                                  # (B, L)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(B, L) entropy of the next-token distribution."""
    logp = torch.log_softmax(logits.float(), dim=-1)                                          # (B, L, V)
    return -(logp.exp() * logp).sum(-1)                                                       # (B, L)


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO's pessimistic objective ``min(r A, clip(r, 1-eps, 1+eps) A)`` elementwise (to be maximised)."""
    return torch.min(ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                kl_advantages: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, clip: float,
                token_weights: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped PPO loss (to be minimised) on the aggregated advantage ``A = sum_i w_i A_i + A_kl``, and
    detached statistics.

    logprobs, old_logprobs, kl_advantages, mask: (B, T); advantages: (B, T, D); weights: (D,) or (B, D) on the
    simplex, from the aggregation registry (LS: lambda; Tchebycheff: the lagging dimension). The KL term enters
    once, outside the aggregation. ``token_weights`` (B, T), detached: a per-token factor on the surrogate (truncated
    importance sampling ``min(pi_old / pi_sampler, cap)`` when another engine sampled the tokens).
    """
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)                                                # (B, T)
    w = weights.to(advantages)
    w = w if w.dim() == 1 else w[:, None, :]                                                  # (D,) or (B, 1, D)
    A = (advantages * w).sum(-1) + kl_advantages                                              # (B, T)
    surrogate = clipped_surrogate(ratio, A, clip)                                             # (B, T)
    if token_weights is not None:
        surrogate = surrogate * token_weights.detach().to(surrogate)
    loss = -masked_mean(surrogate, mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean(((ratio - 1.0).abs() > clip).to(mask.dtype), mask),
            "approx_kl": masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> torch.Tensor:
    """(D,) clipped value loss per dimension: ``0.5 * max((V - R)^2, (clip(V, V_old +- eps) - R)^2)``.

    values, old_values, returns: (B, T, D); mask: (B, T).
    """
    clipped = old_values + (values - old_values).clamp(-clip, clip)                          # (B, T, D)
    err = torch.max((values - returns) ** 2, (clipped - returns) ** 2)                       # (B, T, D)
    return 0.5 * masked_mean(err, mask.unsqueeze(-1).to(values.dtype), dim=(0, 1))           # (D,)
