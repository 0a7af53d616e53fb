"""Objectives: the D preference dimensions and where each one's scores come from (the objective-source plug-in
point). An objective names exactly one source by its key:

    objectives:
      - {name: helpful, model: runs/rm_helpful}                 # a score model (its own tokenizer, batching, length)
      - {name: harmless, model: runs/cm_harmless, kind: cost}
      - {name: concise, function: hhbench.task:concise_reward}  # a Python function of the text
      - {name: correct, url: http://rm-host:5000/get_reward}    # a reward server (OpenRLHF's remote-RM convention)

``kind``, ``normalize``, the score clipping and the NaN guard apply to every source alike (``rlhf/scoring/scorer.py``).
An objective with no source (``- sft``) only names a dimension (plain or Panacea-SFT and DPO without an in-training
front); a trainer that scores (PPO, evaluation) refuses it. Each source's ``build(...)`` returns a ``ScoreSource``:
``score(prompts, responses, columns) -> (B,)`` raw scores in the source's own orientation (a cost's higher = worse);
``columns`` are the prompt dataset's other columns for those rows (e.g. a reference answer).

Under data parallelism every rank scores its own rows with its own copy of every source: a function runs on every
rank, a URL is called by every rank for its rows (so the server sees world-size concurrent batches).

The function convention is TRL's ``reward_funcs``: ``fn(prompts, responses, **columns) -> one float per row`` (a
function without ``**kwargs`` gets only the columns it names). The URL convention extends OpenRLHF's remote reward
model: POST ``{"query": [prompt + response as text], "prompts": [...], "responses": [...], "columns": {...}}``, answer
``{"rewards": [...]}`` (``{"scores": [...]}`` or a bare list are read too), one number per row.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional, Protocol, Sequence

import torch

from rlhf.core.config import check, doc_field
from rlhf.core.errors import InputError
from rlhf.core.registry import Plugin, Registry
from rlhf.data.chat import DEFAULT_TEMPLATE, Prompt


class ScoreSource(Protocol):
    """What the scorer calls: one raw score per (prompt, response), a (B,) float tensor (``columns``: the prompt
    dataset's other columns for those rows, column -> B values)."""

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str],
              columns: Optional[dict[str, list]] = None) -> torch.Tensor: ...


class SourceError(InputError, RuntimeError):
    """An objective's source failed or answered something that is not one number per row; names the objective."""


def as_scores(values: Any, n: int, who: str, width: Optional[int] = None) -> torch.Tensor:
    """A source's answer as a (n,) float tensor ((n, width) for an extra scorer), refused naming ``who`` when it has
    another length or holds something that is not a number. NaN and inf pass (the NaN guard counts them)."""
    import numpy as np

    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise SourceError(f"{who} returned something that is not numbers ({str(values)[:120]!r}); it must return "
                          f"one float per row") from None
    want = (n,) if width is None else (n, width)
    if arr.shape != want:
        raise SourceError(f"{who} returned shape {arr.shape} for {n} responses; it must return {want} (one "
                          f"{'float' if width is None else f'row of {width} floats, one per objective,'} per response)")
    return torch.from_numpy(arr).float()


@dataclass(frozen=True)
class ObjectiveConfig(Plugin):
    """One preference dimension and its source of scores. ``- helpful`` is short for ``- {name: helpful}``."""

    SCORES: ClassVar[bool] = False   # True when the objective has a source that can score responses

    name: str = doc_field("", "objective name (helpful, harmless, ...); used in logs and pareto.json")
    kind: Literal["reward", "cost"] = doc_field("reward", "reward: higher = better; cost: higher = worse (negated)")
    normalize: bool = doc_field(False, "divide by a running std and subtract a running mean (per dimension)")

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "is required")

    def describe(self) -> str:
        """The objective and its source, for messages: ``helpful (model runs/rm)``."""
        return self.name

    def preflight(self, path: str, prompts: Sequence[Prompt], what: str, rows: Optional[Sequence[int]] = None,
                  columns: Optional[dict[str, list]] = None) -> None:
        """Checks that need the source's files but no weights, run before any model loads: ``path`` is this
        objective's config field, ``prompts`` every prompt it will score (from ``what``, rows ``rows``; ``columns``:
        the dataset's other columns for those prompts)."""

    def build(self, *, dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None,
              ds_config: Optional[dict[str, Any]] = None) -> ScoreSource:
        raise ValueError(f"objective {self.name!r} names no source of scores: give it one of "
                         f"{OBJECTIVES.names()} (e.g. model: PATH of a score model)")


