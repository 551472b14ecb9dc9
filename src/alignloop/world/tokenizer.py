"""A word-level tokenizer of the world's closed vocabulary.

One token per word, split on spaces and joined with single spaces, so
`decode(encode(text)) == text` for every text the world writes, and a tiny model
spends none of its capacity on spelling. Saved and loaded like any Hugging Face
tokenizer, so the trainers treat it exactly as they would a real model's.

Like GPT-2's, it adds no special tokens when encoding: a trainer appends `</s>`
after a completion itself.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from alignloop.world import lexicon as lx
from alignloop.world.documents import SLOT_CHOICES, TEMPLATES

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["SPECIAL_TOKENS", "build_tokenizer", "world_vocabulary"]

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>",
                  "unk_token": "<unk>"}  # fmt: skip


def world_vocabulary() -> list[str]:
    """Every word the world can write, sorted (special tokens not included)."""
    words = {w for t in TEMPLATES for w in re.sub(r"\{\w+\}", " ", t).split()}
    words.update(w for choices in SLOT_CHOICES.values() for w in choices)
    words.update(lx.RUDE_WORDS, lx.FUNCTION_WORDS)
    return sorted(words)


def build_tokenizer(model_max_length: int = 256) -> PreTrainedTokenizerFast:
    """The world's tokenizer: special tokens first (ids 0-3), then the vocabulary;
    left padding, as batched generation needs."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    vocab = {tok: i for i, tok in enumerate(specials + world_vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # No decoder: the tokenizers library then joins tokens with single spaces.
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        padding_side="left",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        **SPECIAL_TOKENS,
    )
