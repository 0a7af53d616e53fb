"""vLLM as the decoder of rollouts and evaluation, with adapter-only weight sync.

The base weights W0 never change during Panacea training, and at one preference the adapter is an ordinary LoRA of
rank k + D (``rlhf/adapter/as_lora.py``). So a vLLM OpenAI server loads the base **once**, and every step it is handed
only the adapter at that step's preference(s): each distinct lambda of a batch is written as a PEFT adapter (a few
MB) into a new directory and loaded in place under the slot's name (``POST /v1/load_lora_adapter`` with
``load_inplace``; a new path, because vLLM keys its prefix cache by adapter name and path and would otherwise reuse a
prompt's KV blocks computed under the old weights), then every row is one completion request naming its lambda's slot.
``sync: merged`` instead reloads W0 + dW(lambda) of the adapted modules into the plain base in place (vLLM's
``reload_weights`` through its development endpoint ``/collective_rpc``) and resets the prefix cache: base decoding
speed, one lambda per reload. A batch with more distinct
lambdas than the server's ``max_loras`` decodes in waves of ``max_loras``.

vLLM lives in its own environment (its pins differ from ours: ``requirements-vllm.txt``,
``scripts/setup_vllm.sh``). The trainer starts the server with that environment's Python on the first rollout (or
connects to one by URL), talks to it over HTTP only, and never imports vllm.

Sampling: every row is its own request with its own seed, so a row's draw does not depend on its batch. The seeds are
drawn from torch's global generator, which the run layer checkpoints and restores: a resumed run sends the same
seeds and gets the same tokens (``kill -9`` + ``--resume_from`` stays exact). Evaluation passes its per-prompt seeds
instead: one prompt meets the same seed under every lambda (common random numbers). The sampler's log-prob of each
token comes back with it (``--logprobs-mode processed_logprobs``: after temperature, as the trainer computes them).

Ranks: each rank starts its own server (its own port), so ranks never wait on each other to decode; a shared server
given by ``url`` works too (each rank loads its adapters under names of its own). Under ZeRO-3 only the adapter's
factors are gathered for the sync, never W0.
"""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from rlhf.adapter.as_lora import lora_config, lora_tensors, merged_tensors, save_peft_adapter
from rlhf.adapter.svd_lora import PreferenceError, svd_lora_layers
from rlhf.core.errors import InputError
from rlhf.runtime import engine

# vLLM's --max-lora-rank takes only these; the adapter's rank k + D rounds up to the next one
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # `python -m`: the `vllm` command breaks in the CPU package
BASE_NAME = "base"                                    # the served name of W0 alone (adapter off)
REPO_VENV = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"


class EngineError(InputError, RuntimeError):
    """The vLLM engine cannot be found, started or reached; the message says what to do (the run's last checkpoint
    is whole: nothing is lost)."""


def lora_rank(r: int) -> int:
    """The smallest rank vLLM accepts that holds an adapter of rank ``r``."""
    for allowed in LORA_RANKS:
        if allowed >= r:
            return allowed
    raise EngineError(f"the adapter's rank k + D = {r} exceeds vLLM's largest LoRA rank {LORA_RANKS[-1]}; lower "
                      f"adapter.rank")


def find_python(python: Optional[str], field: str = "generation.backend.python",
                url_field: str = "generation.backend.url") -> Path:
    """The vLLM environment's interpreter: ``python`` if given, else ``$PANACEA_VLLM_PYTHON``, else the repository's
    ``.venv-vllm`` (what ``scripts/setup_vllm.sh`` builds). Refused, saying how to build it, when none exists;
    ``field`` / ``url_field``: the config fields the message names."""
    given = python or os.environ.get("PANACEA_VLLM_PYTHON")
    path = Path(given) if given else REPO_VENV
    if not path.is_file():
        where = (f"{field} {given!r}" if python else
                 f"PANACEA_VLLM_PYTHON={given!r}" if given else f"the default {REPO_VENV}")
        raise EngineError(f"no vLLM environment: {where} does not exist. Build it with `bash scripts/setup_vllm.sh` "
                          f"(its own venv: vLLM's pins differ from ours), or set {url_field} to a running "
                          f"vLLM server started with --enable-lora")
    return path


