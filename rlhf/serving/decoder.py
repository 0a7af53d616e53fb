"""The server's decoding engine: continuous batching with one preference, one seed and one KV cache row per request.

Requests join the running batch between decode steps and leave as soon as they are done, cancelled or out of time:

    admit (prefill the newcomers together, left-padded) -> merge their cache rows into the running cache
    -> one decode step for every active row (each under its own lambda: the adapter takes a (B, D) preference)
    -> sample each row from its own seeded noise -> emit its token -> drop the rows that finished

The cache is HF's ``DynamicCache`` (B, H, L, d) per layer, left-padded: rows of different lengths share it, the
attention mask hides the padding and positions count each row's own tokens, so a row computes what it would alone.
Sampling is Gumbel-max on ``logits / T`` (the top-p cut as transformers does) with noise that depends only on the
row's seed and its own step (``rlhf/rollout/sampling.py``): a request's text never depends on its neighbours, nor on
when it joined (``tests/test_serve.py`` holds concurrent == solo, with rows joining mid-decode).

A decode step that raises is retried row by row from the cache as it was, so a row that still fails fails alone.
The engine knows tokens only; text, stop strings and the OpenAI format are the request handler's
(``rlhf/serving/server.py``), which cancels a request once its stop string appears or its client has gone.
"""
from __future__ import annotations

import inspect
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from rlhf.adapter.svd_lora import scoped_preference
from rlhf.rollout.sampling import hashed_vocab, row_seeds, shared_gumbel


@dataclass
class Job:
    """One request, validated and tokenised, as the engine decodes it."""

    prompt_ids: list[int]                 # the rendered prompt's token ids
    preference: list[float]               # (D,) lambda of this request
    max_tokens: int
    temperature: float                    # 0: greedy
    top_p: float
    seed: int
    top_logprobs: int                     # how many alternatives to report per token (0: none)
    emit: Callable[[str, Any], None]      # (kind, payload): "token" {id, logprob, top}, "done" reason, "error" text
    deadline: float = float("inf")        # time.monotonic() after which the request is abandoned
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Row:
    job: Job
    seed: int                             # the row's 32-bit noise seed
    generated: int = 0                    # tokens emitted so far (the step of the next draw)
    last: int = 0                         # the last token, fed at the next decode step


