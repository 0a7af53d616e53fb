"""Rollout: generate under lambda, then record old and reference log-probs (Panacea §3.3 step 2).

The reference log-probs come from the *same* network with the adapter switched off: no second copy of the actor
in memory (DESIGN.md §1). Old and reference log-probs share one forward over the batch twice, the adapter on for
the first copy and off for the second (``svd_lora.adapter_rows``).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from typing import Any, Optional, Sequence

import torch
from torch import nn

from rlhf.adapter.svd_lora import adapter_disabled, adapter_rows, merged, scoped_preference
from rlhf.algo.losses import logprobs_from_logits
from rlhf.core.batch import Rollout
from rlhf.rollout.backends import GenerationBackend, HFEager
from rlhf.rollout.sampling import SharedNoiseSampling


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) positions that skip left padding, as HF ``generate`` computes them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_mask_from_tokens(response: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(B, T) 1 on response tokens up to and including the first EOS (works when pad == eos)."""
    is_eos = (response == eos_token_id).long()                                                # (B, T)
    return ((is_eos.cumsum(-1) - is_eos) == 0).long()                                         # (B, T)


@functools.lru_cache(maxsize=None)
def _accepts_logits_to_keep(forward: Any) -> bool:
    return "logits_to_keep" in inspect.signature(forward).parameters


def response_logprobs(model: nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor,
                      response_len: int, temperature: float, with_entropy: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) log-probs of the response tokens under ``model`` (sampling temperature applied), and entropy."""
    # Only the last T+1 positions need the LM head: skips its matmul (and (B, P, V) logits) over the prompt.
    # Every HF causal LM with generate() takes ``logits_to_keep``; others get the full logits.
    module = getattr(model, "module", model)  # a DeepSpeed engine forwards **kwargs to its module
    keep = {"logits_to_keep": response_len + 1} if _accepts_logits_to_keep(type(module).forward) else {}
    out = model(input_ids=sequences, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False, **keep)
    logits = out.logits[:, -response_len - 1:-1] / temperature                                # (B, T, V)
    logprobs = logprobs_from_logits(logits, sequences[:, -response_len:])                     # (B, T)
    entropy = None
    if with_entropy:
        from rlhf.algo.losses import entropy_from_logits

        entropy = entropy_from_logits(logits.detach())                                       # (B, T)
    return logprobs, entropy


@torch.no_grad()
def policy_and_reference_logprobs(actor: nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor,
                                  response_len: int, temperature: float, preference: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) log-probs under pi_old (adapter on, ``preference`` (D,) or (B, D)) and pi_ref (adapter off).

    One forward over ``[batch; batch]`` instead of two passes: the same FLOPs in half the kernel launches and one
    larger, better-utilised batch. Peak memory of this no-grad pass is that of a 2B-row forward.
    """
    B = sequences.shape[0]
    twice = lambda t: torch.cat([t, t])  # noqa: E731
    enabled = torch.cat([torch.ones(B), torch.zeros(B)])                                      # (2B,)
    pref = twice(preference) if preference.dim() == 2 else preference                         # (2B, D) or (D,)
    with scoped_preference(actor, pref), adapter_rows(actor, enabled):
        lp, _ = response_logprobs(actor, twice(sequences), twice(attention_mask), response_len,
                                  temperature)                                                # (2B, T)
    return lp[:B], lp[B:]


