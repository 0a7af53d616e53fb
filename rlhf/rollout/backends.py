"""Generation backends: how rollout tokens are decoded (rollouts dominate PPO time, DESIGN.md §4).

The interface every backend implements (``GenerationBackend``):

- ``generate(model, input_ids (B, P), attention_mask (B, P), *, max_new_tokens, do_sample, temperature, top_p,
  pad_token_id, eos_token_id, synced_gpus) -> (B, P+T)`` token ids. The caller has already written ``lambda`` into
  the adapter (``set_preference``, (D,) or one row per sample) or merged it into W0 (``svd_lora.merged``), so a
  backend never needs to know about preferences: to the model ``lambda`` is an ordinary buffer.
- ``static_shapes``: True when the backend wants every call padded to the same prompt length (the caller then pads
  prompts to ``max_prompt_length``) so that a compiled graph is reused instead of re-traced per batch.
- ``after_update(model)``: called by the trainer after each optimiser update. HF backends read the live weights and
  do nothing; a backend with its own copy of the weights syncs them here.
- ``own_sampler``: False for HF backends (the caller's logits processors and torch's RNG sample). True for an engine
  that samples itself: the caller calls ``generate_with_logprobs(..., seeds=(B,) or None)`` instead and gets the
  sampler's token log-probs (B, T) beside the sequences.

Backends here:

- ``hf``: ``model.generate`` with the dynamic KV cache (eager PyTorch). Works under every ZeRO stage.
- ``vllm``: a vLLM OpenAI server in its own environment; the base loaded once, only the adapter synced per step
  (``rlhf/rollout/vllm_engine.py``).
- ``hf_static_compile``: ``model.generate`` with a static KV cache and the decoding forward compiled by
  ``torch.compile`` through transformers' ``CompileConfig``. Compiled once per run (transformers caches the
  compiled call on the model while the config object stays the same) and reused across steps. ``lambda`` lives in
  each adapter layer's ``preference`` buffer, which dynamo lifts to a graph *input*: changing it (same shape) does not
  recompile — ``tests/test_generation.py`` counts compiled graphs to hold this. Going from a shared (D,) lambda to
  per-sample (B, D), or merging the adapter, changes the graph and compiles once more (then both are cached).
  Needs ZeRO stage 0-2 (ZeRO-3's parameter hooks break graphs). On CPU the inductor compile costs ~1 min and gains
  nothing for tiny models: it is a GPU feature; ``compile_backend: eager`` keeps the tracing without code generation.

Each backend is a registered config block (``generation.backend: {name: hf_static_compile, compile_mode: null}``;
``backend: hf`` is the short form) whose capabilities the trainer reads (``ZERO_STAGES``, ``PER_ROW_PREFERENCE``)
and whose ``build()`` returns the ``GenerationBackend`` above.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional, Protocol

import torch
from torch import nn
from transformers import LogitsProcessorList

from rlhf.core.config import check, doc_field
from rlhf.core.registry import Plugin, Registry


class GenerationBackend(Protocol):
    name: str
    static_shapes: bool
    own_sampler: bool  # True: samples in its own engine, given per-row seeds; returns the sampler's log-probs too

    def generate(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                 max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, pad_token_id: int,
                 eos_token_id: int, synced_gpus: bool = False, logits_processor: Optional[list] = None
                 ) -> torch.Tensor: ...

    def after_update(self, model: nn.Module) -> None: ...


@dataclass(frozen=True)
class BackendConfig(Plugin):
    """The decoder of rollouts and evaluation. ``backend: hf`` is short for ``{name: hf}``."""

    PER_ROW_PREFERENCE: ClassVar[bool] = True     # decodes a batch with one lambda per row

    def build(self) -> GenerationBackend:
        raise NotImplementedError


BACKENDS: Registry = Registry("generation backend", BackendConfig, default="hf")


@dataclass(frozen=True)
class SamplingFields:
    """How responses are decoded: shared by PPO rollouts (``generation``) and front evaluation."""

    max_new_tokens: int = doc_field(128, "response length cap")
    temperature: float = doc_field(1.0, "sampling temperature (log-probs use the same temperature)")
    top_p: float = doc_field(1.0, "nucleus sampling")
    backend: BackendConfig = doc_field(factory=BACKENDS.default_block, doc="the decoder")

    def __post_init__(self) -> None:
        getattr(super(), "__post_init__", lambda: None)()
        check(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")


def _sampling(do_sample: bool, temperature: float, top_p: float) -> dict[str, Any]:
    # top_k=0: no implicit top-50 cut, so the sampled distribution is the one PPO's log-probs assume
    return dict(temperature=temperature, top_p=top_p, top_k=0) if do_sample else {}


class HFEager:
    """``model.generate`` with the dynamic cache."""

    name, static_shapes, own_sampler = "hf", False, False
    cache_kwargs: dict[str, Any] = {}  # extra generate() arguments choosing the KV cache (and its compilation)

    @torch.no_grad()
    def generate(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                 max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, pad_token_id: int,
                 eos_token_id: int, synced_gpus: bool = False, logits_processor: Optional[list] = None
                 ) -> torch.Tensor:
        extra = {"logits_processor": LogitsProcessorList(logits_processor)} if logits_processor else {}
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                              do_sample=do_sample, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                              synced_gpus=synced_gpus, **self.cache_kwargs, **extra,
                              **_sampling(do_sample, temperature, top_p))                      # (B, P+T)

    def after_update(self, model: nn.Module) -> None:
        pass


class HFStaticCompiled(HFEager):
    """``model.generate`` with a static cache and a compiled decoding step (one compile per run)."""

    name, static_shapes = "hf_static_compile", True

    def __init__(self, compile_backend: str = "inductor", compile_mode: Optional[str] = None) -> None:
        from transformers import CompileConfig

        # One config object for the whole run: transformers re-compiles whenever it sees a different one.
        # mode only means something to inductor (other backends warn and ignore it)
        mode = None if compile_backend != "inductor" else compile_mode
        self.compile_config = CompileConfig(backend=compile_backend, mode=mode, fullgraph=False)
        self.compile_config._compile_all_devices = True  # transformers compiles on CUDA only unless told
        self.cache_kwargs = {"cache_implementation": "static", "compile_config": self.compile_config}


@BACKENDS.register("hf")
@dataclass(frozen=True)
class HFBackendConfig(BackendConfig):
    """HF generate, eager, dynamic KV cache; every ZeRO stage."""

    def build(self) -> GenerationBackend:
        return HFEager()


@BACKENDS.register("hf_static_compile")
@dataclass(frozen=True)
class HFStaticCompileConfig(BackendConfig):
    """HF generate with a static KV cache and a torch.compile'd decoding step, compiled once per run (GPU)."""

    ZERO_STAGES: ClassVar[tuple[int, ...]] = (0, 1, 2)  # ZeRO-3's parameter hooks break compiled graphs

    compile_backend: str = doc_field("inductor", "torch.compile backend ('eager' on CPU: tracing without codegen)")
    compile_mode: Optional[str] = doc_field(
        "reduce-overhead", "torch.compile mode with inductor: reduce-overhead captures the decode step as a CUDA graph "
                           "(replayed every token; null: plain inductor)")

    def build(self) -> GenerationBackend:
        return HFStaticCompiled(self.compile_backend, self.compile_mode)