class ContinuousBatcher:
    """A decoding thread over one model; ``submit(job)`` queues a request (False when the queue is full)."""

    def __init__(self, model: torch.nn.Module, eos_token_id: int, pad_token_id: int, max_batch_size: int,
                 max_queue: int, batch_window_ms: float, cpu_threads: Optional[int] = None) -> None:
        """``cpu_threads``: torch intra-op threads of the decoding thread on a CPU (None: torch's own)."""
        self.model, self.eos, self.pad = model, eos_token_id, pad_token_id
        self.cpu_threads = cpu_threads
        self.max_batch, self.max_queue, self.window = max_batch_size, max_queue, batch_window_ms / 1000.0
        self.device = next(model.parameters()).device
        self.pending: queue.Queue[Job] = queue.Queue()
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: Optional[torch.Tensor] = None                                     # (B, L) 1 = a real token
        self.token_hash: Optional[torch.Tensor] = None
        # transformers renamed the cache argument (and output field) from past_key_values to cache
        self._cache_arg = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
        self.stats = {"steps": 0, "prefills": 0, "admitted": 0, "max_rows": 0, "retried_alone": 0}
        self.thread = threading.Thread(target=self._loop, name="panacea-decoder", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ the queue
    def submit(self, job: Job) -> bool:
        if self.pending.qsize() >= self.max_queue:
            return False
        self.pending.put(job)
        return True

    @property
    def queued(self) -> int:
        return self.pending.qsize()

    def _take(self, block: bool) -> list[Job]:
        """Waiting requests, up to the free rows; blocks for the first only when nothing decodes."""
        free = self.max_batch - len(self.rows)
        jobs: list[Job] = []
        try:
            if block:
                jobs.append(self.pending.get())
                deadline = time.monotonic() + self.window   # a short wait, so that a burst is prefilled together
                while len(jobs) < free and (left := deadline - time.monotonic()) > 0:
                    jobs.append(self.pending.get(timeout=left))
            while len(jobs) < free:
                jobs.append(self.pending.get_nowait())
        except queue.Empty:
            pass
        live = []
        for j in jobs:  # a client that left, or a request out of time, is dropped before it costs a forward
            if j.cancelled.is_set():
                continue
            if time.monotonic() > j.deadline:
                j.emit("error", "timeout")
                continue
            live.append(j)
        return live

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        if self.cpu_threads and self.device.type == "cpu":
            torch.set_num_threads(self.cpu_threads)
        while True:
            new = self._take(block=not self.rows)
            if new:
                self._admit(new)
            self._drop_finished()
            if self.rows:
                self._step()

    @torch.no_grad()
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, lam: torch.Tensor,
                 cache: Any) -> tuple[torch.Tensor, Any]:
        """(B, V) next-token logits (float32) and the cache, every row under its own lambda."""
        with scoped_preference(self.model, lam):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             **{self._cache_arg: cache})
        return out.logits[:, -1].float(), out[self._cache_arg]

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill the newcomers in one left-padded forward, sample their first tokens, merge their cache rows."""
        from transformers import DynamicCache

        P = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), P), self.pad, dtype=torch.long)                              # (n, P)
        mask = torch.zeros((len(jobs), P), dtype=torch.long)                                      # (n, P)
        for i, j in enumerate(jobs):
            ids[i, P - len(j.prompt_ids):] = torch.tensor(j.prompt_ids)
            mask[i, P - len(j.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)                                            # (n, P)
        lam = torch.tensor([j.preference for j in jobs], dtype=torch.float32)                     # (n, D)
        try:
            logits, cache = self._forward(ids, mask, positions, lam, DynamicCache())
        except Exception as err:  # a prefill that fails: retry each newcomer alone, so only the culprit fails
            if len(jobs) > 1:
                self.stats["retried_alone"] += 1
                for j in jobs:
                    self._admit([j])
                return
            jobs[0].emit("error", f"prefill failed: {type(err).__name__}: {err}")
            return
        self.stats["prefills"] += 1
        self.stats["admitted"] += len(jobs)
        rows = [_Row(j, int(row_seeds(0, [j.seed])[0])) for j in jobs]
        self._merge(cache, mask)
        self.rows += rows
        self.stats["max_rows"] = max(self.stats["max_rows"], len(self.rows))
        self._sample_and_emit(logits, rows)

    def _merge(self, cache: Any, mask: torch.Tensor) -> None:
        """Append new cache rows (and their mask) to the running ones, left-padding the shorter to one length."""
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        L_old, L_new = self.mask.shape[1], mask.shape[1]
        L = max(L_old, L_new)
        for old, new in zip(self.cache.layers, cache.layers):
            for name in ("keys", "values"):
                a, b = getattr(old, name), getattr(new, name)                                   # (B, H, L, d)
                a = torch.nn.functional.pad(a, (0, 0, L - L_old, 0))
                b = torch.nn.functional.pad(b, (0, 0, L - L_new, 0))
                setattr(old, name, torch.cat([a, b], dim=0))
        self.mask = torch.cat([torch.nn.functional.pad(self.mask, (L - L_old, 0)),
                               torch.nn.functional.pad(mask, (L - L_new, 0))], dim=0)           # (B + n, L)

    def _keep(self, keep: list[int]) -> None:
        """Only these rows stay (in order); columns of padding every row has are trimmed from the left."""
        if not keep:
            self.rows, self.cache, self.mask = [], None, None
            return
        idx = torch.tensor(keep, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask[idx]
        first = int(self.mask.any(0).long().argmax())                                  # the first column in use
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[idx][:, :, first:], layer.values[idx][:, :, first:]

    def _drop_finished(self) -> None:
        now = time.monotonic()
        keep = []
        for i, r in enumerate(self.rows):
            if r.job.cancelled.is_set():
                continue
            if now > r.job.deadline:
                r.job.emit("error", "timeout")
                continue
            if r.generated >= r.job.max_tokens or (r.generated and r.last == self.eos):
                continue
            keep.append(i)
        if len(keep) != len(self.rows):
            self._keep(keep)

    def _step(self) -> None:
        """One decode step for every active row (retried row by row if the batched one raises)."""
        rows = self.rows
        ids = torch.tensor([[r.last] for r in rows], device=self.device)                          # (B, 1)
        mask = torch.cat([self.mask, torch.ones(len(rows), 1, dtype=self.mask.dtype,
                                                device=self.mask.device)], dim=1)                  # (B, L + 1)
        positions = (mask.sum(-1, keepdim=True) - 1)                                              # (B, 1)
        lam = torch.tensor([r.job.preference for r in rows], dtype=torch.float32)                 # (B, D)
        length = self.mask.shape[1]
        try:
            logits, self.cache = self._forward(ids, mask, positions, lam, self.cache)
        except Exception:
            self._crop(length)  # layers that appended this step's keys before the failure give them back
            self.stats["retried_alone"] += 1
            self._step_alone(length)
            return
        self.mask = mask
        self.stats["steps"] += 1
        self._sample_and_emit(logits, rows)

    def _crop(self, length: int) -> None:
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]

    def _step_alone(self, length: int) -> None:
        """Each row's step on its own; a row whose step raises is failed and dropped, the others go on."""
        from transformers import DynamicCache

        keep, logits_rows, kept_layers = [], [], None
        for i, r in enumerate(self.rows):
            single = DynamicCache()
            for layer_i, layer in enumerate(self.cache.layers):
                single.update(layer.keys[i:i + 1], layer.values[i:i + 1], layer_i)
            mask = torch.cat([self.mask[i:i + 1], torch.ones(1, 1, dtype=self.mask.dtype,
                                                              device=self.mask.device)], dim=1)   # (1, L + 1)
            try:
                logits, single = self._forward(torch.tensor([[r.last]], device=self.device), mask,
                                               mask.sum(-1, keepdim=True) - 1,
                                               torch.tensor([r.job.preference], dtype=torch.float32), single)
            except Exception as err:
                r.job.emit("error", f"decoding failed: {type(err).__name__}: {err}")
                continue
            keep.append(i)
            logits_rows.append(logits)
            kept_layers = [[] for _ in single.layers] if kept_layers is None else kept_layers
            for layer_i, layer in enumerate(single.layers):
                kept_layers[layer_i].append((layer.keys, layer.values))
        if not keep:
            self.rows, self.cache, self.mask = [], None, None
            return
        idx = torch.tensor(keep, device=self.mask.device)
        self.mask = torch.cat([self.mask[idx], torch.ones(len(keep), 1, dtype=self.mask.dtype,
                                                          device=self.mask.device)], dim=1)
        for layer, parts in zip(self.cache.layers, kept_layers):
            layer.keys = torch.cat([k for k, _ in parts], dim=0)
            layer.values = torch.cat([v for _, v in parts], dim=0)
        self.rows = [self.rows[i] for i in keep]
        self._sample_and_emit(torch.cat(logits_rows, dim=0), self.rows)

    # ------------------------------------------------------------------ sampling
    def _sample_and_emit(self, logits: torch.Tensor, rows: list[_Row]) -> None:
        """Draw each row's next token from its own noise at its own step; emit it with its log-probs."""
        B, V = logits.shape
        if self.token_hash is None or self.token_hash.shape[0] != V:
            self.token_hash = hashed_vocab(V, logits.device)
        temp = torch.tensor([r.job.temperature for r in rows], device=logits.device)[:, None]     # (B, 1)
        top_p = torch.tensor([r.job.top_p for r in rows], device=logits.device)[:, None]          # (B, 1)
        greedy = temp == 0
        scaled = logits / torch.where(greedy, torch.ones_like(temp), temp)                        # (B, V)
        if bool((top_p < 1).any()):  # the same cut as transformers' TopPLogitsWarper
            sorted_logits, order = torch.sort(scaled, descending=False)
            drop = sorted_logits.softmax(-1).cumsum(-1) <= (1 - top_p)
            drop[..., -1:] = False
            scaled = scaled.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        seeds = torch.tensor([r.seed for r in rows], dtype=torch.int64)
        steps = torch.tensor([r.generated for r in rows], dtype=torch.int64)
        g = shared_gumbel(seeds, steps, V, logits.device, token_hash=self.token_hash).to(scaled.dtype)
        tokens = (scaled + torch.where(greedy, torch.zeros_like(g), g)).argmax(-1)                # (B,)
        logp = torch.log_softmax(logits, dim=-1)                                                  # (B, V) the policy's
        chosen = logp.gather(1, tokens[:, None])[:, 0]                                            # (B,)
        k = max((r.job.top_logprobs for r in rows), default=0)
        top = torch.topk(logp, k, dim=-1) if k else None
        for i, r in enumerate(rows):
            tok = int(tokens[i])
            alts = [(int(t), float(v)) for v, t in zip(top.values[i, :r.job.top_logprobs].tolist(),
                                                       top.indices[i, :r.job.top_logprobs].tolist())] if k else []
            r.last, r.generated = tok, r.generated + 1
            r.job.emit("token", {"id": tok, "logprob": float(chosen[i]), "top": alts})
            if tok == self.eos:
                r.job.emit("done", "stop")
            elif r.generated >= r.job.max_tokens:
                r.job.emit("done", "length")