@torch.no_grad()
def generate(actor: nn.Module, tokenizer: Any, prompt_texts: Sequence[str], preference: Optional[torch.Tensor], *,
             max_prompt_length: int, max_new_tokens: int, temperature: float, top_p: float,
             synced_gpus: bool = False, do_sample: bool = True, backend: Optional[GenerationBackend] = None,
             seeds: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """Left-padded prompts -> (sequences (B, P+T) with pads after EOS, attention_mask (B, P+T), prompt length P,
    response_mask (B, T)); ``generate_with_sampler_logprobs`` documents the arguments."""
    return generate_with_sampler_logprobs(actor, tokenizer, prompt_texts, preference,
                                          max_prompt_length=max_prompt_length, max_new_tokens=max_new_tokens,
                                          temperature=temperature, top_p=top_p, synced_gpus=synced_gpus,
                                          do_sample=do_sample, backend=backend, seeds=seeds)[:4]


@torch.no_grad()
def generate_with_sampler_logprobs(
        actor: nn.Module, tokenizer: Any, prompt_texts: Sequence[str], preference: Optional[torch.Tensor], *,
        max_prompt_length: int, max_new_tokens: int, temperature: float, top_p: float, synced_gpus: bool = False,
        do_sample: bool = True, backend: Optional[GenerationBackend] = None, seeds: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, Optional[torch.Tensor]]:
    """``generate``'s four results and the sampler's (B, T) token log-probs (None from a backend that samples
    with the trainer's own model: its log-probs are the trainer's).

    ``preference`` (D,) or (B, D): every decoding forward runs under it; None leaves the adapter's state as it is
    (the base model under ``adapter_disabled``, or a lambda already merged into W0).
    ``backend`` decodes (``rlhf/rollout/backends.py``; default HF eager). ``seeds`` (B,): sample each row with its own
    seeded noise (``SharedNoiseSampling``; a backend with its own sampler seeds each row's request) instead of the
    global RNG, so a row's draw does not depend on its batch.
    """
    backend = backend or HFEager()
    device = next(actor.parameters()).device
    side, trunc = tokenizer.padding_side, tokenizer.truncation_side
    # Left padding: every prompt ends at the same column and responses line up. Left truncation: an over-long prompt
    # keeps its end (the user's request and the generation prompt); callers fit prompts first (data.fit_prompts),
    # so this only guards texts that come in unfitted, and says so.
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    try:
        # A compiled backend gets every batch at max_prompt_length: one shape, one graph.
        enc = tokenizer(list(prompt_texts), return_tensors="pt", truncation=True, max_length=max_prompt_length,
                        padding="max_length" if backend.static_shapes else True, add_special_tokens=True)
        # Only a row that fills max_prompt_length can have been cut: count those (fitted prompts rarely reach it,
        # so the untruncated tokenisation seldom runs).
        full = [i for i, n in enumerate(enc["attention_mask"].sum(1).tolist()) if n == max_prompt_length]
        n_long = sum(len(ids) > max_prompt_length for ids in
                     tokenizer([prompt_texts[i] for i in full], add_special_tokens=True)["input_ids"]) if full else 0
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = side, trunc
    if n_long:
        warnings.warn(f"{n_long} of {len(prompt_texts)} prompts exceed max_prompt_length={max_prompt_length} tokens "
                      f"and were cut from the left (their end kept); fit prompts with data.fit_prompts so that score "
                      f"models see the same conversation")
    input_ids, prompt_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)  # (B, P)
    sampler_logprobs = None
    with scoped_preference(actor, preference) if preference is not None else contextlib.nullcontext():
        if backend.own_sampler:  # it reads lambda from the adapter's scoped state and seeds each row itself
            sequences, sampler_logprobs = backend.generate_with_logprobs(
                actor, input_ids, prompt_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                temperature=temperature, top_p=top_p, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, seeds=seeds)                           # (B, P+T), (B, T)
        else:
            shared = seeds is not None and do_sample
            processors = [SharedNoiseSampling(seeds, input_ids.shape[1], temperature, top_p)] if shared else None
            sequences = backend.generate(actor, input_ids, prompt_mask, max_new_tokens=max_new_tokens,
                                         do_sample=do_sample and not shared, temperature=temperature, top_p=top_p,
                                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                         synced_gpus=synced_gpus, logits_processor=processors)  # (B, P+T)
    P = input_ids.shape[1]
    response_mask = response_mask_from_tokens(sequences[:, P:], tokenizer.eos_token_id)       # (B, T)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)                           # (B, P+T)
    sequences = torch.where(attention_mask.bool(), sequences, tokenizer.pad_token_id)
    if sampler_logprobs is not None:
        sampler_logprobs = sampler_logprobs * response_mask                                   # (B, T)
    return sequences, attention_mask, P, response_mask, sampler_logprobs


def decode_responses(tokenizer: Any, sequences: torch.Tensor, prompt_length: int) -> list[str]:
    """Response texts (special tokens and padding removed)."""
    return [t.strip() for t in tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)]


@torch.no_grad()
def reference_logprobs(actor: nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
                       temperature: float) -> torch.Tensor:
    """(B, T) log-probs under pi_ref alone (adapter off)."""
    with adapter_disabled(actor):
        lp, _ = response_logprobs(actor, sequences, attention_mask, response_len, temperature)   # (B, T)
    return lp


@torch.no_grad()
def generate_rollout(actor: nn.Module, tokenizer: Any, prompt_texts: Sequence[str], raw_prompts: Sequence[str],
                     preference: torch.Tensor, *, max_prompt_length: int, max_new_tokens: int, temperature: float,
                     top_p: float, synced_gpus: bool = False, do_sample: bool = True, merge: bool = False,
                     backend: Optional[GenerationBackend] = None, old_logprobs: bool = True,
                     columns: Optional[dict[str, Sequence[Any]]] = None) -> Rollout:
    """Generate one response per prompt with lambda set, then score it under pi_old and pi_ref. ``columns``: the
    prompts' other dataset columns, carried on the rollout for the objectives that read them.

    ``merge``: generate with lambda merged into W0 (``svd_lora.merged``); log-probs still use the adapter form.
    ``old_logprobs`` False: only pi_ref (half the forward): when a batch gets exactly one optimiser update, pi_old
    is the update's own log-probs (the ratio is 1 there), so the trainer takes them from that forward.
    """
    with merged(actor, preference) if merge else contextlib.nullcontext():
        sequences, attention_mask, P, response_mask, sampler = generate_with_sampler_logprobs(
            actor, tokenizer, prompt_texts, None if merge else preference, max_prompt_length=max_prompt_length,
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, synced_gpus=synced_gpus,
            do_sample=do_sample, backend=backend)
    T = response_mask.shape[1]
    if old_logprobs:
        old, ref = policy_and_reference_logprobs(actor, sequences, attention_mask, T, temperature,
                                                 preference)                                  # (B, T) each
        old = old * response_mask
    else:
        old, ref = None, reference_logprobs(actor, sequences, attention_mask, T, temperature)   # (B, T)
    return Rollout(sequences=sequences, attention_mask=attention_mask, response_mask=response_mask,
                   old_logprobs=old, ref_logprobs=ref * response_mask,
                   preference=preference.to(sequences.device), prompts=tuple(raw_prompts),
                   responses=tuple(decode_responses(tokenizer, sequences, P)),
                   columns={k: tuple(v) for k, v in (columns or {}).items()}, sampler_logprobs=sampler)
