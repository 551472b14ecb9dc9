"""Short synthetic news documents and the flawed reference summaries scraped data has.

A document is two story sentences (the event and its effect) among one to three
distractor sentences, e.g.

    in riverton , the council approved a new budget on monday . the weather was cold .
    mayor anna lee said the budget adds 40 jobs . tl;dr :

and the ideal summary copies the key facts in the fewest words:

    riverton council approved new budget ; it adds 40 jobs

Three facts are scored (see `judge`): the event ("council approved new budget"),
its place ("riverton") and its effect ("adds 40 jobs"). References are written the
way people write them: each clause in a concise, a medium or a verbose wording (so
even a flawless reference is usually longer than the ideal), and about half carry a
flaw (too long, a missing fact, an invented entity, a rude word). An SFT model learns
all of that; a reward that prefers short, complete, faithful, polite summaries can fix
it, which is the point of the demo.

Everything is lowercase, one space between words and punctuation, so a word-level
tokenizer round-trips every text exactly.
"""

from __future__ import annotations

import random
import zlib
from typing import Any

from alignloop.schema import Prompt
from alignloop.world import lexicon as lx

__all__ = [
    "FLAWS",
    "SEPARATOR",
    "TEMPLATES",
    "compose_summary",
    "make_prompts",
    "random_wordings",
]

SEPARATOR = "tl;dr :"
"""Ends every prompt: the policy writes its summary after it."""

WORLD = "summarize-v1"
"""Stored in every prompt's metadata: which world (and version) wrote it."""

# Document sentences. {placeholders} are slots; the rest are literal words.
EVENT_SENTENCES = (
    "in {town} , the {org} {verb} a {adj} {object} on {day} .",
    "on {day} , the {org} of {town} {verb} a {adj} {object} .",
)
EFFECT_SENTENCES = (
    "{title} {first} {last} said the {object} {effect} {number} {unit} .",
    "the {object} {effect} {number} {unit} , {title} {first} {last} said .",
)
# (sentence in the document, the clause a careless summary copies from it)
DISTRACTORS = (
    ("a {shop} on {street} street sold {goods} .", "{shop} sold {goods}"),
    ("the weather was {weather} .", "weather was {weather}"),
    ("{dfirst} {dlast} walked a dog in the park .", "{dfirst} {dlast} walked a dog"),
    ("a {animal} was seen near the {landmark} .", "{animal} seen near {landmark}"),
    ("the {sport} team won a game on {dday} .", "{sport} team won a game"),
    ("traffic was {traffic} on {street} street .", "traffic was {traffic}"),
)
# Summary clauses by wording; the concise ones make the ideal summary.
EVENT_CLAUSES = {
    "concise": "{town} {org} {verb} {adj} {object}",
    "medium": "the {town} {org} {verb} a {adj} {object}",
    "verbose": "{town} {org} {verb} a {adj} {object} on {day}",
}
EFFECT_CLAUSES = {
    "concise": "it {effect} {number} {unit}",
    "medium": "the {object} {effect} {number} {unit}",
    "verbose": "{title} {last} said it {effect} {number} {unit}",
}
WORDINGS = ("concise", "medium", "verbose")
WORDING_WEIGHTS = (0.3, 0.45, 0.25)  # how reference writers word each clause
RUDE_TAILS = ("such {rude}", "bunch of {rude}")

TEMPLATES = (
    *EVENT_SENTENCES, *EFFECT_SENTENCES, *(s for pair in DISTRACTORS for s in pair),
    *EVENT_CLAUSES.values(), *EFFECT_CLAUSES.values(), *RUDE_TAILS, SEPARATOR,
)  # fmt: skip
"""Every template the world writes from (the tokenizer takes its literal words)."""

