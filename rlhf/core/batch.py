"""The dataclasses that flow between stages, grouped by role, with shapes (OpenRLHF's Experience, typed).

prompts -> Rollout (generate) -> Experience (score, values, GAE) -> PPO update.
B = rollout batch, P = prompt length (left-padded), T = response length (right-padded), D = objectives.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch


@dataclass(frozen=True)
class Rollout:
    """What generation produced, and the log-probs recorded under the same lambda."""

    sequences: torch.Tensor          # (B, P+T) prompt (left-padded) + response (right-padded) token ids
    attention_mask: torch.Tensor     # (B, P+T) 1 on real prompt tokens and response tokens up to EOS
    response_mask: torch.Tensor      # (B, T) 1 on response tokens up to and including EOS
    old_logprobs: torch.Tensor | None  # (B, T) log pi_old(y_t | x, y_<t; lambda); None: one update per batch,
                                       # where pi_old is the first update's own (detached) log-probs
    ref_logprobs: torch.Tensor       # (B, T) log pi_ref, the same network with the adapter off
    preference: torch.Tensor         # (D,) or (B, D) lambda used for this batch
    prompts: tuple[str, ...]         # B raw prompt strings (score models re-format them)
    responses: tuple[str, ...]       # B decoded responses
    columns: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # the prompt dataset's other columns, B values
                                                                        # each (function and URL objectives read them)
    sampler_logprobs: torch.Tensor | None = None  # (B, T) log-probs the decoding engine sampled with (an engine of
                                                  # its own, e.g. vLLM; None: the trainer's model decoded)

    @property
    def prompt_length(self) -> int:
        return self.sequences.shape[1] - self.response_mask.shape[1]


PER_SEQUENCE = ("scores", "weights")  # Experience tensors with no token axis


@dataclass(frozen=True)
class Experience:
    """A rollout with everything the PPO update needs."""

    rollout: Rollout
    scores: torch.Tensor             # (B, D) end scores, higher = better in every dimension (costs negated)
    values: torch.Tensor | None      # (B, T, D) critic values under lambda at generation time (None: no critic)
    advantages: torch.Tensor         # (B, T, D) per-dimension advantages (GAE, or the group estimator's)
    returns: torch.Tensor | None     # (B, T, D) advantages + values: the critic's targets (None: no critic)
    kl_advantages: torch.Tensor | None  # (B, T) reward-to-go of the KL penalty (enters the objective once); None
                                        # with old_logprobs None: the update computes it from its own log-probs
    kl: torch.Tensor | None          # (B, T) log pi_old - log pi_ref per token (None: as kl_advantages)
    weights: torch.Tensor            # (B, D) aggregation weights on the simplex (LS: lambda; Tche: lagging dimension)

    def select(self, idx: torch.Tensor) -> "Experience":
        """The sub-batch at row indices ``idx`` (mini-batches for the PPO epochs)."""
        r = self.rollout
        pref = r.preference if r.preference.dim() == 1 else r.preference[idx]
        sub_rollout = replace(r, sequences=r.sequences[idx], attention_mask=r.attention_mask[idx],
                              response_mask=r.response_mask[idx],
                              old_logprobs=None if r.old_logprobs is None else r.old_logprobs[idx],
                              ref_logprobs=r.ref_logprobs[idx], preference=pref,
                              prompts=tuple(r.prompts[i] for i in idx.tolist()),
                              responses=tuple(r.responses[i] for i in idx.tolist()),
                              columns={k: tuple(v[i] for i in idx.tolist()) for k, v in r.columns.items()},
                              sampler_logprobs=None if r.sampler_logprobs is None else r.sampler_logprobs[idx])
        tensors = {f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[idx]
                   for f in fields(self) if f.name != "rollout"}
        return Experience(rollout=sub_rollout, **tensors)

    def trimmed(self) -> "Experience":
        """The same rows without the columns that are padding in every row: leading prompt pads and the response
        positions after the longest response. Pads are masked out of attention and of every loss, so the update's
        values on real tokens are unchanged; a micro-batch of short answers just costs fewer tokens."""
        r = self.rollout
        P = r.prompt_length
        T = max(int(r.response_mask.sum(-1).max()), 1)                  # longest response in these rows
        lead = int((r.attention_mask[:, :P].sum(0) == 0).long().cumprod(0).sum())  # all-pad prompt columns
        if lead == 0 and T == r.response_mask.shape[1]:
            return self
        sub_rollout = replace(r, sequences=r.sequences[:, lead:P + T], attention_mask=r.attention_mask[:, lead:P + T],
                              response_mask=r.response_mask[:, :T],
                              old_logprobs=None if r.old_logprobs is None else r.old_logprobs[:, :T],
                              ref_logprobs=r.ref_logprobs[:, :T],
                              sampler_logprobs=None if r.sampler_logprobs is None else r.sampler_logprobs[:, :T])
        tensors = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rollout"}
        tensors.update({k: v[:, :T] for k, v in tensors.items() if k not in PER_SEQUENCE and v is not None})
        return Experience(rollout=sub_rollout, **tensors)


@dataclass(frozen=True)
class TrainBatch:
    """One micro-batch of a supervised trainer (score models, SFT, DPO) and the lambda its forwards run under.

    The batch is the single source of that lambda: the loop scopes every forward and backward on it to
    ``adapter_preference()`` (``rlhf/training/loop.py``), and the trainer weights the step's loss with ``preference``.
    """

    indices: tuple[int, ...]                  # B dataset rows of this rank
    tensors: dict                             # the trainer's tensors for these rows (on the device)
    preference: torch.Tensor | None = None    # (D,) for the batch or (B, D) one per row; None: no adapter
    row_of: torch.Tensor | None = None        # (S,) batch row of each forward row, when a row has several sequences

    def adapter_preference(self) -> torch.Tensor | None:
        """What the adapter sees: (D,), or one lambda per forward row (S, D)."""
        if self.preference is None or self.preference.dim() == 1 or self.row_of is None:
            return self.preference
        return self.preference[self.row_of.to(self.preference.device)]                 # (S, D)
