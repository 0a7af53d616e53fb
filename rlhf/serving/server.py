"""The server behind ``python -m rlhf.serve`` (``rlhf/serve.py`` has the usage): OpenAI-compatible chat completions
with a per-request preference, streamed or not, on a continuously batched decoder (``rlhf/serving/decoder.py``).

A request's path: the security gate (JSON only, bounded body, its own Host and Origin, the API key) -> validation of
every field (an unknown or unimplemented one is a 400 naming it) -> the prompt rendered with the run's own layout and
tokenised, off the event loop and off the decoder thread, its length checked against the model -> the decoder's queue
(429 with Retry-After when full) -> tokens back as they are drawn (``stream: true``: OpenAI's server-sent chunks) ->
text, stop strings and log-probs here. A request whose client has gone, or whose deadline passed, is dropped from the
batch. Everything that can fail for one request fails before it joins a batch, and every error is JSON.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Literal, NamedTuple, Optional

import torch
from fastapi import Request  # module level: FastAPI resolves the endpoints' annotations against these globals

from rlhf.core.config import check, doc_field

MAX_SEED = 2**31 - 1
API_KEY_ENV = "PANACEA_API_KEY"


@dataclass(frozen=True)
class ServeConfig:
    """A server for one trained run (``--key value``)."""

    run: str = doc_field("", "the trained run (RUN or RUN/policy)")
    host: str = doc_field("127.0.0.1", "interface to listen on (127.0.0.1: this machine only)")
    port: int = doc_field(8000, "TCP port")
    engine: Literal["hf", "vllm"] = doc_field(
        "hf", "decoder: hf = this package's continuous batcher on the run's model; vllm = a vLLM engine in its own "
              "environment (scripts/setup_vllm.sh), each request's preference a LoRA request on the base loaded once")
    front: Optional[str] = doc_field(None, "pareto.json the page plots (null: RUN/eval/pareto.json when it exists)")
    device: Optional[str] = doc_field(None, "where the model runs (null: the GPU when there is one, else the CPU)")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = doc_field("auto", "weights' dtype (auto: bf16 on a GPU, fp32 "
                                                                       "on the CPU)")
    api_key: Optional[str] = doc_field(None, f"require 'Authorization: Bearer KEY' on /v1/ (null: ${API_KEY_ENV} "
                                             f"if set, else no key)")
    allowed_hosts: tuple[str, ...] = doc_field((), "Host names served besides this machine's own (localhost, 127.0.0.1, "
                                                   "--host); '*' serves any (only behind a proxy you trust)")
    max_batch_size: int = doc_field(16, "requests decoded together at most (1: one at a time)")
    batch_window_ms: float = doc_field(5.0, "with nothing decoding, wait this long after a request for others to "
                                            "prefill with it")
    max_queue: int = doc_field(256, "requests waiting at most; more get 429 with Retry-After")
    max_tokens_cap: int = doc_field(256, "the largest max_tokens a request may ask for")
    default_max_tokens: int = doc_field(64, "max_tokens when a request gives none")
    max_prompt_length: int = doc_field(512, "prompt tokens a request may send (longer: 400)")
    max_messages: int = doc_field(128, "messages a request may send")
    max_body_bytes: int = doc_field(1_000_000, "request body size limit (larger: 413)")
    request_timeout_s: float = doc_field(300.0, "a request not answered by then is abandoned (504)")
    tokenize_workers: int = doc_field(2, "threads that render and tokenise prompts (never the decoder's)")
    vllm_url: Optional[str] = doc_field(None, "--engine vllm: a running vLLM OpenAI server on the run's base model "
                                              "(--served-model-name base --enable-lora, VLLM_ALLOW_RUNTIME_LORA_"
                                              "UPDATING=True); null: start one from the vLLM environment")
    vllm_python: Optional[str] = doc_field(None, "--engine vllm: the vLLM environment's python (null: "
                                                 "$PANACEA_VLLM_PYTHON, else the repository's .venv-vllm)")
    vllm_max_loras: int = doc_field(8, "--engine vllm: distinct preferences decoded in one engine step (--max-loras)")
    vllm_adapters: int = doc_field(32, "--engine vllm: preferences kept loaded as adapters; beyond it the least "
                                       "recently used idle one is unloaded")
    vllm_memory_fraction: float = doc_field(0.5, "--engine vllm: the share of accelerator (on a CPU: host) memory "
                                                 "the engine takes (--gpu-memory-utilization)")
    vllm_kv_cache_gib: int = doc_field(1, "--engine vllm on a CPU: its KV cache in whole GiB (VLLM_CPU_KVCACHE_SPACE)")
    vllm_startup_timeout_s: float = doc_field(600.0, "--engine vllm: seconds to wait for a started engine")
    decode_threads: Optional[int] = doc_field(1, "torch threads of the decoding thread on a CPU (null: torch's "
                                                 "default); measured here, one decodes small models fastest and "
                                                 "leaves the other cores to HTTP and tokenising; ignored on a GPU")

    def __post_init__(self) -> None:
        check(bool(self.run), "run", "is required: --run RUN (a finished training run)")
        check(1 <= self.port <= 65535, "port", f"must be in 1..65535, got {self.port}")
        check(self.max_batch_size >= 1, "max_batch_size", f"must be >= 1, got {self.max_batch_size}")
        check(self.batch_window_ms >= 0, "batch_window_ms", f"must be >= 0, got {self.batch_window_ms}")
        check(1 <= self.default_max_tokens <= self.max_tokens_cap, "default_max_tokens",
              f"must be in 1..max_tokens_cap ({self.max_tokens_cap}), got {self.default_max_tokens}")
        for name in ("max_queue", "max_prompt_length", "max_messages", "max_body_bytes", "tokenize_workers"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.request_timeout_s > 0, "request_timeout_s", f"must be > 0, got {self.request_timeout_s}")
        check(self.vllm_max_loras >= 1, "vllm_max_loras", f"must be >= 1, got {self.vllm_max_loras}")
        check(self.vllm_kv_cache_gib >= 1, "vllm_kv_cache_gib", f"must be >= 1 (whole GiB), got "
                                                                 f"{self.vllm_kv_cache_gib}")
        check(self.vllm_adapters >= self.vllm_max_loras, "vllm_adapters",
              f"must be >= vllm_max_loras ({self.vllm_max_loras}), got {self.vllm_adapters}")
        check(0 < self.vllm_memory_fraction <= 1, "vllm_memory_fraction",
              f"must be in (0, 1], got {self.vllm_memory_fraction}")
        check(self.vllm_url is None or self.vllm_url.startswith(("http://", "https://")), "vllm_url",
              f"must start with http:// or https://, got {self.vllm_url!r}")
        DECODERS[self.engine].check(self)  # e.g. a missing vLLM environment, refused before the model loads

    @property
    def key(self) -> Optional[str]:
        return self.api_key or os.environ.get(API_KEY_ENV) or None


class BadRequest(ValueError):
    """A request field is malformed; answered with an HTTP error (400 unless said) naming it."""

    def __init__(self, param: str, message: str, status: int = 400, code: Optional[str] = None) -> None:
        super().__init__(f"{param}: {message}")
        self.param, self.status, self.code = param, status, code


# ----------------------------------------------------------------------------------------------------------
# Validation: the OpenAI body, honestly
# ----------------------------------------------------------------------------------------------------------

# Accepted and honoured. ``user`` is metadata: accepted, not used. Penalties, logit_bias, response_format,
# tools and the like change what a client gets: they are refused by name unless they ask for the default.
FIELDS = {"messages", "model", "preference", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
          "n", "stream", "stream_options", "stop", "logprobs", "top_logprobs", "user"}
DEFAULTS_ONLY = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "response_format": {"type": "text"},
                 "tools": None, "tool_choice": None, "functions": None, "function_call": None,
                 "parallel_tool_calls": None}


def parse_preference(value: Any, names: list[str]) -> list[float]:
    """A list of D weights, or {objective: weight}; checked to lie on the simplex."""
    D = len(names)
    if value is None:
        return [1.0 / D] * D
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise BadRequest("preference", f"unknown objective(s) {unknown}; this run's objectives are {names}")
        missing = [n for n in names if n not in value]
        if missing:
            raise BadRequest("preference", f"gives no weight for {missing}; name every objective of {names}")
        value = [value[n] for n in names]
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise BadRequest("preference", f"must be a list of {D} numbers or an object keyed by {names}, got {value!r}")
    if len(value) != D:
        raise BadRequest("preference", f"has {len(value)} entries but this run has {D} objectives {names}")
    if not all(math.isfinite(x) for x in value):
        raise BadRequest("preference", f"contains NaN or inf: {value}")
    if any(x < 0 for x in value):
        raise BadRequest("preference", f"entries must be >= 0 (a point on the simplex), got {value}")
    if abs(sum(value) - 1.0) > 1e-4:
        raise BadRequest("preference", f"entries must sum to 1, got {value} (sum {sum(value):.6g})")
    return [float(x) for x in value]


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name, default)
    if v is None:
        v = default
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
        (lo < v if lo_open else lo <= v) and v <= hi
    if not ok:
        raise BadRequest(name, f"must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def parse_request(body: Any, names: list[str], cfg: ServeConfig, model_id: Optional[str] = None) -> dict[str, Any]:
    """Validate a chat-completions body into the request's settings; every error names its field and the fix."""
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object with 'messages'")
    unknown = sorted(set(body) - FIELDS - set(DEFAULTS_ONLY))
    if unknown:
        raise BadRequest(unknown[0], f"is not a parameter this server knows (it takes {sorted(FIELDS)} and "
                                     f"'preference'); remove it")
    for name, default in DEFAULTS_ONLY.items():
        if name in body and body[name] not in (default, None) and not (name == "logit_bias" and body[name] == {}):
            raise BadRequest(name, f"is not implemented by this server (it decodes the policy as trained); leave it "
                                   f"out or at its default {default!r}")
    if model_id is not None and body.get("model") not in (None, model_id):
        raise BadRequest("model", f"this server serves one model, {model_id!r} (GET /v1/models); got "
                                  f"{body.get('model')!r}", status=404, code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages", "must be a non-empty list of {role, content} messages ending with a user turn")
    if len(messages) > cfg.max_messages:
        raise BadRequest("messages", f"has {len(messages)} messages; this server takes at most {cfg.max_messages}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or \
                not isinstance(m.get("content"), str):
            raise BadRequest(f"messages[{i}]", f"must be {{role: system|user|assistant, content: string}}, "
                                               f"got {str(m)[:200]!r}")
    if messages[-1]["role"] != "user":
        raise BadRequest("messages", "must end with a user turn (the answer is the next assistant turn)")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", cfg.default_max_tokens))
    if max_tokens is None:
        max_tokens = cfg.default_max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("max_tokens", f"must be a positive integer, got {max_tokens!r}")
    if max_tokens > cfg.max_tokens_cap:
        raise BadRequest("max_tokens", f"{max_tokens} exceeds this server's cap {cfg.max_tokens_cap} "
                                       f"(ask for fewer, or restart it with --max_tokens_cap)")
    temperature = _number(body, "temperature", 1.0, 0.0, 10.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED):
        raise BadRequest("seed", f"must be an integer in [0, {MAX_SEED}], got {seed!r}")
    if body.get("n", 1) not in (1, None):
        raise BadRequest("n", "only n = 1 is supported (send n requests, each with its own seed)")
    stream = body.get("stream", False) or False
    if not isinstance(stream, bool):
        raise BadRequest("stream", f"must be true or false, got {stream!r}")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise BadRequest("stream_options", f"takes only {{include_usage: bool}}, got {options!r}")
    if options and not stream:
        raise BadRequest("stream_options", "is only allowed with stream: true")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop", f"must be a non-empty string or a list of up to 4, got {body.get('stop')!r}")
    logprobs = body.get("logprobs", False) or False
    if not isinstance(logprobs, bool):
        raise BadRequest("logprobs", f"must be true or false, got {logprobs!r}")
    top = body.get("top_logprobs")
    if top is not None:
        if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20:
            raise BadRequest("top_logprobs", f"must be an integer in [0, 20], got {top!r}")
        if not logprobs:
            raise BadRequest("top_logprobs", "needs logprobs: true")
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "preference": parse_preference(body.get("preference"), names), "max_tokens": max_tokens,
            "temperature": temperature, "top_p": top_p, "stream": stream,
            "include_usage": bool(options.get("include_usage")), "stop": stop, "logprobs": logprobs,
            "top_logprobs": top or 0,
            "seed": int(seed) if seed is not None else int(torch.randint(0, MAX_SEED, ()).item())}


# ----------------------------------------------------------------------------------------------------------
# The engine: the run's model, its prompt layout, and the decoder
# ----------------------------------------------------------------------------------------------------------

class Engine:
    """The run's model behind a continuous batcher, and how its prompts are laid out and tokenised."""

    def __init__(self, cfg: ServeConfig) -> None:
        import warnings

        from rlhf.adapter.policy import load_run_model
        from rlhf.data.chat import DEFAULT_TEMPLATE, model_positions
        from rlhf.runtime.engine import placement

        self.cfg = cfg
        device, dtype = placement(cfg.device, cfg.dtype)
        model, self.tokenizer, self.info = load_run_model(cfg.run, dtype)
        decoder = DECODERS[cfg.engine]
        # an engine in its own process (vllm) decodes there: the model here only supplies each lambda's adapter
        self.model = model.to(device if decoder.in_process else "cpu").eval()
        self.names = self.info.objective_names
        self.template = self.info.prompt_template or DEFAULT_TEMPLATE
        if self.info.prompt_template is None and not getattr(self.tokenizer, "chat_template", None):
            warnings.warn(f"{self.info.path}/run.json does not record the prompt layout the run trained with (written "
                          f"before it was recorded): using the default layout")
        self.positions = model_positions(self.model.config)
        self.batcher: Any = decoder.build(self, cfg)
        self.workers = ThreadPoolExecutor(cfg.tokenize_workers, thread_name_prefix="panacea-tokenize")

    @property
    def stats(self) -> dict[str, int]:
        return self.batcher.stats

    def prompt_ids(self, messages: list[dict[str, str]], max_tokens: int) -> list[int]:
        """The conversation rendered as the run trained (its chat template or plain layout) and tokenised; refused
        (400, naming the field) when the template rejects it or it does not fit."""
        from rlhf.data.chat import format_prompt
        from rlhf.data.datasets import DataError

        try:
            text = format_prompt(self.tokenizer, messages, self.template)
        except DataError as err:
            raise BadRequest("messages", str(err)) from None
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) > self.cfg.max_prompt_length:
            raise BadRequest("messages", f"the conversation is {len(ids)} tokens; this server takes at most "
                                         f"{self.cfg.max_prompt_length} (--max_prompt_length): send fewer or shorter "
                                         f"messages")
        if self.positions is not None and len(ids) + max_tokens > self.positions:
            raise BadRequest("max_tokens", f"the conversation is {len(ids)} tokens and max_tokens {max_tokens}: "
                                           f"together over the model's {self.positions} positions; ask for at most "
                                           f"{max(self.positions - len(ids), 0)}")
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class Decoder(NamedTuple):
    """One ``--engine``: where it decodes, what it checks before the model loads, and how it is built."""

    in_process: bool                                   # decodes the run's model in this process
    check: Callable[[ServeConfig], None]               # raises naming the field, before any model loads
    build: Callable[[Engine, ServeConfig], Any]        # the batcher: submit(job), queued, stats