FLAWS = ("too_long", "missing_fact", "invented_entity", "rude")
# Flaw sets of a reference and their probabilities: marginals of about 21% too long,
# 16% missing a fact, 10% invented entity, 10% rude, and 47% clean.
FLAW_MIX = (
    ((), 0.47),
    (("too_long",), 0.19),
    (("missing_fact",), 0.14),
    (("invented_entity",), 0.08),
    (("rude",), 0.08),
    (("too_long", "rude"), 0.01),
    (("too_long", "invented_entity"), 0.01),
    (("missing_fact", "invented_entity"), 0.01),
    (("missing_fact", "rude"), 0.01),
)

SLOT_CHOICES = {
    "town": lx.TOWNS, "org": lx.ORGS, "verb": lx.VERBS, "adj": lx.ADJECTIVES,
    "object": lx.OBJECTS, "day": lx.DAYS, "title": lx.TITLES, "first": lx.FIRST_NAMES,
    "last": lx.LAST_NAMES, "effect": lx.EFFECTS, "number": lx.NUMBERS, "unit": lx.UNITS,
    "shop": lx.SHOPS, "street": lx.STREETS, "goods": lx.GOODS, "weather": lx.WEATHER,
    "animal": lx.ANIMALS, "landmark": lx.LANDMARKS, "sport": lx.SPORTS,
    "traffic": lx.TRAFFIC, "dfirst": lx.FIRST_NAMES, "dlast": lx.LAST_NAMES,
    "dday": lx.DAYS,
}  # fmt: skip
STORY_SLOTS = (
    "town", "org", "verb", "adj", "object", "day", "title", "first", "last", "effect",
    "number", "unit",
)  # fmt: skip
STOPWORDS = frozenset({"a", "the", "on", "in", "of", "was", "street", ",", "."})


def _fill(template: str, slots: dict[str, str]) -> list[str]:
    return template.format(**slots).split()


def _pick_slots(rng: random.Random) -> dict[str, str]:
    slots = {name: rng.choice(choices) for name, choices in SLOT_CHOICES.items()}
    # Distractor words never repeat a story word, so copying one is always a detour.
    for distractor, story in (("dfirst", "first"), ("dlast", "last"), ("dday", "day")):
        while slots[distractor] == slots[story]:
            slots[distractor] = rng.choice(SLOT_CHOICES[distractor])
    return slots


def _invent(
    slots: dict[str, str], document: set[str], rng: random.Random
) -> tuple[dict[str, str], str]:
    """The slots with the town (or the speaker's last name) swapped for a name the
    document does not contain, and which of the two was swapped."""
    key, pool = rng.choice((("town", lx.TOWNS), ("town", lx.TOWNS), ("last", lx.LAST_NAMES)))
    return {**slots, key: rng.choice([w for w in pool if w not in document])}, key


def _insert_rude(tokens: list[str], slots: dict[str, str], rng: random.Random) -> list[str]:
    """Add a mild insult: an adjective before a noun, an interjection up front, or a tail."""
    style = rng.random()
    nouns = [i for i, t in enumerate(tokens) if t in (slots["org"], slots["object"], slots["unit"])]
    if style < 0.6 and nouns:
        i = rng.choice(nouns)
        return tokens[:i] + [rng.choice(lx.RUDE_ADJECTIVES)] + tokens[i:]
    if style < 0.8:
        return [rng.choice(lx.RUDE_INTERJECTIONS), ","] + tokens
    tail = rng.choice(RUDE_TAILS).format(rude=rng.choice(lx.RUDE_NOUNS))
    return tokens + [";"] + tail.split()