OBJECTIVES: Registry = Registry("objective source", ObjectiveConfig, default=None, key=None)


@OBJECTIVES.register("model")
@dataclass(frozen=True)
class ModelObjective(ObjectiveConfig):
    """A score model (AutoModelForSequenceClassification, num_labels = 1) with its own tokenizer."""

    SCORES: ClassVar[bool] = True
    PATH_FIELDS: ClassVar[dict[str, str]] = {"model": "model"}

    model: str = doc_field("", "score model: hub name or path (AutoModelForSequenceClassification, num_labels=1)")
    batch_size: int = doc_field(16, "sequences per score-model forward pass")
    max_length: Optional[int] = doc_field(None, "max tokens the score model reads (left-truncated); null: as many as "
                                                "the model's positions allow (1024 when its config does not say)")
    prompt_template: str = doc_field(DEFAULT_TEMPLATE, "conversation layout if the score tokenizer has no chat template")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.model), "model", "is required: a score model's path or hub name")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.max_length is None or self.max_length >= 1, "max_length",
              f"must be >= 1 token or null, got {self.max_length}")

    def describe(self) -> str:
        return f"{self.name} (model {self.model})"

    def preflight(self, path: str, prompts: Sequence[Prompt], what: str, rows: Optional[Sequence[int]] = None,
                  columns: Optional[dict[str, list]] = None) -> None:
        """Its max_length fits the score model's positions, and its tokenizer's chat template renders every prompt."""
        from transformers import AutoConfig, AutoTokenizer

        from rlhf.data.chat import preflight_lengths, render_each
        from rlhf.scoring.score_model import check_score_config

        config = AutoConfig.from_pretrained(self.model)
        if not _is_safe_rlhf_dir(self.model):
            check_score_config(config, self.model)
        if self.max_length is not None:
            preflight_lengths(config, f"{path}.model", self.model, self.max_length, f"{path}.max_length")
        render_each(AutoTokenizer.from_pretrained(self.model), prompts, self.prompt_template, what, f"{path}.model",
                    rows)

    def build(self, *, dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None,
              ds_config: Optional[dict[str, Any]] = None) -> ScoreSource:
        """Load the score model; under training (``ds_config``) placed (and partitioned under ZeRO-3) like the actor,
        else on ``device``."""
        from rlhf.runtime import engine
        from rlhf.scoring.score_model import load_score_model

        model, tokenizer, meta = load_score_model(self.model, dtype=dtype)
        if meta.get("kind") and meta["kind"] != self.kind:
            warnings.warn(f"objective '{self.name}' is configured as kind={self.kind} but {self.model}'s "
                          f"dimension.json says {meta['kind']}; using the config's kind")
        if ds_config is not None:
            model = engine.initialize_inference(model, ds_config)
        elif device is not None:
            model = model.to(device)
        from rlhf.data.chat import model_positions

        max_length = self.max_length or model_positions(model.config) or 1024
        return ModelSource(model, tokenizer, float(meta.get("score_offset", 0.0)), self.batch_size, max_length,
                           self.prompt_template)


def _is_safe_rlhf_dir(path: str) -> bool:
    import json
    from pathlib import Path

    from rlhf.scoring.score_model import SAFE_RLHF_ARCHS

    f = Path(path) / "config.json"
    return f.is_file() and bool(SAFE_RLHF_ARCHS & set(json.loads(f.read_text()).get("architectures") or []))