def _hf_decoder(engine: Engine, cfg: ServeConfig) -> Any:
    from rlhf.serving.decoder import ContinuousBatcher

    return ContinuousBatcher(engine.model, engine.tokenizer.eos_token_id, engine.tokenizer.pad_token_id,
                             cfg.max_batch_size, cfg.max_queue, cfg.batch_window_ms, cfg.decode_threads)


def _vllm_check(cfg: ServeConfig) -> None:
    if cfg.vllm_url is None:
        from rlhf.rollout.vllm_engine import find_python

        find_python(cfg.vllm_python, "vllm_python", "vllm_url")


def _vllm_decoder(engine: Engine, cfg: ServeConfig) -> Any:
    from rlhf.serving.vllm_decoder import VLLMDecoder

    return VLLMDecoder(engine.model, engine.info.base_model, str(engine.info.path), engine.tokenizer.eos_token_id,
                       max_batch_size=cfg.max_batch_size, max_queue=cfg.max_queue, max_adapters=cfg.vllm_adapters,
                       server_settings=dict(url=cfg.vllm_url, python=cfg.vllm_python, max_loras=cfg.vllm_max_loras,
                                            memory_fraction=cfg.vllm_memory_fraction,
                                            kv_cache_gib=cfg.vllm_kv_cache_gib,
                                            startup_timeout_s=cfg.vllm_startup_timeout_s,
                                            request_timeout_s=cfg.request_timeout_s))