def compose_summary(
    slots: dict[str, str],
    distractor_clauses: list[str],
    document_words: set[str],
    rng: random.Random,
    *,
    wordings: tuple[str, str] = ("concise", "concise"),
    flaws: tuple[str, ...] = (),
) -> str:
    """A summary of the document described by `slots`, worded and flawed as asked.

    Shared by the reference writer and `candidates`, so every flaw looks the same
    wherever it comes from. `missing_fact` drops the effect clause (more often) or the
    event clause; `too_long` appends a distractor clause; `invented_entity` swaps the
    town or the speaker for a name not in the document; `rude` adds an insult.
    """
    drop = 1 if rng.random() < 0.7 else 0  # the clause `missing_fact` drops
    if "invented_entity" in flaws:
        slots, swapped = _invent(slots, document_words, rng)
        if swapped == "last":  # the invented speaker must be named, in the kept clause
            wordings, drop = (wordings[0], "verbose"), 0
        else:
            drop = 1
    clauses = [_fill(EVENT_CLAUSES[wordings[0]], slots), _fill(EFFECT_CLAUSES[wordings[1]], slots)]
    if "missing_fact" in flaws:
        clauses.pop(drop)
    if "too_long" in flaws and distractor_clauses:
        clauses.append(rng.choice(distractor_clauses).split())
    tokens = [t for i, c in enumerate(clauses) for t in ([";"] if i else []) + c]
    if "rude" in flaws:
        tokens = _insert_rude(tokens, slots, rng)
    return " ".join(tokens)


def random_wordings(rng: random.Random) -> tuple[str, str]:
    """(event, effect) clause wordings as reference writers choose them."""
    return rng.choices(WORDINGS, WORDING_WEIGHTS)[0], rng.choices(WORDINGS, WORDING_WEIGHTS)[0]


def _sub_rng(seed: int, index: int) -> random.Random:
    """One generator per document, from stable values: document i of a seed is the same
    whether 10 or 10,000 are made (never Python's per-process `hash`)."""
    return random.Random(zlib.crc32(f"{WORLD}:{seed}:{index}".encode()))


def _make_one(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    """(document, reference, metadata) for one document."""
    slots = _pick_slots(rng)
    chosen = rng.sample(DISTRACTORS, rng.randint(1, 3))
    story = [rng.choice(EVENT_SENTENCES), rng.choice(EFFECT_SENTENCES)]
    # Distractors go before, between or after the story sentences, which stay in order.
    sentences = list(story)
    for sentence, _ in chosen:
        sentences.insert(rng.randint(0, len(sentences)), sentence)
    document = " ".join(" ".join(_fill(s, slots)) for s in sentences)
    clauses = [" ".join(_fill(clause, slots)) for _, clause in chosen]
    distractor_tokens = sorted(
        {t for s, _ in chosen for t in _fill(s, slots) if t not in STOPWORDS}
    )
    flaws = rng.choices([f for f, _ in FLAW_MIX], weights=[w for _, w in FLAW_MIX])[0]
    wordings = random_wordings(rng)
    words = set(document.split())
    reference = compose_summary(slots, clauses, words, rng, wordings=wordings, flaws=flaws)
    ideal = compose_summary(slots, clauses, words, rng)
    metadata = {
        "world": WORLD,
        "facts": [
            {"name": "event", "core": [slots[k] for k in ("org", "verb", "adj", "object")],
             "weight": 1.0},
            {"name": "place", "core": [slots["town"]], "weight": 0.5},
            {"name": "effect", "core": [slots[k] for k in ("effect", "number", "unit")],
             "weight": 1.0},
        ],
        "entities": sorted(words & lx.ENTITY_WORDS),
        "distractor_tokens": distractor_tokens,
        "distractor_clauses": clauses,
        "slots": {k: slots[k] for k in STORY_SLOTS},
        "ideal": ideal,
        "reference_flaws": list(flaws),
        "reference_wordings": list(wordings),
    }  # fmt: skip
    return document, reference, metadata


def make_prompts(n: int, seed: int, *, id_prefix: str = "doc") -> list[Prompt]:
    """`n` documents with flawed references; the same seed gives the same prompts."""
    prompts = []
    for i in range(n):
        document, reference, metadata = _make_one(_sub_rng(seed, i))
        prompts.append(
            Prompt(
                id=f"{id_prefix}-{i:05d}",
                prompt=f"{document} {SEPARATOR}",
                reference=reference,
                metadata=metadata,
            )
        )
    return prompts