def model_settings(model: nn.Module) -> dict[str, Any]:
    """The server settings a policy implies: the LoRA rank its adapter needs, its context length and its own
    precision (vLLM's "auto" serves an fp32 checkpoint in bf16/fp16, and the sampler then draws from another
    distribution than the trainer's log-probs describe: measured on the quickstart, 2.5e-3 nats per token apart in
    bf16 against 5e-6 in fp32)."""
    layer = next((m for _, m in svd_lora_layers(model)), None)
    return {"max_lora_rank": lora_rank(layer.rank + layer.pref_dim if layer is not None else 1),
            "max_model_len": getattr(model.config.get_text_config(), "max_position_embeddings", None),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """One vLLM OpenAI server: started here in its own environment (``url`` None) or reached at ``url``."""

    def __init__(self, model: str, *, url: Optional[str] = None, python: Optional[str] = None,
                 tokenizer: Optional[str] = None, max_lora_rank: int = 16, max_loras: int = 8,
                 max_model_len: Optional[int] = None, dtype: Optional[str] = None, seed: int = 0,
                 memory_fraction: float = 0.3, kv_cache_gib: int = 1, startup_timeout_s: float = 300.0,
                 request_timeout_s: float = 300.0, extra_args: tuple[str, ...] = (), concurrency: int = 64,
                 chunked_prefill: bool = False, log_dir: Optional[str] = None,
                 logprobs_mode: str = "processed_logprobs", enable_lora: bool = True, reloadable: bool = False
                 ) -> None:
        """``logprobs_mode``: processed_logprobs (after temperature and top-p: what a rollout's sampler drew from,
        as the trainer computes them) or raw_logprobs (the model's own: what a served completion reports).
        ``enable_lora``: serve LoRA requests (the adapter sync); ``reloadable``: weights reloaded in place from a
        directory (``reload_weights``: the merged sync; vLLM's development endpoint /collective_rpc)."""
        import httpx

        self.model, self.max_loras, self.concurrency = model, max_loras, concurrency
        self.proc: Optional[subprocess.Popen] = None
        self.log_path: Optional[Path] = None
        if url is None:
            port = _free_port()
            self.url = f"http://127.0.0.1:{port}"
            cmd = [str(find_python(python)), "-m", SERVER_MODULE, "--model", model, "--served-model-name",
                   BASE_NAME, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype or "auto",
                   "--seed", str(seed), "--logprobs-mode", logprobs_mode,
                   "--gpu-memory-utilization", str(memory_fraction), *extra_args]
            if enable_lora:
                cmd += ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_loras)]
            if tokenizer:
                cmd += ["--tokenizer", tokenizer]
            if max_model_len:
                cmd += ["--max-model-len", str(max_model_len)]
            if not chunked_prefill:  # whole prompts per step: vLLM 0.32's CPU build crashes on a seeded request
                # whose prefill is split ("CPU Generator does not use offset"); a step must then hold a whole prompt
                cmd += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(8192, max_model_len or 0))]
            env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
                       VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gib))))
            if reloadable:  # /collective_rpc (reload_weights) is served only in vLLM's development mode
                env["VLLM_SERVER_DEV_MODE"] = "1"
            log_dir_path = Path(log_dir or tempfile.gettempdir())
            log_dir_path.mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir_path / f"vllm_server_rank{engine.rank()}_{port}.log"
            self._log = open(self.log_path, "w")
            self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)  # our Ctrl-C reaches it through close(), once
            atexit.register(self.close)
        else:
            self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, timeout=request_timeout_s,
                                   limits=httpx.Limits(max_connections=concurrency))
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="vllm-request")
        self._wait_ready(startup_timeout_s if url is None else min(startup_timeout_s, 10.0))

    # ------------------------------------------------------------------ lifecycle
    def _log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"\n--- last lines of {self.log_path} ---\n" + "\n".join(tail)

    def _wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise EngineError(f"the vLLM server exited with code {self.proc.returncode} while starting "
                                  f"(model {self.model!r}); its log says why:{self._log_tail()}")
            try:
                if self.client.get("/health", timeout=5.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise EngineError(f"the vLLM server at {self.url} did not answer /health within {timeout_s:g} s "
                                  f"(generation.backend.startup_timeout_s){self._log_tail()}")
            time.sleep(0.5)
        served = [m.get("id") for m in self._call("GET", "/v1/models").get("data", [])]
        if self.proc is None and BASE_NAME not in served:
            raise EngineError(f"the vLLM server at {self.url} serves {served}, not {BASE_NAME!r}: start it with "
                              f"--served-model-name {BASE_NAME} --enable-lora (and VLLM_ALLOW_RUNTIME_LORA_UPDATING="
                              f"True) on the run's base model")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and not self._log.closed:
            self._log.close()

    # ------------------------------------------------------------------ calls
    def _call(self, method: str, path: str, body: Optional[dict] = None) -> dict:
        import httpx

        try:
            r = self.client.request(method, path, json=body)
        except httpx.HTTPError as err:
            died = (f"; the server process exited with code {self.proc.returncode}{self._log_tail()}"
                    if self.proc is not None and self.proc.poll() is not None else "")
            raise EngineError(f"the vLLM server at {self.url} stopped answering ({type(err).__name__}: {err}){died}. "
                              f"The run stops here and its last checkpoint is whole: restart the server (or let the "
                              f"trainer start one) and resume with --resume_from latest") from None
        if r.status_code != 200:
            raise EngineError(f"the vLLM server at {self.url} refused {method} {path}: HTTP {r.status_code} "
                              f"{r.text[:500]}")
        try:
            return r.json()
        except ValueError:
            return {"text": r.text}  # e.g. load_lora_adapter's "Success: ..." 

    def reload_weights(self, path: Path) -> None:
        """Reload the weights found in ``path`` (safetensors, checkpoint names) in place; the others stay."""
        try:
            self._call("POST", "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(path)}})
        except EngineError as err:
            if "HTTP 404" in str(err):
                raise EngineError(f"the vLLM server at {self.url} has no /collective_rpc: the merged sync reloads "
                                  f"weights through it, served only in vLLM's development mode: start the server "
                                  f"with VLLM_SERVER_DEV_MODE=1 (or let the trainer start one)") from None
            raise

    def reset_prefix_cache(self) -> None:
        """Forget every cached prompt KV block (development mode): after the weights changed under them."""
        self._call("POST", "/reset_prefix_cache")

    def unload_adapter(self, name: str) -> None:
        self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    def load_adapter(self, name: str, path: Path) -> None:
        """Load (or replace in place) the LoRA adapter ``name`` from ``path``."""
        self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path),
                                                      "load_inplace": True})

    def complete(self, model: str, prompt_ids: list[int], *, max_tokens: int, temperature: float, top_p: float,
                 seed: Optional[int], eos_token_id: int) -> tuple[list[int], list[float]]:
        """One row: its response token ids (EOS included when it stopped there) and the sampler's log-prob of each."""
        body = {"model": model, "prompt": prompt_ids, "max_tokens": max_tokens, "temperature": temperature,
                "top_p": top_p, "top_k": -1, "logprobs": 0, "return_token_ids": True,
                "stop_token_ids": [eos_token_id], "skip_special_tokens": False}
        if seed is not None:
            body["seed"] = int(seed)
        answer = self._call("POST", "/v1/completions", body)
        if not answer.get("choices"):
            raise EngineError(f"the vLLM server at {self.url} answered a completion without choices: "
                              f"{str(answer)[:300]}")
        choice = answer["choices"][0]
        ids = list(choice["token_ids"])
        lps = [float(x) if x is not None else 0.0 for x in (choice.get("logprobs") or {}).get("token_logprobs") or []]
        return ids, (lps + [0.0] * len(ids))[:len(ids)]


