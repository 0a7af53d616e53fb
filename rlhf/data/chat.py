"""Dataset loading and prompt formatting shared by every trainer and scorer.

A dataset is a hub name (``PKU-Alignment/PKU-SafeRLHF``) or a local json/jsonl/parquet/csv file, loaded through
``datasets``. Prompts are formatted with the tokenizer's chat template when it has one, otherwise with a plain
template, so that the policy, the reward models and evaluation all see the same conversation layout.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from rlhf.core.config import ConfigError
from rlhf.data.datasets import DataError

DEFAULT_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"


# ----------------------------------------------------------------------------------------------------------
# Conversations: a prompt is a string (one user turn) or a chat, a list of {role, content} messages
# ----------------------------------------------------------------------------------------------------------

ROLES = ("system", "user", "assistant")
Prompt = Union[str, Sequence[Mapping[str, str]]]


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A prompt as chat messages; the response the policy writes is the next assistant turn, so the chat must end
    with a user turn (an optional system message may open it)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = [dict(m) for m in prompt]
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"chat message {i} must be {{role: system|user|assistant, content: str}}, got {m!r}")
        if m["role"] == "system" and i != 0:
            raise DataError(f"chat message {i}: a system message may only open the conversation")
    if not messages or messages[-1]["role"] != "user":
        raise DataError(f"a chat prompt must end with a user turn (the response is the next assistant turn); its "
                        f"last message is {messages[-1]['role'] if messages else 'missing'}")
    return messages


def render_plain(messages: Sequence[Mapping[str, str]], template: str) -> str:
    """A chat without a chat template: ``template`` (``{prompt}`` = the conversation so far) in safe-rlhf's layout,
    earlier turns joined as ``u1 ASSISTANT: a1 USER: u2`` and a system message first as ``SYSTEM: s``."""
    parts, system = [], ""
    for m in messages:
        if m["role"] == "system":
            system = f"SYSTEM: {m['content']} "
        elif m["role"] == "user":
            parts.append(m["content"] if not parts else f"USER: {m['content']}")
        else:
            parts.append(f"ASSISTANT: {m['content']}")
    return system + template.format(prompt=" ".join(parts))


class ChatTemplateError(DataError):
    """A tokenizer's chat template refused a conversation (e.g. "roles must alternate"); names the tokenizer."""


def _apply_template(tokenizer: Any, messages: list[dict[str, str]], **kw: Any) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kw)
    except Exception as err:  # jinja2's TemplateError, or the template's own raise_exception
        raise ChatTemplateError(f"the chat template of tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} refused "
                                f"the conversation ({type(err).__name__}: {err})") from None


def format_prompt(tokenizer: Any, prompt: Prompt, template: str = DEFAULT_TEMPLATE) -> str:
    """The text the policy continues: its chat template (with the generation prompt) if it has one."""
    messages = as_messages(prompt)
    if getattr(tokenizer, "chat_template", None):
        return _apply_template(tokenizer, messages, add_generation_prompt=True)
    return render_plain(messages, template)


def format_conversation(tokenizer: Any, prompt: Prompt, response: str, template: str = DEFAULT_TEMPLATE) -> str:
    """Prompt and response as one text, the layout score models are trained and queried on."""
    messages = as_messages(prompt)
    if getattr(tokenizer, "chat_template", None):
        return _apply_template(tokenizer, messages + [{"role": "assistant", "content": response}])
    return render_plain(messages, template) + " " + response