class ModelSource:
    """A loaded score model: the conversation re-rendered with its own tokenizer, batched by length."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, offset: float, batch_size: int, max_length: int,
                 template: str) -> None:
        self.model, self.tokenizer, self.offset = model, tokenizer, offset
        self.batch_size, self.max_length, self.template = batch_size, max_length, template

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], responses: Sequence[str],
              columns: Optional[dict[str, list]] = None) -> torch.Tensor:
        from rlhf.data.chat import format_conversation
        from rlhf.scoring.score_model import score_texts

        texts = [format_conversation(self.tokenizer, p, r, self.template) for p, r in zip(prompts, responses)]
        return score_texts(self.model, self.tokenizer, texts, self.batch_size, self.max_length,
                           offset=self.offset)                                                # (B,)


def probe(source: ScoreSource, prompts: Sequence[Prompt], columns: Optional[dict[str, list]] = None) -> None:
    """One call on (up to) two of the prompts with placeholder responses, before anything loads: a source that does
    not answer, or answers something other than one number per row, is refused by its own error."""
    n = min(2, len(prompts))
    source.score(list(prompts[:n]), ["a placeholder response"] * n, {k: list(v[:n]) for k, v in (columns or {}).items()})


# ----------------------------------------------------------------------------------------------------------
# A Python function
# ----------------------------------------------------------------------------------------------------------

def load_function(spec: str, who: str) -> Any:
    """``package.module:callable`` -> the callable (modules are found from the working directory too), refused naming
    ``who`` when it does not import or cannot take (prompts, responses)."""
    import importlib
    import inspect
    import os
    import sys

    module, _, name = spec.partition(":")
    if not module or not name:
        raise SourceError(f"{who}: {spec!r} must be written 'package.module:function'")
    if os.getcwd() not in sys.path:  # user modules are named relative to where the command runs
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise SourceError(f"{who}: cannot import {spec!r} ({type(err).__name__}: {err})") from None
    if not callable(fn):
        raise SourceError(f"{who}: {spec!r} is not callable")
    try:
        inspect.signature(fn).bind_partial([], [])  # further parameters are columns, passed by name
    except TypeError as err:
        raise SourceError(f"{who}: {spec!r} cannot be called as fn(prompts, responses, **columns) ({err})") from None
    except ValueError:
        pass  # a builtin without a signature: its first call tells
    return fn


class FunctionSource:
    """``fn(prompts, responses, **columns)`` once per batch; a function without ``**kwargs`` gets the columns it names."""

    def __init__(self, fn: Any, who: str, width: Optional[int] = None) -> None:
        import inspect

        self.fn, self.who, self.width = fn, who, width
        try:
            params = list(inspect.signature(fn).parameters.values())
        except ValueError:
            params = []
        self.takes_all = any(p.kind == p.VAR_KEYWORD for p in params)
        self.named = {p.name for p in params}
        # parameters after (prompts, responses) with no default: columns the function cannot do without
        self.required = [p.name for p in params[2:] if p.default is p.empty and p.kind in
                         (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str],
              columns: Optional[dict[str, list]] = None) -> torch.Tensor:
        cols = {k: v for k, v in (columns or {}).items() if self.takes_all or k in self.named}
        missing = [c for c in self.required if c not in cols]
        if missing:
            raise SourceError(f"{self.who} needs the column(s) {missing}, which the prompts do not have (their other "
                              f"columns: {sorted(columns or {})}); add them to the prompt dataset or give the "
                              f"parameters defaults")
        try:
            values = self.fn(list(prompts), list(responses), **cols)
        except Exception as err:
            raise SourceError(f"{self.who} raised {type(err).__name__}: {err}") from err
        return as_scores(values, len(responses), self.who, self.width)


@OBJECTIVES.register("function")
@dataclass(frozen=True)
class FunctionObjective(ObjectiveConfig):
    """A Python function of the text (a rule, a verifier): fn(prompts, responses, **columns) -> one float per row."""

    SCORES: ClassVar[bool] = True

    function: str = doc_field("", "package.module:callable, called once per batch with the prompts (strings or chats), "
                                  "the responses and the prompt dataset's other columns as keyword arguments")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(":" in self.function, "function", f"must be written 'package.module:function', got {self.function!r}")

    def describe(self) -> str:
        return f"{self.name} (function {self.function})"

    def preflight(self, path: str, prompts: Sequence[Prompt], what: str, rows: Optional[Sequence[int]] = None,
                  columns: Optional[dict[str, list]] = None) -> None:
        """It imports, takes (prompts, responses), and returns one number per row on two of the prompts."""
        source = FunctionSource(load_function(self.function, f"{path}.function"), f"objective {self.name!r} "
                                                                                  f"({self.function})")
        probe(source, prompts, columns)

    def build(self, *, dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None,
              ds_config: Optional[dict[str, Any]] = None) -> ScoreSource:
        return FunctionSource(load_function(self.function, f"objective {self.name!r}"),
                              f"objective {self.name!r} ({self.function})")


# ----------------------------------------------------------------------------------------------------------
# A reward server
# ----------------------------------------------------------------------------------------------------------

class UrlSource:
    """POSTs batches to a reward server: a timeout per call, bounded retries with exponential back-off on connection
    errors, timeouts and 5xx; a 4xx (the server refuses our request) is not retried. After the last try the error
    names the URL."""

    def __init__(self, cfg: "UrlObjective", who: str, width: Optional[int] = None) -> None:
        self.cfg, self.who, self.width = cfg, who, width
        self._client: Any = None

    def _post(self, body: dict[str, Any]) -> Any:
        import httpx

        c = self.cfg
        if self._client is None:  # one client for the run: kept-alive connections, one TLS context (a new client per
            self._client = httpx.Client(timeout=c.timeout_s, headers=dict(c.headers))  # call costs ~30 ms)
        last = ""
        for attempt in range(c.retries + 1):
            if attempt:
                time.sleep(c.backoff_s * 2 ** (attempt - 1))
            try:
                r = self._client.post(c.url, json=body)
            except httpx.TimeoutException:
                last = f"no answer within {c.timeout_s} s (timeout_s)"
                continue
            except httpx.HTTPError as err:
                last = f"{type(err).__name__}: {err}"
                continue
            if r.status_code >= 500:
                last = f"HTTP {r.status_code}: {r.text[:200]!r}"
                continue
            if r.status_code >= 400:
                raise SourceError(f"{self.who}: {c.url} refused the request with HTTP {r.status_code}: "
                                  f"{r.text[:300]!r}")
            try:
                answer = r.json()
            except ValueError:
                raise SourceError(f"{self.who}: {c.url} answered with no JSON: {r.text[:200]!r}") from None
            if isinstance(answer, dict):
                answer = answer.get("rewards", answer.get("scores", answer))
            return answer
        raise SourceError(f"{self.who}: {c.url} failed {c.retries + 1} times; the last: {last}. Check the server "
                          f"(or raise timeout_s / retries); the run stops here, its last checkpoint is whole")

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str],
              columns: Optional[dict[str, list]] = None) -> torch.Tensor:
        from rlhf.data.chat import as_messages, render_plain

        out = []
        bs = self.cfg.batch_size
        for i in range(0, len(responses), bs):
            p, r = list(prompts[i:i + bs]), list(responses[i:i + bs])
            query = [render_plain(as_messages(x), self.cfg.prompt_template) + " " + y for x, y in zip(p, r)]
            cols = {k: list(v[i:i + bs]) for k, v in (columns or {}).items()}
            values = self._post({"query": query, "prompts": p, "responses": r, "columns": cols})
            out.append(as_scores(values, len(r), f"{self.who} ({self.cfg.url})", self.width))
        return torch.cat(out) if out else torch.zeros(0)


@OBJECTIVES.register("url")
@dataclass(frozen=True)
class UrlObjective(ObjectiveConfig):
    """A reward server over HTTP (e.g. a large reward model or an LLM judge on other machines)."""

    SCORES: ClassVar[bool] = True

    url: str = doc_field("", "the server's endpoint, e.g. http://rm-host:5000/get_reward")
    batch_size: int = doc_field(64, "rows per request")
    timeout_s: float = doc_field(30.0, "seconds one request may take")
    retries: int = doc_field(3, "retries after a timeout, a connection error or a 5xx (back-off doubles each time)")
    backoff_s: float = doc_field(1.0, "the first retry's wait")
    headers: dict[str, str] = doc_field(factory=dict, doc="extra HTTP headers (e.g. Authorization)")
    prompt_template: str = doc_field(DEFAULT_TEMPLATE, "the plain layout of 'query' (prompt + response as one text)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.url.startswith(("http://", "https://")), "url", f"must start with http:// or https://, got "
                                                                   f"{self.url!r}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.timeout_s > 0, "timeout_s", f"must be > 0, got {self.timeout_s}")
        check(self.retries >= 0, "retries", f"must be >= 0, got {self.retries}")
        check(self.backoff_s >= 0, "backoff_s", f"must be >= 0, got {self.backoff_s}")

    def describe(self) -> str:
        return f"{self.name} (url {self.url})"

    def preflight(self, path: str, prompts: Sequence[Prompt], what: str, rows: Optional[Sequence[int]] = None,
                  columns: Optional[dict[str, list]] = None) -> None:
        """The server answers one number per row for two of the prompts (a health check in the format it serves),
        or the run is refused naming the URL."""
        probe(UrlSource(self, f"{path}.url (objective {self.name!r})"), prompts, columns)

    def build(self, *, dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None,
              ds_config: Optional[dict[str, Any]] = None) -> ScoreSource:
        return UrlSource(self, f"objective {self.name!r}")


# ----------------------------------------------------------------------------------------------------------
# Extra scorers (evaluation's eval_scorers / --scorer): the same sources, one column per objective
# ----------------------------------------------------------------------------------------------------------

def extra_scorer(name: str, spec: str, width: int) -> ScoreSource:
    """``spec``: 'package.module:function' or an http(s) URL; the source scores every objective at once, (N, width)."""
    who = f"extra scorer {name!r}"
    if spec.startswith(("http://", "https://")):
        return UrlSource(UrlObjective(name=name, url=spec), who, width)
    return FunctionSource(load_function(spec, who), who, width)
