"""``python -m rlhf.serve --engine vllm``: the server's requests decoded by a vLLM engine, each under its own
preference as a LoRA request.

The base W0 is loaded into vLLM once; a request's preference lambda is an ordinary LoRA of rank k + D
(``rlhf/adapter/as_lora.py``), written from the run's factors the first time that lambda is asked for and loaded at
runtime (``/v1/load_lora_adapter``). Adapters stay loaded for the next request with the same lambda; beyond
``vllm_adapters`` of them the least recently used idle one is unloaded. vLLM batches the requests itself
(continuous batching, up to ``vllm_max_loras`` distinct preferences in one step) and streams each one's tokens back;
this class has the ``ContinuousBatcher``'s surface (``submit(job)``, ``queued``, ``stats``), so validation,
bounds, stop strings, streaming and disconnects stay the server's (``rlhf/serving/server.py``).

Sampling is vLLM's, seeded per request: a seed reproduces a sample on this engine, not on ``--engine hf`` (whose
noise is its own); greedy requests equal the hf engine's. Log-probs are the policy's raw ones under the request's
preference (``--logprobs-mode raw_logprobs``), as the hf engine reports them.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

from torch import nn

from rlhf.adapter.as_lora import lora_config, lora_tensors, save_peft_adapter
from rlhf.rollout.vllm_engine import VLLMServer, model_settings
from rlhf.serving.decoder import Job


class VLLMDecoder:
    """Requests streamed from one vLLM OpenAI server; ``submit(job)`` is called on the event loop."""

    def __init__(self, model: nn.Module, base: str, tokenizer_path: str, eos_token_id: int, *, max_batch_size: int,
                 max_queue: int, max_adapters: int, server_settings: dict[str, Any]) -> None:
        self.model, self.eos, self.max_adapters = model, eos_token_id, max_adapters
        self.max_batch, self.max_queue = max_batch_size, max_queue
        self.server = VLLMServer(base, tokenizer=tokenizer_path, **model_settings(model),
                                 logprobs_mode="raw_logprobs", concurrency=max_batch_size, **server_settings)
        self.lora_config = lora_config(model, base)
        self.sync_dir = Path(tempfile.mkdtemp(prefix="panacea_serve_vllm_"))
        self.adapters: OrderedDict[tuple[float, ...], str] = OrderedDict()   # lambda -> served name, LRU order
        self.in_use: dict[str, int] = {}                                    # served name -> requests decoding on it
        self.inflight = 0                                                    # accepted and not finished
        self.decoding = 0                                                    # of those, at the engine now
        self._slots: Optional[asyncio.Semaphore] = None
        self._load: Optional[asyncio.Lock] = None
        self._client: Any = None
        self.stats = {"admitted": 0, "adapters_loaded": 0, "adapters_unloaded": 0, "max_rows": 0}

    # ------------------------------------------------------------------ the ContinuousBatcher's surface
    def submit(self, job: Job) -> bool:
        if self.inflight >= self.max_batch + self.max_queue:
            return False
        self.inflight += 1
        asyncio.get_running_loop().create_task(self._run(job))
        return True

    @property
    def queued(self) -> int:
        return max(0, self.inflight - self.max_batch)

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.sync_dir, ignore_errors=True)

    # ------------------------------------------------------------------ adapters
    async def _adapter(self, lam: tuple[float, ...]) -> str:
        """The served name of ``lam``'s adapter, written and loaded the first time it is asked for."""
        assert self._load is not None
        async with self._load:  # one load at a time: two requests with a new lambda load it once
            name = self.adapters.get(lam)
            loaded = name is None
            if loaded:
                name = "pref_" + hashlib.sha1(json.dumps(lam).encode()).hexdigest()[:16]
                await asyncio.get_running_loop().run_in_executor(None, self._write_and_load, lam, name)
                self.adapters[lam] = name
                self.stats["adapters_loaded"] += 1
            self.adapters.move_to_end(lam)
            self.in_use[name] = self.in_use.get(name, 0) + 1   # in use from here: never the one evicted
            if loaded:
                await self._evict()
            return name

    def _write_and_load(self, lam: tuple[float, ...], name: str) -> None:
        tensors = lora_tensors(self.model, [list(lam)])[0]
        save_peft_adapter(tensors, self.lora_config, self.sync_dir / name)
        self.server.load_adapter(name, self.sync_dir / name)

    async def _evict(self) -> None:
        """Unload the least recently used idle adapters beyond ``max_adapters`` (one in use is never unloaded)."""
        for lam in list(self.adapters):
            if len(self.adapters) <= self.max_adapters:
                return
            name = self.adapters[lam]
            if self.in_use.get(name, 0):
                continue
            del self.adapters[lam]
            await asyncio.get_running_loop().run_in_executor(None, self.server.unload_adapter, name)
            shutil.rmtree(self.sync_dir / name, ignore_errors=True)
            self.stats["adapters_unloaded"] += 1

    # ------------------------------------------------------------------ one request
    async def _run(self, job: Job) -> None:
        import httpx

        if self._slots is None:  # created on the event loop that runs them
            self._slots, self._load = asyncio.Semaphore(self.max_batch), asyncio.Lock()
            self._client = httpx.AsyncClient(base_url=self.server.url, timeout=None,
                                             limits=httpx.Limits(max_connections=self.max_batch))
        name, decoding = None, False
        try:
            async with self._slots:
                if job.cancelled.is_set():      # its client left while it waited: it never reaches the engine
                    return
                if time.monotonic() > job.deadline:
                    job.emit("error", "timeout")
                    return
                self.stats["admitted"] += 1
                self.decoding, decoding = self.decoding + 1, True
                self.stats["max_rows"] = max(self.stats["max_rows"], self.decoding)
                name = await self._adapter(tuple(job.preference))
                left = job.deadline - time.monotonic()
                try:
                    await asyncio.wait_for(self._stream(job, name), timeout=left if left < float("inf") else None)
                except asyncio.TimeoutError:
                    job.emit("error", "timeout")
        except Exception as err:  # the engine went away or refused: this request fails alone, with the reason
            job.emit("error", f"the vLLM engine at {self.server.url} failed this request: {type(err).__name__}: "
                              f"{err}")
        finally:
            self.inflight -= 1
            self.decoding -= decoding
            if name is not None:
                self.in_use[name] -= 1
                if len(self.adapters) > self.max_adapters:  # adapters kept over the bound while in use go now
                    try:
                        async with self._load:
                            await self._evict()
                    except Exception:  # noqa: BLE001 - the request is answered; the next load evicts again
                        self.stats["unload_failures"] = self.stats.get("unload_failures", 0) + 1

    async def _stream(self, job: Job, name: str) -> None:
        """Stream the completion, emitting each token as it comes; closing the stream (a cancelled job) makes vLLM
        abort the request."""
        body = {"model": name, "prompt": job.prompt_ids, "max_tokens": job.max_tokens, "temperature": job.temperature,
                "top_p": job.top_p, "top_k": -1, "seed": job.seed, "stream": True, "return_token_ids": True,
                "stop_token_ids": [self.eos], "skip_special_tokens": False, "return_tokens_as_token_ids": True,
                "logprobs": job.top_logprobs}
        async with self._client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                job.emit("error", f"the vLLM engine refused the request: HTTP {r.status_code} {text[:300]}")
                return
            async for line in r.aiter_lines():
                if job.cancelled.is_set():
                    return
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    job.emit("error", f"the vLLM engine failed: {str(chunk['error'])[:300]}")
                    return
                for choice in chunk.get("choices") or []:
                    lps = choice.get("logprobs") or {}
                    for i, tok in enumerate(choice.get("token_ids") or []):
                        job.emit("token", {"id": int(tok), "logprob": _at(lps.get("token_logprobs"), i, 0.0),
                                           "top": _top(_at(lps.get("top_logprobs"), i, None), job.top_logprobs)})
                    if choice.get("finish_reason"):
                        job.emit("done", "length" if choice["finish_reason"] == "length" else "stop")
                        return


def _at(values: Optional[list], i: int, default: Any) -> Any:
    return values[i] if values is not None and i < len(values) and values[i] is not None else default


def _top(entries: Optional[dict[str, float]], k: int) -> list[tuple[int, float]]:
    """The k most likely (token id, log-prob) of vLLM's entry (which also holds the sampled token: dropped unless it
    is among the k)."""
    if not k or not entries:
        return []
    pairs = sorted(((int(t.rsplit(":", 1)[1]), float(v)) for t, v in entries.items()), key=lambda p: -p[1])
    return pairs[:k]
