"""The one module that imports DeepSpeed: distributed init, ZeRO config resolution, engines, gathered saves.

Every trainer (reward/cost models, PPO, DPO, SFT) goes through these functions, so that ZeRO 1/2/3, offload,
bf16/fp16/fp32 and CPU (gloo) behave the same everywhere.

Why not HF Trainer / accelerate: on CPU, accelerate's DeepSpeed path sees one process even when the launcher
starts two, so each rank would train on the full data alone. Driving ``deepspeed.initialize`` directly gives
correct data parallelism on CPU (tests) and GPU (users) with the same code.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from rlhf.core.errors import InputError


class EngineConfigError(InputError, ValueError):
    """A DeepSpeed JSON setting conflicts with the run config or cannot be resolved."""


# ----------------------------------------------------------------------------------------------------------
# Distributed state
# ----------------------------------------------------------------------------------------------------------

def init_distributed() -> None:
    """Initialise torch.distributed once (NCCL on GPU, gloo on CPU); single-process runs need no launcher."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def placement(device: Optional[str] = None, dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Where inference (evaluation, scoring) runs: ``device`` null = the GPU when there is one, else the CPU;
    ``dtype`` auto = bf16 on a GPU, fp32 on the CPU."""
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EngineConfigError(f"device {device!r} asked for, but no CUDA GPU is available; pass --device cpu")
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise EngineConfigError(f"dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}")
    return dev, DTYPES[dtype]


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place, returned for chaining)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Elementwise max of a tensor over ranks (in place, returned for chaining)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (a list of one without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


# ----------------------------------------------------------------------------------------------------------
# DeepSpeed config resolution
# ----------------------------------------------------------------------------------------------------------

def resolve_ds_config(path: str | Path, *, micro_batch_size: int, grad_accum: int, lr: float, weight_decay: float,
                      precision: str, max_grad_norm: float, betas: tuple[float, float] = (0.9, 0.95),
                      hidden_size: Optional[int] = None, world: Optional[int] = None) -> dict[str, Any]:
    """Load a ``ds_configs/*.json`` and fill every ``"auto"`` from the run config.

    A literal value that disagrees with the run config is an error (naming both), never silently overwritten.
    """
    path = Path(path)
    if not path.is_file():
        raise EngineConfigError(f"DeepSpeed config {str(path)!r} not found; use one of ds_configs/*.json")
    cfg = json.loads(path.read_text())
    world = world_size() if world is None else world
    wanted: dict[tuple[str, ...], Any] = {
        ("train_micro_batch_size_per_gpu",): micro_batch_size,
        ("gradient_accumulation_steps",): grad_accum,
        ("train_batch_size",): micro_batch_size * grad_accum * world,
        ("gradient_clipping",): max_grad_norm,
        ("bf16", "enabled"): precision == "bf16",
        ("fp16", "enabled"): precision == "fp16",
        ("optimizer", "params", "lr"): lr,
        ("optimizer", "params", "betas"): list(betas),
        ("optimizer", "params", "weight_decay"): weight_decay,
    }
    if hidden_size is not None:
        wanted[("zero_optimization", "stage3_param_persistence_threshold")] = 10 * hidden_size
        wanted[("zero_optimization", "stage3_prefetch_bucket_size")] = int(0.9 * hidden_size * hidden_size)
    for keys, value in wanted.items():
        node = cfg
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
            if node is None:
                break
        if node is None or keys[-1] not in node:
            if keys[0] in ("bf16", "fp16") and value:  # precision requested but the section is absent
                cfg.setdefault(keys[0], {})["enabled"] = True
            elif keys[-1] in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
                cfg[keys[-1]] = value
            continue
        current = node[keys[-1]]
        if current == "auto":
            node[keys[-1]] = value
        elif current != value and not _close(current, value):
            raise EngineConfigError(
                f"{path.name}: '{'.'.join(keys)}' is {current!r} but the run config implies {value!r}; "
                f"set it to \"auto\" in the JSON (preferred) or change the run config to match")
    leftover = _find_auto(cfg)
    if leftover:
        raise EngineConfigError(f"{path.name}: cannot resolve \"auto\" for {leftover}; give literal values")
    return cfg


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return all(_close(x, y) for x, y in zip(a, b))
    return False


def _find_auto(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _find_auto(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


def zero_stage(ds_config: dict[str, Any]) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def check_ds_config(ds_config: dict[str, Any], world: int) -> None:
    """Validate the resolved config for ``world`` processes without a model or a launcher (``--dry_run``).

    The batch arithmetic is checked here; DeepSpeed's own parser then checks the rest as if on one process.
    """
    from deepspeed.runtime.config import DeepSpeedConfig

    micro = ds_config.get("train_micro_batch_size_per_gpu")
    accum = ds_config.get("gradient_accumulation_steps", 1)
    total = ds_config.get("train_batch_size")
    if total is not None and micro is not None and total != micro * accum * world:
        raise EngineConfigError(f"train_batch_size={total} != micro batch {micro} x grad accum {accum} x world {world}")
    single = copy.deepcopy(ds_config)
    if micro is not None:
        single["train_batch_size"] = micro * accum
    try:
        DeepSpeedConfig(single, mpu=None)
    except Exception as err:  # DeepSpeed raises AssertionError/ValueError with its own wording
        raise EngineConfigError(f"DeepSpeed rejected the resolved config: {err}") from err


@contextlib.contextmanager
def zero3_init(ds_config: dict[str, Any]) -> Iterator[None]:
    """While loading models under ZeRO-3, let transformers partition weights at load time (no full copy per rank)."""
    if zero_stage(ds_config) != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    keep_alive = HfDeepSpeedConfig(ds_config)  # transformers reads it through a weak reference
    try:
        yield
    finally:
        del keep_alive


# ----------------------------------------------------------------------------------------------------------
# Engines
# ----------------------------------------------------------------------------------------------------------

def initialize(model: nn.Module, ds_config: dict[str, Any],
               scheduler_fn: Optional[Callable[[torch.optim.Optimizer], Any]] = None) -> Any:
    """Wrap ``model`` in a DeepSpeed engine that optimises only its trainable parameters."""
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise EngineConfigError("model has no trainable parameters")
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=copy.deepcopy(ds_config),
                                           lr_scheduler=scheduler_fn)
    return engine


def initialize_inference(model: nn.Module, ds_config: dict[str, Any]) -> nn.Module:
    """A frozen model (reward/cost scorer) for rollouts: ZeRO-3 partitions it, other stages keep a replica."""
    model.requires_grad_(False)
    precision_dtype = torch.bfloat16 if ds_config.get("bf16", {}).get("enabled") else (
        torch.float16 if ds_config.get("fp16", {}).get("enabled") else None)
    if zero_stage(ds_config) != 3:
        if precision_dtype is not None:
            model.to(precision_dtype)
        return model.to(device()).eval()
    import deepspeed

    cfg = copy.deepcopy(ds_config)
    cfg.pop("optimizer", None)
    cfg.pop("scheduler", None)
    cfg["zero_optimization"] = {k: v for k, v in cfg["zero_optimization"].items() if not k.startswith("offload_opt")}
    engine, *_ = deepspeed.initialize(model=model, config=cfg)
    engine.module.eval()
    return engine.module


@contextlib.contextmanager
def gathered(params: list[nn.Parameter], modifier_rank: Optional[int] = None) -> Iterator[None]:
    """Full tensors for ZeRO-3 partitioned parameters inside the block (no-op for other stages)."""
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def full_state_dict(model: Any, only_trainable: bool = False) -> dict[str, torch.Tensor]:
    """A CPU state dict with full tensors on every rank, gathering ZeRO-3 partitions one parameter at a time.

    ``model`` is a DeepSpeed engine or a plain module. For an engine, ZeRO-3's prefetch cache is released first:
    a parameter still in flight from the last forward cannot be gathered.
    """
    if hasattr(model, "empty_partition_cache") and model.zero_optimization_stage() == 3:
        model.empty_partition_cache()
    module = getattr(model, "module", model)
    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        if only_trainable and not param.requires_grad:
            continue
        with gathered([param]):
            state[name] = param.detach().to("cpu", copy=True)
    if not only_trainable:
        persistent = set(module.state_dict().keys())
        for name, buf in module.named_buffers():
            if buf is not None and name in persistent:
                state[name] = buf.detach().to("cpu", copy=True)
    return state
