"""Conversations: the one place where a prompt, a text or a list of messages, becomes
the text a model reads. Every stage (SFT, generation, the reward model, PPO,
evaluation, the demo) goes through these functions; none formats text by itself.

    render_prompt(tokenizer, prompt)             the text a policy continues
    render_text(tokenizer, prompt, completion)   prompt + completion, what a reward
                                                 model reads (and SFT learns)
    sft_ids(tokenizer, prompt, target)           SFT: (prompt ids, target ids + EOS)
    completion_ids(tokenizer, prompt, text)      a completion's tokens as the policy
                                                 wrote them (evaluation's KL)
    encode(tokenizer, texts)                     token ids with the special tokens,
                                                 never a second BOS
    set_chat_template(tokenizer, path)           `--chat-template FILE`
    require_template(tokenizer, records, model)  a conversation needs a template

A text prompt is used as it is: no template is applied to it, so text data (the
demo's, HH-RLHF's) is read exactly as before; a user who wants a template on text
prompts writes them as conversations. A conversation goes through the tokenizer's
chat template (`apply_chat_template(..., tokenize=False)`): with
`add_generation_prompt=True` for the policy to continue, and with the completion as
the assistant's turn for SFT targets and reward-model inputs, so the reward model
scores the same formatted text the policy wrote. (Each model renders with its own
tokenizer's template: a reward model trained from the SFT policy has the same one.)

Templates that start with the BOS token's text (Llama's `{{ bos_token }}`), and
prompts a user rendered with `apply_chat_template(tokenize=False)`, already hold a
BOS; `encode` then drops the one the tokenizer adds, so a model never reads
`[BOS, BOS, ...]`. A text prompt that starts with the BOS text of a tokenizer that
adds one gets a warning, once per process.

This module imports no torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from alignloop.schema import Conversation, Message, SchemaError, is_conversation, join_text

__all__ = [
    "completion_ids",
    "encode",
    "is_conversation",
    "prompt_display",
    "render_prompt",
    "render_text",
    "require_template",
    "set_chat_template",
    "sft_ids",
]

PromptLike = str | Conversation | Sequence[Any]  # a text, Messages or {role, content} dicts
_bos_warned = False  # the double-BOS warning is given once per process


def _messages(conversation: Iterable[Any]) -> list[dict[str, str]]:
    """Messages as the plain dicts `apply_chat_template` takes."""
    return [
        {"role": m.role, "content": m.content} if isinstance(m, Message) else dict(m)
        for m in conversation
    ]


def _template(tokenizer, messages: list[dict[str, str]], *, generation: bool) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise SchemaError(
            "a prompt is a conversation, but the tokenizer has no chat template to render "
            "it: pass --chat-template FILE (a Jinja template)"
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation
    )


def _starts_with_bos(tokenizer, text: str) -> bool:
    bos = getattr(tokenizer, "bos_token", None)
    return bool(bos) and text.startswith(bos)


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _warn_bos(tokenizer, text: str) -> None:
    """Once: a text prompt starts with the BOS text of a tokenizer that adds one."""
    global _bos_warned
    if not _bos_warned and _starts_with_bos(tokenizer, text) and _adds_bos(tokenizer):
        _bos_warned = True
        warnings.warn(
            f"a prompt text already starts with the BOS token {tokenizer.bos_token!r} (rendered "
            "with apply_chat_template(tokenize=False)?): it is tokenized without a second "
            "one. Prompts given as lists of messages get the chat template applied here",
            stacklevel=3,
        )


def render_prompt(tokenizer, prompt: PromptLike) -> str:
    """The text a policy continues: a text prompt as it is, a conversation through
    the chat template with the generation prompt (the assistant's turn opened)."""
    if isinstance(prompt, str):
        _warn_bos(tokenizer, prompt)
        return prompt
    return _template(tokenizer, _messages(prompt), generation=True)


def render_text(tokenizer, prompt: PromptLike, completion: str | Conversation) -> str:
    """Prompt and completion as one text: `join_text` for a text prompt; for a
    conversation, the templated conversation with the completion (a text, or a
    comparison's list of messages) as the assistant's turn."""
    if isinstance(prompt, str):
        if not isinstance(completion, str):
            raise SchemaError("a text prompt takes a text completion, not a list of messages")
        _warn_bos(tokenizer, prompt)
        return join_text(prompt, completion)
    turn = (
        [{"role": "assistant", "content": completion}]
        if isinstance(completion, str)
        else _messages(completion)
    )
    return _template(tokenizer, _messages(prompt) + turn, generation=False)


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text with the tokenizer's special tokens, except a second
    BOS: a text that already starts with the BOS token's text (a rendered chat
    template) keeps only its own (issue 15: `[1, 1, 31, ...]` otherwise)."""
    rows = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return rows
    return [
        r[1:] if len(r) > 1 and r[0] == r[1] == bos and _starts_with_bos(tokenizer, t) else r
        for r, t in zip(rows, texts, strict=True)
    ]


def sft_ids(tokenizer, prompt: PromptLike, target: str) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) of an SFT example, tokenized the way the policy will
    read and write them. A text prompt: its ids with the special tokens, then the
    target as its continuation (`continuation_ids`) and EOS. A conversation: the
    templated conversation's ids after those of the generation prompt (the
    assistant's turn as the template writes it), up to and with its first EOS; an
    EOS is appended when the template ends the turn otherwise. The prompt never ends
    with the EOS a tokenizer may append itself (as `models.tokenize_prompts`)."""
    from alignloop.models import continuation_ids, tokenizer_appends_eos

    eos = tokenizer.eos_token_id
    own_eos = tokenizer_appends_eos(tokenizer)

    def drop(ids: list[int]) -> list[int]:  # a prompt never ends with the tokenizer's EOS
        return ids[:-1] if own_eos and ids and ids[-1] == eos else ids

    if isinstance(prompt, str):
        prompt_ids = drop(encode(tokenizer, [render_prompt(tokenizer, prompt)])[0])
        return prompt_ids, [*continuation_ids(tokenizer, prompt, target), eos]
    prompt_text, full = render_prompt(tokenizer, prompt), render_text(tokenizer, prompt, target)
    prompt_ids, full_ids = encode(tokenizer, [prompt_text, full])
    prompt_ids = drop(prompt_ids)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        target_ids = full_ids[len(prompt_ids) :]
    elif full.startswith(prompt_text):  # the tokenizer merged across the boundary
        target_ids = tokenizer(full[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    else:
        raise SchemaError(
            "the chat template does not write a conversation as its generation prompt "
            "followed by the assistant's turn, so the target cannot be told from the prompt"
        )
    if eos in target_ids:
        return prompt_ids, target_ids[: target_ids.index(eos) + 1]
    return prompt_ids, [*target_ids, eos]


def completion_ids(tokenizer, prompt: PromptLike, completion: str) -> list[int]:
    """The tokens of `completion` as a policy writes them after `render_prompt`, no
    EOS: a text prompt's continuation (`models.continuation_ids`), a conversation's
    assistant turn as the template writes it (`sft_ids`' target without its EOS)."""
    if isinstance(prompt, str):
        from alignloop.models import continuation_ids

        return continuation_ids(tokenizer, prompt, completion)
    return sft_ids(tokenizer, prompt, completion)[1][:-1]


def prompt_display(prompt: PromptLike) -> str:
    """A prompt as plain text for people (reports, logs): a conversation as its
    turns, "role: content", one paragraph each."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in _messages(prompt))


def set_chat_template(tokenizer, path: str | Path) -> None:
    """`--chat-template FILE`: the Jinja template in FILE becomes the tokenizer's (set
    or replaced); it is saved with the tokenizer, so a tuned model keeps it."""
    from alignloop.config import ConfigError

    path = Path(path)
    try:
        template = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--chat-template {path}: cannot read it: {e.strerror}") from e
    if not template.strip():
        raise ConfigError(f"--chat-template {path}: the file is empty")
    tokenizer.chat_template = template


def require_template(tokenizer, records: Iterable[Any], model: str) -> None:
    """SchemaError naming the first conversational record's file and line when the
    tokenizer of `model` has no chat template to render it; call before training.
    `records` are prompts or comparisons (anything with `.prompt` and `.where`)."""
    if getattr(tokenizer, "chat_template", None) is not None:
        return
    first = next((r for r in records if is_conversation(r.prompt)), None)
    if first is not None:
        raise SchemaError(
            f"{first.where}: the prompt is a conversation, but the tokenizer of {model} has "
            "no chat template to render it: pass --chat-template FILE (a Jinja template)"
        )