def encode_example(tokenizer: Any, prompt: Prompt, response: str, template: str = DEFAULT_TEMPLATE
                   ) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of one training sequence, the response as the policy will be asked to write it:
    after the generation prompt, ended by EOS. With a chat template the response is its assistant turn (the
    template's own end-of-turn tokens, then EOS if the template does not end with it)."""
    if not isinstance(response, str):  # a number or a mapping would train on its repr without a word said
        raise DataError(f"a response must be a string, got a {type(response).__name__}: {str(response)[:60]!r}")
    p_text = format_prompt(tokenizer, prompt, template)
    p_ids = tokenizer(p_text, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    if getattr(tokenizer, "chat_template", None):
        full = format_conversation(tokenizer, prompt, response, template)
        r_text = full[len(p_text):] if full.startswith(p_text) else " " + response
        r_ids = tokenizer(r_text.rstrip("\n"), add_special_tokens=False)["input_ids"]
        return p_ids, r_ids + ([eos] if not r_ids or r_ids[-1] != eos else [])
    return p_ids, tokenizer(" " + response, add_special_tokens=False)["input_ids"] + [eos]


def split_chat(value: Any) -> tuple[Optional[Prompt], Any]:
    """A response column that holds a whole chat (UltraFeedback style: the prompt's turns, then the assistant's
    answer) -> (the prompt turns, the answer text); any other value -> (None, value)."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[-1], Mapping) and \
            value[-1].get("role") == "assistant":
        return [dict(m) for m in value[:-1]], value[-1].get("content")
    return None, value


def fit_prompt(tokenizer: Any, prompt: Prompt, max_tokens: int, template: str = DEFAULT_TEMPLATE
               ) -> tuple[Prompt, bool]:
    """The prompt as a conversation that the policy's rendering of fits ``max_tokens`` tokens, keeping its end: the
    oldest turns go first (a system message last), then the start of the last user turn. The generation prompt
    always survives, and because the result is a conversation, every score model re-renders exactly what the policy
    answered. Returns (prompt, whether it was shortened)."""
    def n_tokens(p: Prompt) -> int:
        return len(tokenizer(format_prompt(tokenizer, p, template), add_special_tokens=True)["input_ids"])

    if n_tokens(prompt) <= max_tokens:
        return prompt, False
    messages = as_messages(prompt)
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    while len(turns) > 1:                                     # drop the oldest turns, never the last user turn
        turns = turns[1:]
        while len(turns) > 1 and turns[0]["role"] != "user":
            turns = turns[1:]
        if n_tokens(system + turns) <= max_tokens:
            return _like(prompt, system + turns), True
    if system and n_tokens(turns) <= max_tokens:
        return _like(prompt, turns), True
    ids = tokenizer(turns[-1]["content"], add_special_tokens=False)["input_ids"]
    lo, hi = 0, len(ids)                                      # the most content tokens (kept from the end) that fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        tail = tokenizer.decode(ids[len(ids) - mid:], skip_special_tokens=True)
        if n_tokens([{"role": "user", "content": tail}]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        raise DataError(f"max_prompt_length {max_tokens} is shorter than the prompt layout itself "
                        f"({n_tokens([{'role': 'user', 'content': ''}])} tokens with an empty user turn): raise it")
    tail = tokenizer.decode(ids[len(ids) - lo:], skip_special_tokens=True)
    return _like(prompt, [{"role": "user", "content": tail}]), True


def _like(original: Prompt, messages: list[dict[str, str]]) -> Prompt:
    """A plain-string prompt stays a string when a single user turn is left."""
    if isinstance(original, str) and len(messages) == 1:
        return messages[0]["content"]
    return messages


def fit_prompts(tokenizer: Any, prompts: Sequence[Prompt], max_tokens: int, template: str, what: str,
                rows: Optional[Sequence[int]] = None) -> list[Prompt]:
    """``fit_prompt`` on every prompt, with one counted warning for those shortened. A prompt the tokenizer's chat
    template refuses (e.g. "roles must alternate") is refused here, naming ``what``, its row (``rows[i]``, the row
    number in the file) and the tokenizer, before any model loads."""
    out, n = [], 0
    for i, p in enumerate(prompts):
        try:
            fitted, cut = fit_prompt(tokenizer, p, max_tokens, template)
        except DataError as err:
            raise DataError(f"{what} row {rows[i] if rows is not None else i}: {err}; fix that row (or the policy "
                            f"tokenizer's template)") from None
        out.append(fitted)
        n += cut
    if n:
        warnings.warn(f"{n} of {len(prompts)} {what} exceed max_prompt_length={max_tokens} tokens: kept their end "
                      f"(oldest turns, then the start of the last user turn, dropped); raise max_prompt_length to "
                      f"keep them whole")
    return out


def render_each(tokenizer: Any, prompts: Sequence[Prompt], template: str, what: str, who: str,
                rows: Optional[Sequence[int]] = None) -> None:
    """Render every prompt (with a placeholder response) the way a score model will read it, refusing the first that
    its tokenizer's chat template rejects, naming ``what``, the row and ``who`` (the config field of the model)."""
    for i, p in enumerate(prompts):
        try:
            format_conversation(tokenizer, p, "ok", template)
        except DataError as err:
            raise DataError(f"{what} row {rows[i] if rows is not None else i}, as {who} reads it: {err}; fix that "
                            f"row (or that tokenizer's template)") from None


def model_positions(model_config: Any) -> Optional[int]:
    """How many positions a model (its config) can read, or None when it does not say."""
    config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def preflight_lengths(model_config: Any, field: str, name: str, need: int, what: str) -> None:
    """Refuse, before any weights load, sequences of ``need`` tokens (``what``: the config fields that add up to it)
    for a model that reads fewer positions: otherwise the first long batch fails mid-run with an IndexError."""
    have = model_positions(model_config)
    if have is not None and need > have:
        raise ConfigError(f"config field '{what}': {need} tokens, but {field} {name!r} reads at most {have} "
                          f"positions (max_position_embeddings); lower it to {have} or less")


def check_tokenizer_fits(tokenizer: Any, model_config: Any, what: str) -> None:
    """Refuse a tokenizer whose ids run past the model's embedding table (an index error deep in the first forward,
    or silently wrong tokens). Reads only the config: runs before any weights load."""
    config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise DataError(f"{what}: its tokenizer has {len(tokenizer)} tokens but the model's embeddings hold "
                        f"{vocab}; pass the tokenizer the model was trained with (or resize the model's embeddings)")


def ensure_pad_token(tokenizer: Any, name: str = "tokenizer") -> None:
    """Give a tokenizer without a pad token one (its EOS), and say so."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise DataError(f"{name} has neither a pad nor an EOS token; add a pad token to it")
        tokenizer.pad_token = tokenizer.eos_token
        warnings.warn(f"{name} had no pad token; using its EOS token {tokenizer.eos_token!r} for padding")


def encode(tokenizer: Any, texts: Sequence[str], max_length: int, what: str = "sequences") -> tuple[dict, int]:
    """Tokenise with left truncation (the end of a response is what an end score reads); count truncations."""
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    n_truncated = sum(n > max_length for n in lengths)
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        batch = tokenizer(list(texts), max_length=max_length, truncation=True, padding=False)
    finally:
        tokenizer.truncation_side = side
    if n_truncated:
        warnings.warn(f"{n_truncated} of {len(texts)} {what} exceed max_length={max_length} tokens and were "
                      f"truncated from the left; raise max_length to keep them whole")
    return dict(batch), n_truncated


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad lists of ids to ``(B, L)`` input_ids and attention_mask."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)       # (B, L)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)            # (B, L)
    for i, seq in enumerate(sequences):
        if side == "right":
            ids[i, :len(seq)] = torch.as_tensor(seq)
            mask[i, :len(seq)] = 1
        else:
            ids[i, length - len(seq):] = torch.as_tensor(seq)
            mask[i, length - len(seq):] = 1
    return ids, mask
