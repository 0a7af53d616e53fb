"""The server behind ``python -m rlhf.serve`` (``rlhf/serve.py`` has the usage): request validation, the decoding
engine that batches requests with one preference per row, and the FastAPI app with its page."""
from __future__ import annotations

import asyncio
import json
import math
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from fastapi import Request  # module level: FastAPI resolves the endpoints' annotations against these globals

from rlhf.core.config import check, doc_field

MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class ServeConfig:
    """A server for one trained run (``--key value``)."""

    run: str = doc_field("", "the trained run (RUN or RUN/policy)")
    host: str = doc_field("127.0.0.1", "interface to listen on (127.0.0.1: this machine only)")
    port: int = doc_field(8000, "TCP port")
    front: Optional[str] = doc_field(None, "pareto.json the page plots (null: RUN/eval/pareto.json when it exists)")
    device: Optional[str] = doc_field(None, "where the model runs (null: the GPU when there is one, else the CPU)")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = doc_field("auto", "weights' dtype (auto: bf16 on a GPU, fp32 "
                                                                       "on the CPU)")
    max_batch_size: int = doc_field(16, "requests decoded together at most (1: one at a time)")
    batch_window_ms: float = doc_field(10.0, "after the first request of a batch, wait this long for more")
    max_tokens_cap: int = doc_field(256, "the largest max_tokens a request may ask for")
    default_max_tokens: int = doc_field(64, "max_tokens when a request gives none")
    max_prompt_length: int = doc_field(512, "prompt tokens kept (a longer chat keeps its end)")

    def __post_init__(self) -> None:
        check(bool(self.run), "run", "is required: --run RUN (a finished training run)")
        check(1 <= self.port <= 65535, "port", f"must be in 1..65535, got {self.port}")
        check(self.max_batch_size >= 1, "max_batch_size", f"must be >= 1, got {self.max_batch_size}")
        check(self.batch_window_ms >= 0, "batch_window_ms", f"must be >= 0, got {self.batch_window_ms}")
        check(1 <= self.default_max_tokens <= self.max_tokens_cap, "default_max_tokens",
              f"must be in 1..max_tokens_cap ({self.max_tokens_cap}), got {self.default_max_tokens}")


