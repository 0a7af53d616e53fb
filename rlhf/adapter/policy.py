"""The run format every trainer writes and ``evaluate.py`` reads: ``RUN/policy/``.

``policy/`` holds the SVD-LoRA adapter (``adapter_model.safetensors`` + ``adapter_config.json``), the policy
tokenizer, and ``run.json``: the trainer, the base model, the objectives (name, score model, kind), the training
preference (a fixed lambda marks a DPS / Rewarded-Soups baseline run) and any extra evaluation scorers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from rlhf.adapter.svd_lora import AdapterFileError, read_adapter_config
from rlhf.core.config import to_dict

RUN_INFO = "run.json"


def write_run_info(path: Path, *, trainer: str, base_model: str, objectives: Sequence[Any], preference: Any,
                   eval_scorers: dict[str, str], step: int, prompts_path: Optional[str] = None,
                   prompt_template: Optional[str] = None) -> None:
    """``prompt_template``: the plain layout the run trained with (used when the tokenizer has no chat template), so
    that evaluation and serving render prompts as training did."""
    info = {"trainer": trainer, "base_model": base_model, "prompts_path": prompts_path,
            "prompt_template": prompt_template,
            "objectives": [to_dict(o) for o in objectives],
            "preference": to_dict(preference), "eval_scorers": dict(eval_scorers), "step": step}
    (Path(path) / RUN_INFO).write_text(json.dumps(info, indent=2))


@dataclass(frozen=True)
class RunInfo:
    path: Path                       # RUN/policy
    trainer: str
    base_model: str
    objectives: list[dict[str, str]]
    fixed_preference: Optional[list[float]]
    eval_scorers: dict[str, str]
    prompt_template: Optional[str] = None  # the layout it trained with (runs written before it was recorded: None)

    @property
    def objective_names(self) -> list[str]:
        return [o["name"] for o in self.objectives]


def read_run(run: str | Path) -> RunInfo:
    """Accept ``RUN`` or ``RUN/policy``; refuse a directory without an adapter with a clear message."""
    run = Path(run)
    policy = run / "policy" if (run / "policy").is_dir() else run
    missing = [f for f in ("adapter_model.safetensors", "adapter_config.json", RUN_INFO) if not (policy / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{run} is not a finished run: {policy} lacks {missing}. Pass the output_dir of a "
                                f"train_ppo/train_dpo/train_sft run that has completed")
    read_adapter_config(policy)  # both adapter files whole: refused here, before any model loads
    try:
        info = json.loads((policy / RUN_INFO).read_text())
    except ValueError as err:
        raise AdapterFileError(f"{policy / RUN_INFO} is not valid JSON ({err}); restore it from a checkpoint's "
                               f"policy/") from None
    fixed = _fixed_preference(info.get("preference"))
    return RunInfo(policy, info["trainer"], info["base_model"], info["objectives"], fixed, info.get("eval_scorers", {}),
                   info.get("prompt_template"))


def protected(path: str | Path) -> Optional[str]:
    """Why nothing may be written into ``path``, or None: it is (inside) a checkpoint, which the trainer prunes, or a
    run's ``policy/``, which consumers load as a whole."""
    p = Path(path).resolve()
    for d in (p, *p.parents):
        if d.parent.name == "checkpoints" and (d.name.startswith("step_") or d.name.startswith(".tmp-step_")):
            return f"{d} is a checkpoint (the trainer deletes old checkpoints, and what is written there with them)"
        if (d / "trainer_state.json").is_file() or (d / "manifest.json").is_file():
            return f"{d} is a checkpoint"
        if (d / RUN_INFO).is_file() and (d / "adapter_model.safetensors").is_file():
            return f"{d} is a saved policy (evaluate, export and serve load it as a whole)"
    return None


def outputs_beside(run: str | Path, name: str) -> Path:
    """Where a command's default output for ``run`` goes, never inside what it read: RUN/<name> for a run,
    RUN/<name>/step_N for a checkpoint RUN/checkpoints/step_N (or its policy/)."""
    p = Path(run)
    if p.name == "policy":
        p = p.parent
    if p.parent.name == "checkpoints":
        return p.parent.parent / name / p.name
    return p / name


def _fixed_preference(saved: Any) -> Optional[list[float]]:
    """The fixed lambda of a run's preference block (a DPS / Rewarded-Soups baseline), or None for a run that sampled
    lambda. Runs written before the plug-in registry recorded ``{mode: fixed, fixed: [...]}``; both are read."""
    if not isinstance(saved, dict):
        return None
    value = saved.get("value") if saved.get("name") == "fixed" else saved.get("fixed") if saved.get("mode") == "fixed" \
        else None
    return [float(x) for x in value] if value else None


def load_run_model(run: str | Path, dtype: Any = None) -> tuple[Any, Any, RunInfo]:
    """(the run's base model with its adapter, in eval mode on the CPU; its tokenizer, with a pad token and checked
    against the model; its RunInfo). ``dtype``: the weights' dtype (None: float32). evaluate.py, export and the
    server all load a run through here."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rlhf.adapter.svd_lora import load_adapter
    from rlhf.data.chat import check_tokenizer_fits, ensure_pad_token

    info = read_run(run)
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    ensure_pad_token(tokenizer)
    check_tokenizer_fits(tokenizer, AutoConfig.from_pretrained(info.base_model), f"base model {info.base_model!r}")
    model = AutoModelForCausalLM.from_pretrained(info.base_model, dtype=dtype or torch.float32).eval()
    load_adapter(model, info.path, expected_pref_dim=len(info.objectives))
    return model, tokenizer, info


def base_fingerprint(model: Any) -> str:
    """``svd_lora.base_fingerprint`` of an engine's (or module's) base weights, gathering ZeRO-3 partitions.
    Collective under ZeRO-3: every rank calls it."""
    from rlhf.adapter.svd_lora import base_fingerprint as fingerprint
    from rlhf.runtime import engine

    if hasattr(model, "empty_partition_cache") and model.zero_optimization_stage() == 3:
        model.empty_partition_cache()
    return fingerprint(getattr(model, "module", model), gather=engine.gathered)


def adapter_writer(model_engine: Any, tokenizer: Any, *, step: int, fingerprint: str, run_info: dict[str, Any]
                   ) -> Callable[[Path], None]:
    """``write(dir)``: the adapter, tokenizer and run.json as evaluate.py reads them (every Panacea trainer's policy
    format). Gathers the adapter now (collective under ZeRO-3); ``write`` runs on rank 0.
    ``fingerprint``: ``base_fingerprint`` of the frozen base, taken once per run (W0 never changes); ``run_info``:
    ``write_run_info``'s fields (trainer, base model, objectives, preference, extra scorers)."""
    from rlhf.adapter.svd_lora import save_adapter
    from rlhf.runtime import engine

    state = engine.full_state_dict(model_engine, only_trainable=True)

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        save_adapter(model_engine.module, tmp, state_dict=state, fingerprint=fingerprint)
        tokenizer.save_pretrained(tmp)
        write_run_info(tmp, step=step, **run_info)

    return write
