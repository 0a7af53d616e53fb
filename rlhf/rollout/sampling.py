"""Sampling noise shared across preferences: common random numbers for evaluation and the server.

Each row draws its noise from its own seed (a hash of the run's seed and the row's key) and the decoding step, so a
prompt meets the same noise under every preference, method and batch: the difference between two lambdas' points is
the policy's, not the sampler's, and batched decoding equals one-at-a-time. ``SharedNoiseSampling`` applies it inside
HF ``generate`` as Gumbel-max on ``logits / T`` (top-p cut as transformers does)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from transformers import LogitsProcessor

# ----------------------------------------------------------------------------------------------------------
# Shared sampling noise: common random numbers across preferences (evaluation)
# ----------------------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def _mul32(a: torch.Tensor, m: int) -> torch.Tensor:
    """(a * m) mod 2^32 for int64 ``a`` in [0, 2^32) without int64 overflow (two 16-bit halves of m)."""
    return (a * (m & 0xFFFF) + ((a * (m >> 16)) & 0xFFFF) * 65536) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: a bijection that scrambles every input bit into every output bit."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def row_seeds(seed: int, keys: Sequence[int]) -> torch.Tensor:
    """(B,) one 32-bit seed per row from the run's ``seed`` and each row's key (e.g. the prompt's index)."""
    k = torch.tensor(list(keys), dtype=torch.int64) & _M32
    return _fmix32(k ^ _fmix32(torch.tensor(seed & _M32, dtype=torch.int64)))


def hashed_vocab(vocab: int, device: Any = None) -> torch.Tensor:
    """(V,) each token id's hash: the per-token half of ``shared_gumbel``'s key, the same at every step."""
    return _fmix32(torch.arange(vocab, device=device, dtype=torch.int64))


def shared_gumbel(seeds: torch.Tensor, step: int, vocab: int, device: Any = None,
                  token_hash: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, V) Gumbel(0, 1) noise that depends only on (row seed, decoding step, token id): the same for a row in any
    batch, at any position of the batch, on any device. ``token_hash``: ``hashed_vocab(vocab)`` computed once by a
    caller that draws at every decoding step."""
    seeds = seeds.to(device=device, dtype=torch.int64)
    h = _fmix32(seeds ^ ((step * 0x9E3779B9) & _M32))                                         # (B,)
    v = hashed_vocab(vocab, seeds.device) if token_hash is None else token_hash               # (V,)
    u = (_fmix32(h[:, None] ^ v[None, :]).double() + 0.5) / 2.0 ** 32                         # (B, V) in (0, 1)
    return -torch.log(-torch.log(u))


class SharedNoiseSampling(LogitsProcessor):
    """Temperature + nucleus sampling as Gumbel-max with per-row seeded noise: decode greedily on
    ``logits / T + g`` (tokens outside the top-p set masked), g from ``shared_gumbel``. The distribution is the one
    ``do_sample`` draws from, but a row's draw depends on its own seed only, so one prompt under every preference
    (and under the base model) meets the same noise: the difference between two lambdas' points is the policy's,
    not the sampler's (common random numbers), and batched equals one-at-a-time decoding."""

    def __init__(self, seeds: torch.Tensor, prompt_length: int, temperature: float | torch.Tensor,
                 top_p: float | torch.Tensor) -> None:
        """``temperature`` and ``top_p``: one value, or one per row (B,); a row with temperature 0 decodes greedily
        (the server batches requests with different sampling settings)."""
        self.seeds, self.prompt_length = seeds, prompt_length
        self.temperature = torch.as_tensor(temperature, dtype=torch.float32).reshape(-1)      # (1,) or (B,)
        self.top_p = torch.as_tensor(top_p, dtype=torch.float32).reshape(-1)                  # (1,) or (B,)
        self.cut = bool((self.top_p < 1.0).any())  # decided here, on the CPU: no device sync per token
        self._placed: Optional[tuple] = None  # (device, V, seeds, temperature, top_p, token hash) on that device

    def _on(self, device: torch.device, vocab: int) -> tuple:
        """The per-row settings and the token hash on ``device``, moved and computed once per generate call."""
        if self._placed is None or self._placed[:2] != (device, vocab):
            self._placed = (device, vocab, self.seeds.to(device=device, dtype=torch.int64),
                            self.temperature.to(device)[:, None], self.top_p.to(device)[:, None],
                            hashed_vocab(vocab, device))
        return self._placed[2:]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        seeds, temp, top_p, token_hash = self._on(scores.device, scores.shape[-1])  # (B,), (B|1, 1) x2, (V,)
        greedy = temp == 0
        logits = scores.float() / torch.where(greedy, torch.ones_like(temp), temp)            # (B, V)
        if self.cut:  # the same cut as transformers' TopPLogitsWarper
            sorted_logits, order = torch.sort(logits, descending=False)
            drop = sorted_logits.softmax(-1).cumsum(-1) <= (1 - top_p)
            drop[..., -1:] = False
            logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        step = input_ids.shape[1] - self.prompt_length
        g = shared_gumbel(seeds, step, logits.shape[-1], token_hash=token_hash).to(logits.dtype)  # (B, V)
        return logits + torch.where(greedy, torch.zeros_like(g), g)
