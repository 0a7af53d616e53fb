"""Shared fixtures: tiny random-init models and a locally trained tokenizer. Nothing downloads from a hub."""
import os
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "panacea_torch_extensions"))

import pytest  # noqa: E402
import torch  # noqa: E402

from hhbench.tiny import build_tokenizer, tiny_causal_lm  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(vocab_size=300)


@pytest.fixture(params=["llama", "gpt2"])
def tiny_lm(request):
    """A tiny causal LM of each architecture (Llama: nn.Linear; GPT-2: Conv1D)."""
    return tiny_causal_lm(request.param, vocab_size=300)


@pytest.fixture
def input_ids(tokenizer):
    batch = tokenizer(["How do I bake bread?", "What is the capital of France? Paris"],
                      return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A tiny base model, an (untrained) reward and cost model, and a prompt file, on disk."""
    from hhbench.fixtures import write_world

    return write_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any attempt to load model weights fails the test: the refusal must come before compute."""
    import transformers

    def refuse(*a, **kw):
        raise AssertionError("a model was loaded before the bad input was refused")

    for cls in ("AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoModel"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", refuse)
