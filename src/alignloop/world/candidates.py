"""A stand-in policy: varied, imperfect summaries of the kind an SFT model writes.

Used before any model exists (to try labeling, pairs and the reward model) and to tune
the simulated labelers. Each candidate is the document's summary in a random wording
with the reference flaws at about the rates an SFT model trained on the references
shows them, plus the slips of a small model (cut short, a stuttered word).
"""

from __future__ import annotations

import random

from alignloop.schema import Prompt
from alignloop.world.documents import compose_summary, random_wordings

__all__ = ["candidate_summaries"]

# Chance that a candidate has each flaw (drawn independently).
FLAW_RATES = {"too_long": 0.22, "missing_fact": 0.18, "invented_entity": 0.12, "rude": 0.10}
REFERENCE_RATE = 0.15  # the candidate is the reference itself
TRUNCATE_RATE = 0.08
STUTTER_RATE = 0.06


def _one(prompt: Prompt, rng: random.Random) -> str:
    meta = prompt.metadata
    if prompt.reference and rng.random() < REFERENCE_RATE:
        return prompt.reference
    wordings = random_wordings(rng)
    flaws = tuple(f for f, p in FLAW_RATES.items() if rng.random() < p)
    words = set(prompt.prompt.split())
    text = compose_summary(
        meta["slots"], meta["distractor_clauses"], words, rng, wordings=wordings, flaws=flaws
    )
    tokens = text.split()
    if rng.random() < TRUNCATE_RATE and len(tokens) > 3:
        tokens = tokens[: rng.randint(2, len(tokens) - 1)]
    if rng.random() < STUTTER_RATE:
        i = rng.randrange(len(tokens))
        tokens.insert(i, tokens[i])
    return " ".join(tokens)


def candidate_summaries(prompt: Prompt, k: int, rng: random.Random) -> list[str]:
    """`k` summaries of `prompt`, different from each other where the document allows."""
    out: list[str] = []
    for _ in range(20 * k):
        text = _one(prompt, rng)
        if text not in out:
            out.append(text)
        if len(out) == k:
            return out
    while len(out) < k:  # a document with few distinct summaries: repeats are allowed
        out.append(_one(prompt, rng))
    return out