DECODERS: dict[str, Decoder] = {"hf": Decoder(True, lambda cfg: None, _hf_decoder),
                                "vllm": Decoder(False, _vllm_check, _vllm_decoder)}


class Stream:
    """One request's side of the decoder: tokens arrive from the decoder thread into an asyncio queue; text, stop
    strings and log-probs are built here."""

    def __init__(self, engine: Engine, fields: dict[str, Any], prompt_ids: list[int]) -> None:
        from rlhf.serving.decoder import Job

        self.engine, self.fields, self.prompt_tokens = engine, fields, len(prompt_ids)
        self.loop = asyncio.get_running_loop()
        self.inbox: list[tuple[str, Any]] = []               # filled by the decoder thread
        self.ready, self.scheduled = asyncio.Event(), False
        self.watch_tokens = fields["stream"] or bool(fields["stop"])
        self.ids: list[int] = []                             # the completion's tokens (EOS left out)
        self.drawn = 0                                       # tokens drawn for it, EOS included (its usage)
        self.logprobs: list[dict[str, Any]] = []
        self.text, self.sent = "", 0                         # the decoded text, and how much of it went out
        self.finish: Optional[str] = None
        self.job = Job(prompt_ids, fields["preference"], fields["max_tokens"], fields["temperature"], fields["top_p"],
                       fields["seed"], fields["top_logprobs"] if fields["logprobs"] else 0, self._emit,
                       time.monotonic() + engine.cfg.request_timeout_s)

    def _emit(self, kind: str, payload: Any) -> None:
        """The decoder thread: events pile up in the inbox, and the event loop is woken at most once until it looks
        (per token only when someone reads tokens as they come: a stream, or stop strings to watch)."""
        self.inbox.append((kind, payload))
        if (kind != "token" or self.watch_tokens) and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.scheduled = False
        self.ready.set()

    def cancel(self) -> None:
        self.job.cancelled.set()

    async def deltas(self) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
        """(new text, log-prob entries of its tokens) as tokens arrive, until a stop string, EOS or the length;
        ``finish`` is then set. Text that could still turn into a stop string is held back."""
        stops = self.fields["stop"]
        hold = max((len(s) for s in stops), default=1) - 1
        pending_lp: list[dict[str, Any]] = []
        eos = self.engine.tokenizer.eos_token_id
        while self.finish is None:
            await self.ready.wait()
            self.ready.clear()
            events, self.inbox = self.inbox, []
            grew = False
            for kind, payload in events:
                if self.finish is not None:
                    break
                if kind == "error":
                    self.cancel()
                    raise RuntimeError(payload)
                if kind == "done":
                    self.finish = payload
                    continue
                self.drawn += 1
                if payload["id"] == eos:
                    continue
                self.ids.append(payload["id"])
                grew = True
                if self.fields["logprobs"]:
                    pending_lp.append(self._logprob_entry(payload))
            if grew:
                self.text = self.engine.decode(self.ids)
            cut = min((i for i in (self.text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                self.text, self.finish = self.text[:cut], "stop"
                self.cancel()  # the decoder drops the row at its next step
            ready = len(self.text) if self.finish else max(len(self.text) - hold, self.sent)
            if self.text[self.sent:ready].endswith("\ufffd") and not self.finish:
                ready -= 1  # half of a multi-byte character: wait for the rest
            if ready > self.sent or (self.finish and pending_lp):
                chunk, self.sent = self.text[self.sent:ready], ready
                entries, pending_lp = pending_lp, []
                self.logprobs += entries
                yield chunk, entries

    def _logprob_entry(self, payload: dict[str, Any]) -> dict[str, Any]:
        tok = self.engine.tokenizer
        text = tok.decode([payload["id"]])
        return {"token": text, "logprob": payload["logprob"], "bytes": list(text.encode()),
                "top_logprobs": [{"token": tok.decode([t]), "logprob": v, "bytes": list(tok.decode([t]).encode())}
                                 for t, v in payload["top"]]}

    @property
    def usage(self) -> dict[str, int]:
        n = self.drawn
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n, "total_tokens": self.prompt_tokens + n}


# ----------------------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------------------

PAGE = Path(__file__).with_name("page.html")


def error_body(status: int, param: Optional[str], message: str, code: Optional[str] = None) -> dict[str, Any]:
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _host_of(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1:value.index("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def build_app(cfg: ServeConfig, engine: Optional[Engine] = None) -> Any:
    """The FastAPI app (``engine``: an already loaded one, e.g. shared by tests)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    engine = engine or Engine(cfg)
    app = FastAPI(title="panacea-rlhf", description=__doc__, docs_url=None, redoc_url=None, openapi_url=None)
    model_id = Path(cfg.run).resolve().name
    allowed = {"localhost", "127.0.0.1", "::1", _host_of(cfg.host)} | {_host_of(h) for h in cfg.allowed_hosts}
    key = cfg.key

    def error(status: int, param: Optional[str], message: str, code: Optional[str] = None,
              headers: Optional[dict[str, str]] = None) -> JSONResponse:
        return JSONResponse(status_code=status, content=error_body(status, param, message, code), headers=headers)

    def refusal(request: Request) -> Optional[JSONResponse]:
        """Refused before anything else runs: a foreign Host (DNS rebinding) or Origin (another site's page), a body
        that is not JSON or too large, a missing or wrong API key."""
        host = _host_of(request.headers.get("host", ""))
        if "*" not in cfg.allowed_hosts and host not in allowed:
            return error(421, "host", f"Host {host!r} is not served here (this server answers {sorted(allowed)}; "
                                      f"add a name with --allowed_hosts)")
        origin = request.headers.get("origin")
        if origin and "*" not in cfg.allowed_hosts and _host_of(origin.split("://", 1)[-1].split("/", 1)[0]) \
                not in allowed:
            return error(403, "origin", f"requests from pages of {origin} are not served (no cross-origin use)")
        if request.method == "POST":
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return error(415, "content-type", f"send the body as application/json, not {ctype or 'nothing'!r}")
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > cfg.max_body_bytes):
                return error(413, "body", f"the body is {length} bytes; this server takes at most "
                                          f"{cfg.max_body_bytes} (--max_body_bytes)")
        if key and request.url.path.startswith("/v1/"):
            sent = request.headers.get("authorization", "")
            if not (sent.startswith("Bearer ") and hmac.compare_digest(sent[7:].encode(), key.encode())):
                return error(401, "authorization", "send 'Authorization: Bearer <API key>' (the server's --api_key)",
                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return None

    class Gate:
        """A plain ASGI wrapper (not Starlette's BaseHTTPMiddleware, whose wrapped receive hides a client's
        disconnect from the handler) applying ``refusal`` to every HTTP request."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                refused = refusal(Request(scope))
                if refused is not None:
                    await refused(scope, receive, send)
                    return
            await self.inner(scope, receive, send)

    app.add_middleware(Gate)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, None, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, "body", f"malformed request: {exc.errors()[:3]}")

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        return error(500, None, f"internal error: {type(exc).__name__}: {exc}")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "panacea-rlhf",
                                            "objectives": engine.names, "preference_dim": len(engine.names),
                                            "base_model": engine.info.base_model}]}

    async def read_body(request: Request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():  # chunked bodies carry no Content-Length: count as they come
            size += len(chunk)
            if size > cfg.max_body_bytes:
                raise BadRequest("body", f"the body exceeds {cfg.max_body_bytes} bytes (--max_body_bytes)", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            raw = await read_body(request)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as err:
                raise BadRequest("body", f"is not valid JSON ({err}); send a JSON object with 'messages'") from None
            fields = parse_request(body, engine.names, cfg, model_id)
            ids = await asyncio.get_running_loop().run_in_executor(
                engine.workers, engine.prompt_ids, fields["messages"], fields["max_tokens"])
        except BadRequest as err:
            return error(err.status, err.param, str(err), err.code)
        stream = Stream(engine, fields, ids)
        if not engine.batcher.submit(stream.job):
            wait = max(1, round(engine.batcher.queued / max(cfg.max_batch_size, 1)))
            return error(429, None, f"{engine.batcher.queued} requests are waiting (--max_queue {cfg.max_queue}); "
                                    f"retry in {wait} s", headers={"Retry-After": str(wait)})
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": rid, "created": created, "model": model_id, "preference": fields["preference"],
                "seed": fields["seed"]}
        if fields["stream"]:
            return StreamingResponse(_sse(stream, head, request), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        watcher = asyncio.create_task(_watch_disconnect(request, stream))
        try:
            async for _ in stream.deltas():
                pass
        except RuntimeError as err:
            timed_out = "timeout" in str(err)
            return error(504 if timed_out else 500, None,
                         f"the request ran past {cfg.request_timeout_s} s (--request_timeout_s)" if timed_out
                         else str(err))
        finally:
            watcher.cancel()
            stream.cancel()
        choice = {"index": 0, "message": {"role": "assistant", "content": stream.text},
                  "finish_reason": stream.finish,
                  "logprobs": {"content": stream.logprobs} if fields["logprobs"] else None}
        return {**head, "object": "chat.completion", "choices": [choice], "usage": stream.usage}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.read_text().replace("__FRONT__", script_json(front_for_page(cfg, engine.names)))

    app.state.engine = engine
    return app


async def _watch_disconnect(request: Request, stream: Stream) -> None:
    """A client that goes away (uvicorn never cancels a non-streaming handler) cancels its request."""
    while True:
        if await request.is_disconnected():
            stream.cancel()
            return
        await asyncio.sleep(0.05)


async def _sse(stream: Stream, head: dict[str, Any], request: Request) -> AsyncIterator[str]:
    """OpenAI's streamed chat completion: a role chunk, content chunks, a finish chunk, a usage chunk when asked,
    then ``[DONE]``. A client that disconnects ends the generator, and the request with it."""
    def chunk(delta: dict[str, Any], finish: Optional[str] = None, logprobs: Any = None, usage: Any = None,
              choices: bool = True) -> str:
        body = {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]
                if choices else [], "usage": usage}
        return f"data: {json.dumps(body)}\n\n"

    watcher = asyncio.create_task(_watch_disconnect(request, stream))
    try:
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for text, entries in stream.deltas():
                lp = {"content": entries} if stream.fields["logprobs"] else None
                if text or entries:
                    yield chunk({"content": text}, logprobs=lp)
        except RuntimeError as err:
            yield f"data: {json.dumps(error_body(500, None, str(err)))}\n\n"
            return
        yield chunk({}, finish=stream.finish)
        if stream.fields["include_usage"]:
            yield chunk({}, usage=stream.usage, choices=False)
        yield "data: [DONE]\n\n"
    finally:
        watcher.cancel()
        stream.cancel()


def script_json(value: Any) -> str:
    """JSON safe inside a <script> element: no '</script>', no HTML comment or entity can close or bend it."""
    return (json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def front_for_page(cfg: ServeConfig, names: list[str]) -> dict[str, Any]:
    """What the page plots: the run's evaluated front (learned models' points, and the oracle's if present)."""
    path = Path(cfg.front) if cfg.front else None
    if path is None:
        for candidate in (Path(cfg.run) / "eval" / "pareto.json", Path(cfg.run).parent / "eval" / "pareto.json"):
            if candidate.is_file():
                path = candidate
                break
    front: dict[str, Any] = {"objectives": names, "preferences": [], "points": [], "base_point": None,
                             "source": None, "needs_key": bool(cfg.key)}
    if path is not None and path.is_file():
        data = json.loads(path.read_text())
        front.update({k: data.get(k) for k in ("preferences", "points", "base_point")}, source=str(path))
    return front