class VLLMBackend:
    """The ``GenerationBackend`` over a ``VLLMServer`` (``rlhf/rollout/backends.py`` has the interface)."""

    name, static_shapes, own_sampler = "vllm", False, True

    def __init__(self, settings: dict[str, Any]) -> None:
        settings = dict(settings)
        self.sync = settings.pop("sync", "adapter")  # adapter: LoRA requests; merged: W0 + dW(lambda) reloaded
        self.settings = settings            # VLLMServer keyword arguments, from the config block
        self.loaded: tuple = ("w0",)        # merged sync: what the engine's weights hold, (version, lambda) or W0
        self.server: Optional[VLLMServer] = None
        self.version = 0                    # bumped by every optimiser update: the loaded adapters are stale
        self.slots: dict[int, tuple[int, tuple[float, ...]]] = {}   # slot -> (version, lambda) it holds
        self.slot_dirs: dict[int, Path] = {}                         # slot -> the directory it was loaded from
        self.loads = 0                                               # adapter loads so far (names their folders)
        self.instance = uuid.uuid4().hex[:8]                         # names this backend's adapters on the server
        self.sync_dir: Optional[Path] = None
        self.lora_config: Optional[dict[str, Any]] = None
        self.gather: Optional[Any] = None
        self.last_sync: dict[str, float] = {}   # seconds and bytes of the last generate's adapter sync

    def _start(self, model: nn.Module) -> VLLMServer:
        if self.server is None:
            layers = [m for _, m in svd_lora_layers(model)]
            base = getattr(model.config, "_name_or_path", "")
            if not base or not (Path(base).exists() or "/" in base):
                raise EngineError("the vLLM backend needs the policy loaded from a path or hub name (its "
                                  "config._name_or_path), which the engine loads as the base")
            implied = model_settings(model)
            settings = dict(self.settings)
            settings["max_model_len"] = settings.get("max_model_len") or implied["max_model_len"]
            settings["dtype"] = settings.get("dtype") or implied["dtype"]  # the policy's own unless told
            merged = self.sync == "merged"
            if merged:
                head = model.get_output_embeddings()
                tied = getattr(model.config.get_text_config(), "tie_word_embeddings", False)
                if tied and any(layer is head or layer.base is head for layer in layers):
                    raise EngineError("generation.backend.sync: merged reloads the adapted modules' weights, but the "
                                      "adapter adapts the LM head, which this model ties to its input embeddings "
                                      "(vLLM keeps a tied head's old weights on reload): use sync: adapter, or leave "
                                      "the LM head out of adapter.target_modules")
            self.server = VLLMServer(base, max_lora_rank=implied["max_lora_rank"], enable_lora=not merged,
                                     reloadable=merged, **settings)
            self.sync_dir = Path(tempfile.mkdtemp(prefix=f"panacea_vllm_sync_rank{engine.rank()}_"))
            atexit.register(shutil.rmtree, self.sync_dir, True)
            self.lora_config = lora_config(model, base) if layers else None
            # ZeRO-3 partitions the adapter's factors: the sync gathers them (adapter sync: only them; merged sync:
            # the adapted modules' W0 too); decided once per run
            self.gather = engine.gathered if any(hasattr(p, "ds_id") for p in model.parameters()) else None
        return self.server

    def _row_lambdas(self, model: nn.Module, B: int) -> list[Optional[tuple[float, ...]]]:
        """Each row's lambda as the adapter's scoped state says (None: the base alone, adapter off)."""
        layers = [m for _, m in svd_lora_layers(model)]
        if not layers:
            return [None] * B
        state = layers[0].state
        if state.merged is not None:
            raise EngineError("the vLLM backend syncs the adapter, not merged weights: set "
                              "generation.merge_adapter: false")
        if state.disabled:
            return [None] * B
        if state.preference is None:
            raise PreferenceError("no preference set: the vLLM backend decodes under the adapter's current lambda")
        pref = state.preference.detach().float().cpu()                                        # (D,) or (B, D)
        return [tuple(pref.tolist())] * B if pref.dim() == 1 else [tuple(p) for p in pref.tolist()]

    def _sync(self, model: nn.Module, wave: list[tuple[float, ...]]) -> dict[tuple[float, ...], str]:
        """Load the wave's lambdas into slots 0..len-1 (only the ones whose slot holds another lambda or an older
        adapter); returns lambda -> served adapter name."""
        server = self.server
        assert server is not None and self.sync_dir is not None and self.lora_config is not None
        stale = [(j, lam) for j, lam in enumerate(wave) if self.slots.get(j) != (self.version, lam)]
        t0, nbytes = time.perf_counter(), 0
        if stale:
            for (j, lam), tensors in zip(stale, lora_tensors(model, [list(lam) for _, lam in stale], self.gather)):
                # a new directory for every load: vLLM keys its prefix cache by (adapter name, path), so a prompt's
                # cached KV blocks computed under the previous weights are never reused under these
                self.loads += 1
                folder = self.sync_dir / f"slot{j}_{self.loads}"
                nbytes += save_peft_adapter(tensors, self.lora_config, folder)
                server.load_adapter(self._slot_name(j), folder)
                old = self.slot_dirs.get(j)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)  # loaded into the engine already: the files can go
                self.slots[j], self.slot_dirs[j] = (self.version, lam), folder
        self.last_sync["seconds"] = self.last_sync.get("seconds", 0.0) + time.perf_counter() - t0
        self.last_sync["bytes"] = self.last_sync.get("bytes", 0.0) + nbytes
        return {lam: self._slot_name(j) for j, lam in enumerate(wave)}

    def _reload(self, model: nn.Module, lam: Optional[tuple[float, ...]]) -> dict[Any, str]:
        """Merged sync: the engine's adapted weights become W0 + dW(lam) (W0 for None) unless they already are; the
        rows are then decoded by the plain base at base speed. Returns lam -> the served name."""
        server = self.server
        assert server is not None and self.sync_dir is not None
        key = ("w0",) if lam is None else (self.version, lam)
        t0, nbytes = time.perf_counter(), 0
        if self.loaded != key:
            from safetensors.torch import save_file

            tensors = merged_tensors(model, None if lam is None else list(lam), self.gather)
            folder = self.sync_dir / "merged"
            folder.mkdir(exist_ok=True)
            save_file(tensors, str(folder / "model.safetensors.tmp"), metadata={"format": "pt"})
            (folder / "model.safetensors.tmp").replace(folder / "model.safetensors")
            self.loaded = ("pending",)  # a reload that fails leaves the engine's weights unknown
            server.reload_weights(folder)
            # prompts' cached KV blocks were computed with the previous weights (the cache is keyed by tokens only)
            server.reset_prefix_cache()
            self.loaded = key
            nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        self.last_sync["seconds"] = self.last_sync.get("seconds", 0.0) + time.perf_counter() - t0
        self.last_sync["bytes"] = self.last_sync.get("bytes", 0.0) + nbytes
        return {lam: BASE_NAME}

    def _slot_name(self, j: int) -> str:
        # unique to this backend: a trainer's rollouts and its front (or two runs) may share one server by url
        return f"panacea_{self.instance}_r{engine.rank()}_slot{j}"

    @torch.no_grad()
    def generate_with_logprobs(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                               max_new_tokens: int, do_sample: bool, temperature: float, top_p: float,
                               pad_token_id: int, eos_token_id: int, seeds: Optional[torch.Tensor] = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P+T) sequences (responses padded with EOS after their end) and (B, T) the sampler's token log-probs."""
        server = self._start(model)
        B, P = input_ids.shape
        lams = self._row_lambdas(model, B)
        distinct = list(dict.fromkeys(lam for lam in lams if lam is not None))  # first-seen order
        if do_sample and seeds is None:  # from the checkpointed global generator: a resumed run draws the same
            seeds = torch.randint(0, 2 ** 31 - 1, (B,))
        prompts = [ids[m.bool()].tolist() for ids, m in zip(input_ids.cpu(), attention_mask.cpu())]
        self.last_sync = {"seconds": 0.0, "bytes": 0.0}
        results: list[Optional[tuple[list[int], list[float]]]] = [None] * B
        if self.sync == "merged":  # one reload per distinct lambda (W0 itself for the base's rows)
            waves: list[list[Any]] = [[lam] for lam in dict.fromkeys(lams)]
        else:  # rows of the base first (no adapter needed), then waves of at most max_loras distinct lambdas
            waves = [[]] + [distinct[i:i + server.max_loras] for i in range(0, len(distinct), server.max_loras)]
        for wave in waves:
            if self.sync == "merged":
                served = self._reload(model, wave[0])
            else:
                served = self._sync(model, wave) if wave else {None: BASE_NAME}
            futures = {i: server.pool.submit(
                server.complete, served[lams[i]], prompts[i], max_tokens=max_new_tokens,
                temperature=temperature if do_sample else 0.0, top_p=top_p if do_sample else 1.0,
                seed=None if seeds is None else int(seeds[i]) & 0x7FFFFFFF, eos_token_id=eos_token_id)
                for i in range(B) if lams[i] in served}
            for i, f in futures.items():
                results[i] = f.result()
        T = max(1, max(len(r[0]) for r in results if r is not None))
        response = torch.full((B, T), eos_token_id, dtype=input_ids.dtype)                       # (B, T)
        logprobs = torch.zeros(B, T)                                                              # (B, T)
        for i, r in enumerate(results):
            assert r is not None
            response[i, :len(r[0])] = torch.tensor(r[0], dtype=input_ids.dtype)
            logprobs[i, :len(r[1])] = torch.tensor(r[1])
        return torch.cat([input_ids, response.to(input_ids.device)], dim=1), logprobs.to(input_ids.device)

    def generate(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                 max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, pad_token_id: int,
                 eos_token_id: int, synced_gpus: bool = False, logits_processor: Optional[list] = None,
                 seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        if logits_processor:
            raise EngineError("the vLLM backend samples itself: pass seeds, not logits processors")
        return self.generate_with_logprobs(model, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                                           do_sample=do_sample, temperature=temperature, top_p=top_p,
                                           pad_token_id=pad_token_id, eos_token_id=eos_token_id, seeds=seeds)[0]

    def after_update(self, model: nn.Module) -> None:
        self.version += 1  # the next generate writes and loads the adapters afresh

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
