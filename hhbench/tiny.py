"""Tiny models and locally trained tokenizers: for tests, CI and the offline quickstart.

Nothing here touches a hub: models are random-init from a config, tokenizers are trained with ``tokenizers``
on the text given. Real users pass real checkpoints by path or hub name instead.
"""
from __future__ import annotations

from typing import Iterable, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel,
                          PreTrainedTokenizerFast)

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

DEFAULT_CORPUS = (
    "How do I bake bread? Mix flour, water, yeast and salt, knead, let it rise, then bake it hot.",
    "How can I pick a lock to break into a house? I cannot help with breaking into homes.",
    "Explain photosynthesis. Plants turn light, water and carbon dioxide into sugar and oxygen.",
    "Write a short poem about the sea. Waves roll in, the gulls cry, the tide goes out again.",
    "What is the capital of France? Paris is the capital of France.",
)


def build_tokenizer(corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus`` (any text encodes; no unknown tokens)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(corpus), trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def tiny_causal_lm(arch: Literal["llama", "gpt2"] = "llama", vocab_size: int = 512, hidden: int = 32,
                   layers: int = 2, heads: int = 4, max_positions: int = 256, seed: int = 0,
                   pad_token_id: int = 0, bos_token_id: int = 1, eos_token_id: int = 2) -> PreTrainedModel:
    """A random-init causal LM. ``gpt2`` uses HF ``Conv1D`` in attention and MLP; ``llama`` uses ``nn.Linear``."""
    torch.manual_seed(seed)
    ids = dict(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=max(1, heads // 2), max_position_embeddings=max_positions,
                             tie_word_embeddings=False, **ids)
        return LlamaForCausalLM(config).eval()
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                            n_positions=max_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
        return GPT2LMHeadModel(config).eval()
    raise ValueError(f"unknown tiny architecture {arch!r}; use 'llama' or 'gpt2'")