class BadRequest(ValueError):
    """A request field is malformed; answered with HTTP 400 naming it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass
class Job:
    """One chat request, validated, in the units the decoder wants."""

    messages: list[dict[str, str]]
    preference: list[float]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    future: Future


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


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


def parse_request(body: Any, names: list[str], cfg: ServeConfig) -> dict[str, Any]:
    """Validate a chat-completions body into Job fields; every error names its field and the fix."""
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object with 'messages'")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages", "must be a non-empty list of {role, content} messages ending with a user turn")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or \
                not isinstance(m.get("content"), str):
            raise BadRequest(f"messages[{i}]", f"must be {{role: system|user|assistant, content: string}}, got {m!r}")
    if messages[-1]["role"] != "user":
        raise BadRequest("messages", "must end with a user turn (the answer is the next assistant turn)")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", cfg.default_max_tokens))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("max_tokens", f"must be a positive integer, got {max_tokens!r}")
    if max_tokens > cfg.max_tokens_cap:
        raise BadRequest("max_tokens", f"{max_tokens} exceeds this server's cap {cfg.max_tokens_cap} "
                                       f"(ask for fewer, or restart it with --max_tokens_cap)")
    temperature = body.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 10:
        raise BadRequest("temperature", f"must be a number in [0, 10] (0: greedy), got {temperature!r}")
    top_p = body.get("top_p", 1.0)
    if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1:
        raise BadRequest("top_p", f"must be a number in (0, 1], got {top_p!r}")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED):
        raise BadRequest("seed", f"must be an integer in [0, {MAX_SEED}], got {seed!r}")
    if body.get("stream"):
        raise BadRequest("stream", "streaming is not supported by this server; send stream: false")
    if body.get("n", 1) != 1:
        raise BadRequest("n", "only n = 1 is supported")
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "preference": parse_preference(body.get("preference"), names), "max_tokens": max_tokens,
            "temperature": float(temperature), "top_p": float(top_p),
            "seed": int(seed) if seed is not None else int(torch.randint(0, MAX_SEED, ()).item())}


class Engine:
    """The run's model and a decoding thread that batches waiting requests (one lambda per row)."""

    def __init__(self, cfg: ServeConfig) -> None:
        from rlhf.adapter.policy import load_run_model
        from rlhf.data.chat import DEFAULT_TEMPLATE
        from rlhf.runtime.engine import placement

        self.cfg = cfg
        device, dtype = placement(cfg.device, cfg.dtype)
        model, self.tokenizer, self.info = load_run_model(cfg.run, dtype)
        self.model = model.to(device).eval()
        self.names = self.info.objective_names
        self.template = DEFAULT_TEMPLATE
        self.queue: queue.Queue[Job] = queue.Queue()
        self.stats = {"batches": 0, "requests": 0, "max_batch": 0}
        self.thread = threading.Thread(target=self._loop, name="panacea-decoder", daemon=True)
        self.thread.start()

    def submit(self, fields: dict[str, Any]) -> Future:
        future: Future = Future()
        self.queue.put(Job(**fields, future=future))
        return future

    def _loop(self) -> None:
        while True:
            jobs = [self.queue.get()]
            deadline = time.monotonic() + self.cfg.batch_window_ms / 1000.0
            while len(jobs) < self.cfg.max_batch_size:
                timeout = deadline - time.monotonic()
                try:
                    jobs.append(self.queue.get(timeout=max(timeout, 0)) if timeout > 0 else self.queue.get_nowait())
                except queue.Empty:
                    break
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # a gone client's job is dropped
            if not jobs:
                continue
            try:
                results = self.decode(jobs)
            except Exception as err:  # one bad batch must not stop the server
                for j in jobs:
                    j.future.set_exception(err)
                continue
            for j, r in zip(jobs, results):
                j.future.set_result(r)

    @torch.no_grad()
    def decode(self, jobs: list[Job]) -> list[Completion]:
        """One batched generate call: row i runs under jobs[i].preference with its own seeded noise."""
        from rlhf.data.chat import fit_prompt, format_prompt
        from rlhf.rollout.rollout import generate
        from rlhf.rollout.sampling import row_seeds

        self.stats["batches"] += 1
        self.stats["requests"] += len(jobs)
        self.stats["max_batch"] = max(self.stats["max_batch"], len(jobs))
        prompts = [fit_prompt(self.tokenizer, j.messages, self.cfg.max_prompt_length, self.template)[0] for j in jobs]
        texts = [format_prompt(self.tokenizer, p, self.template) for p in prompts]
        lam = torch.tensor([j.preference for j in jobs])                                        # (B, D)
        seeds = row_seeds(0, [j.seed for j in jobs])                                            # (B,)
        temperature = torch.tensor([j.temperature for j in jobs])                               # (B,) 0: greedy
        top_p = torch.tensor([j.top_p for j in jobs])                                           # (B,)
        seqs, attention_mask, P, response_mask = generate(
            self.model, self.tokenizer, texts, lam, max_prompt_length=self.cfg.max_prompt_length,
            max_new_tokens=max(j.max_tokens for j in jobs), temperature=temperature, top_p=top_p, seeds=seeds)
        prompt_lens = attention_mask[:, :P].sum(1).tolist()  # the prompt tokens each row was decoded from
        out = []
        for i, j in enumerate(jobs):
            ids = seqs[i, P:][response_mask[i].bool()].tolist()[:j.max_tokens]                  # up to and with EOS
            stopped = bool(ids) and ids[-1] == self.tokenizer.eos_token_id
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            out.append(Completion(text, prompt_lens[i], len(ids), "stop" if stopped else "length"))
        return out


PAGE = Path(__file__).with_name("page.html")


def build_app(cfg: ServeConfig, engine: Optional[Engine] = None) -> Any:
    """The FastAPI app (``engine``: an already loaded one, e.g. shared by tests)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    engine = engine or Engine(cfg)
    app = FastAPI(title="panacea-rlhf", description=__doc__)
    model_id = Path(cfg.run).resolve().name

    def error(status: int, param: str, message: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": {"message": message, "type": "invalid_request_error",
                                                                   "param": param}})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, "body", f"malformed request: {exc.errors()[:3]}")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "panacea-rlhf",
                                            "objectives": engine.names, "preference_dim": len(engine.names),
                                            "base_model": engine.info.base_model}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            return error(400, "body", f"is not valid JSON ({err}); send a JSON object with 'messages'")
        try:
            fields = parse_request(body, engine.names, cfg)
        except BadRequest as err:
            return error(400, err.param, str(err))
        future = engine.submit(fields)
        try:
            result: Completion = await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # the client went away: drop its job if it has not started
            future.cancel()
            raise
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": model_id, "preference": fields["preference"], "seed": fields["seed"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "finish_reason": result.finish_reason}],
                "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                          "total_tokens": result.prompt_tokens + result.completion_tokens}}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.read_text().replace("__FRONT__", json.dumps(front_for_page(cfg, engine.names)))

    app.state.engine = engine
    return app


def front_for_page(cfg: ServeConfig, names: list[str]) -> dict[str, Any]:
    """What the page plots: the run's evaluated front (learned models' points, and the oracle's if present)."""
    path = Path(cfg.front) if cfg.front else None
    if path is None:
        for candidate in (Path(cfg.run) / "eval" / "pareto.json", Path(cfg.run).parent / "eval" / "pareto.json"):
            if candidate.is_file():
                path = candidate
                break
    front: dict[str, Any] = {"objectives": names, "preferences": [], "points": [], "base_point": None,
                             "source": None}
    if path is not None and path.is_file():
        data = json.loads(path.read_text())
        front.update({k: data.get(k) for k in ("preferences", "points", "base_point")}, source=str(path))
    return front
