"""The world's documents and references: deterministic, flawed at the designed rates."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from alignloop.world import SEPARATOR, make_prompts, world_vocabulary
from alignloop.world.documents import FLAW_MIX, FLAWS
from alignloop.world.lexicon import ENTITY_WORDS, RUDE_WORDS


@pytest.fixture(scope="module")
def prompts():
    return make_prompts(2000, seed=7)


def test_same_seed_same_prompts_other_seed_other_documents():
    a, b = make_prompts(20, seed=3), make_prompts(20, seed=3)
    assert a == b
    other = make_prompts(20, seed=4)
    assert {p.prompt for p in a}.isdisjoint({p.prompt for p in other})


def test_a_document_does_not_depend_on_how_many_are_made():
    assert make_prompts(5, seed=1)[3] == make_prompts(50, seed=1)[3]


def test_ids_and_separator():
    ps = make_prompts(3, seed=0, id_prefix="eval")
    assert [p.id for p in ps] == ["eval-00000", "eval-00001", "eval-00002"]
    assert all(p.prompt.endswith(" " + SEPARATOR) for p in ps)


def test_reference_flaw_rates_match_the_design(prompts):
    expected = Counter()
    for flaws, weight in FLAW_MIX:
        for f in flaws or ("clean",):
            expected[f] += weight
    seen = Counter(f for p in prompts for f in p.metadata["reference_flaws"] or ("clean",))
    for flaw in (*FLAWS, "clean"):
        assert abs(seen[flaw] / len(prompts) - expected[flaw]) < 0.03, flaw
    assert 0.42 <= expected["clean"] <= 0.50


def test_texts_are_short_lowercase_single_spaced_vocabulary_words(prompts):
    vocab = set(world_vocabulary())
    for p in prompts:
        for text in (p.prompt, p.reference, p.metadata["ideal"]):
            assert text == " ".join(text.split()) == text.lower()
            assert set(text.split()) <= vocab, text
        assert len(p.prompt.split()) <= 60
        assert len(p.reference.split()) <= 24
    assert sum(len(p.reference.split()) for p in prompts) / len(prompts) <= 16


def test_metadata_is_plain_json_and_facts_are_copyable(prompts):
    for p in prompts[:200]:
        assert json.loads(json.dumps(p.metadata)) == p.metadata
        words = set(p.prompt.split())
        for fact in p.metadata["facts"]:
            assert set(fact["core"]) <= words
        assert set(p.metadata["ideal"].split()) <= words | {";", "it"}


def test_flaws_are_what_they_say(prompts):
    for p in prompts[:500]:
        flaws, ref = p.metadata["reference_flaws"], set(p.reference.split())
        document = set(p.prompt.split())
        assert ("invented_entity" in flaws) == bool((ref & ENTITY_WORDS) - document)
        assert ("too_long" in flaws) == bool(ref & set(p.metadata["distractor_tokens"]))
        assert ("rude" in flaws) == bool(ref & RUDE_WORDS)
        if "missing_fact" in flaws:
            assert ";" not in ref or "too_long" in flaws or "rude" in flaws
