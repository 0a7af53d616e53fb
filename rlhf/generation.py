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

Backends here:

- ``hf``: ``model.generate`` with the dynamic KV cache (eager PyTorch). Works under every ZeRO stage.
- ``hf_static_compile``: ``model.generate`` with a static KV cache and the decoding forward compiled by
  ``torch.compile`` through transformers' ``CompileConfig``. Compiled once per run (transformers caches the
  compiled call on the model while the config object stays the same) and reused across steps. ``lambda`` lives in
  each adapter layer's ``preference`` buffer, which dynamo lifts to a graph *input*: changing it (same shape) does not
  recompile — ``tests/test_generation.py`` counts compiled graphs to hold this. Going from a shared (D,) lambda to
  per-sample (B, D), or merging the adapter, changes the graph and compiles once more (then both are cached).
  Needs ZeRO stage 0-2 (ZeRO-3's parameter hooks break graphs). On CPU the inductor compile costs ~1 min and gains
  nothing for tiny models: it is a GPU feature; ``compile_backend: eager`` keeps the tracing without code generation.

A vLLM backend fits the same interface (not implemented: it cannot be tested on this project's CPU-only CI). It
would need ``generation.merge_adapter: true``, so that when ``generate`` is called the model's weights already are
``W0 + dW(lambda)`` for this batch: it pushes those weights into its engine (``load_weights`` on vLLM's model, once per
rollout batch since lambda changes per batch), runs ``LLM.generate`` on the prompt token ids with
``SamplingParams(temperature, top_p, max_tokens)`` and returns the ids padded like HF's. It refuses per-sample
preferences (vLLM holds one set of weights). ``after_update`` marks its copy stale. Old and reference log-probs
stay with the training model, as now, so PPO's ratios never mix two numerical implementations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch
from torch import nn

from rlhf.config import check, doc_field

BACKENDS = ("hf", "hf_static_compile")


@dataclass(frozen=True)
class SamplingFields:
    """How responses are decoded: shared by PPO rollouts (``generation``) and front evaluation."""

    max_new_tokens: int = doc_field(128, "response length cap")
    temperature: float = doc_field(1.0, "sampling temperature (log-probs use the same temperature)")
    top_p: float = doc_field(1.0, "nucleus sampling")
    backend: str = doc_field(
        "hf", f"decoder, one of {list(BACKENDS)}: hf = eager dynamic cache; hf_static_compile = static cache + "
              f"torch.compile, compiled once per run, lambda a graph input (GPU; ZeRO stage 0-2)")
    compile_backend: str = doc_field("inductor", "torch.compile backend for hf_static_compile ('eager' on CPU)")

    def __post_init__(self) -> None:
        getattr(super(), "__post_init__", lambda: None)()
        check(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(self.backend in BACKENDS, "backend", f"must be one of {list(BACKENDS)}, got {self.backend!r}")


class GenerationBackend(Protocol):
    name: str
    static_shapes: bool

    def generate(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                 max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, pad_token_id: int,
                 eos_token_id: int, synced_gpus: bool = False) -> torch.Tensor: ...

    def after_update(self, model: nn.Module) -> None: ...


def _sampling(do_sample: bool, temperature: float, top_p: float) -> dict[str, Any]:
    # top_k=0: no implicit top-50 cut, so the sampled distribution is the one PPO's log-probs assume
    return dict(temperature=temperature, top_p=top_p, top_k=0) if do_sample else {}


class HFEager:
    """``model.generate`` with the dynamic cache."""

    name, static_shapes = "hf", False
    cache_kwargs: dict[str, Any] = {}  # extra generate() arguments choosing the KV cache (and its compilation)

    @torch.no_grad()
    def generate(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                 max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, pad_token_id: int,
                 eos_token_id: int, synced_gpus: bool = False) -> torch.Tensor:
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                              do_sample=do_sample, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                              synced_gpus=synced_gpus, **self.cache_kwargs,
                              **_sampling(do_sample, temperature, top_p))                      # (B, P+T)

    def after_update(self, model: nn.Module) -> None:
        pass


class HFStaticCompiled(HFEager):
    """``model.generate`` with a static cache and a compiled decoding step (one compile per run)."""

    name, static_shapes = "hf_static_compile", True

    def __init__(self, compile_backend: str = "inductor", compile_mode: Optional[str] = None) -> None:
        from transformers import CompileConfig

        # One config object for the whole run: transformers re-compiles whenever it sees a different one.
        self.compile_config = CompileConfig(backend=compile_backend, mode=compile_mode, fullgraph=False)
        self.compile_config._compile_all_devices = True  # transformers compiles on CUDA only unless told
        self.cache_kwargs = {"cache_implementation": "static", "compile_config": self.compile_config}


def make_backend(name: str = "hf", compile_backend: str = "inductor", compile_mode: Optional[str] = None
                 ) -> GenerationBackend:
    if name == "hf":
        return HFEager()
    if name == "hf_static_compile":
        return HFStaticCompiled(compile_backend, compile_mode)
    raise ValueError(f"unknown generation backend {name!r}; choose one of {list(BACKENDS)}")


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