@BACKENDS.register("vllm")
@dataclass(frozen=True)
class VLLMBackendConfig(BackendConfig):
    """vLLM in its own environment: the base loaded once, each step's adapter(s) synced as LoRA (megabytes)."""

    sync: Literal["adapter", "merged"] = doc_field(
        "adapter", "how each step's policy reaches the engine: adapter = each distinct lambda written as a LoRA "
                   "(megabytes; per-sample lambdas too); merged = one lambda per batch, W0 + dW(lambda) of the adapted "
                   "modules reloaded into the engine in place (the plain base decodes, no LoRA kernels: faster "
                   "decoding, a bigger sync; the engine runs in vLLM's development mode for /collective_rpc)")
    url: Optional[str] = doc_field(None, "a running vLLM OpenAI server (started with --enable-lora, "
                                         "--served-model-name base, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True); null: the "
                                         "trainer starts one per rank on the first rollout")
    python: Optional[str] = doc_field(None, "the vLLM environment's python (null: $PANACEA_VLLM_PYTHON, else the "
                                            "repository's .venv-vllm built by scripts/setup_vllm.sh)")
    tokenizer: Optional[str] = doc_field(None, "tokenizer the server loads (null: the base model's own)")
    max_loras: int = doc_field(8, "adapters the server holds at once (--max-loras); PPO with preference.per: "
                                  "sample needs one per distinct lambda of a rollout batch (checked before any model "
                                  "loads); an evaluation grid with more lambdas decodes in waves of this many")
    max_model_len: Optional[int] = doc_field(None, "the server's context length (null: the model's)")
    dtype: Optional[str] = doc_field(None, "the server's weight dtype (null: the policy's, so the sampler draws from "
                                           "the distribution the trainer's log-probs assume; 'auto' is vLLM's own "
                                           "choice, which serves an fp32 checkpoint in 16 bits)")
    seed: int = doc_field(0, "the server's own seed (rows are sampled with per-row seeds regardless)")
    memory_fraction: float = doc_field(0.3, "--gpu-memory-utilization: the share of accelerator (on CPU: host) memory "
                                            "the server takes; the trainer needs the rest")
    kv_cache_gib: int = doc_field(1, "KV cache on a CPU server (VLLM_CPU_KVCACHE_SPACE) in whole GiB")
    startup_timeout_s: float = doc_field(600.0, "seconds to wait for a started server's /health")
    request_timeout_s: float = doc_field(600.0, "seconds one completion request may take")
    concurrency: int = doc_field(64, "rows in flight at once (one request per row)")
    chunked_prefill: bool = doc_field(False, "vLLM's chunked prefill (off: vLLM 0.32's CPU build crashes on seeded "
                                             "requests whose prefill is split; on for long prompts on a GPU)")
    extra_args: tuple[str, ...] = doc_field((), "more command-line arguments for the server")

    def __post_init__(self) -> None:
        check(self.max_loras >= 1, "generation.backend.max_loras", f"must be >= 1, got {self.max_loras}")
        check(self.kv_cache_gib >= 1, "generation.backend.kv_cache_gib", f"must be >= 1 (whole GiB), got "
                                                                         f"{self.kv_cache_gib}")
        check(0 < self.memory_fraction <= 1, "generation.backend.memory_fraction",
              f"must be in (0, 1], got {self.memory_fraction}")
        check(self.concurrency >= 1, "generation.backend.concurrency", f"must be >= 1, got {self.concurrency}")
        check(self.url is None or self.url.startswith(("http://", "https://")), "generation.backend.url",
              f"must start with http:// or https://, got {self.url!r}")

    def check(self, run_cfg: Any, path: str) -> None:
        from rlhf.rollout.vllm_engine import find_python

        generation = getattr(run_cfg, "generation", None)
        check(not getattr(generation, "merge_adapter", False), "generation.merge_adapter",
              "the vllm backend syncs only the adapter to its engine (the base stays loaded there): set "
              "generation.merge_adapter: false")
        preference, batch = getattr(run_cfg, "preference", None), getattr(run_cfg, "rollout_batch_size", None)
        check(not (self.sync == "merged" and preference is not None and preference.per_row),
              "generation.backend.sync", "merged holds one lambda's weights at a time, but preference.per: sample "
                                         "draws one lambda per prompt: use sync: adapter (one LoRA per lambda), or "
                                         "preference.per: batch")
        if preference is not None and preference.per_row and batch is not None:
            # per: sample draws one lambda per prompt (a group shares one): each needs an adapter slot of its own
            per_step = batch // run_cfg.advantage.samples_per_prompt
            check(per_step <= self.max_loras, "generation.backend.max_loras",
                  f"is {self.max_loras}, but preference.per: sample draws up to {per_step} distinct lambdas per "
                  f"rollout batch (rollout_batch_size {batch} / {run_cfg.advantage.samples_per_prompt} samples per "
                  f"prompt), one adapter each: set max_loras to at least {per_step} (the server must be started "
                  f"with --max-loras as large), lower rollout_batch_size, or use preference.per: batch")
        if self.url is None:
            find_python(self.python)  # refused here, before any model loads, saying how to build the environment

    def build(self) -> GenerationBackend:
        from rlhf.rollout.vllm_engine import VLLMBackend

        settings = {k: getattr(self, k) for k in ("sync", "url", "python", "tokenizer", "max_loras", "max_model_len",
                                                   "dtype", "seed", "memory_fraction", "kv_cache_gib",
                                                   "startup_timeout_s", "request_timeout_s", "concurrency",
                                                   "chunked_prefill")}
        return VLLMBackend({**settings, "extra_args": tuple(self.extra_args)})


def make_backend(name: str = "hf", **settings: Any) -> GenerationBackend:
    """The backend called ``name`` with its block's ``settings`` (a shorthand for tests and scripts)."""
    return BACKENDS.make(name, **settings).build()


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
