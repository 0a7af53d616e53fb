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
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reward_models.score_model import write_dimension
    from tests.helpers import write_pku_pairs, write_tiny_base

    root = tmp_path_factory.mktemp("world")
    base = write_tiny_base(root / "base")
    tok = AutoTokenizer.from_pretrained(base)
    for name, kind, seed in (("rm", "reward", 1), ("cm", "cost", 2)):
        torch.manual_seed(seed)
        m = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
        m.config.pad_token_id = tok.pad_token_id
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        write_dimension(root / name, name=name, kind=kind)
    write_pku_pairs(root / "prompts.jsonl", 64, seed=3)
    return root
