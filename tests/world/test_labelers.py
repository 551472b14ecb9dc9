"""Simulated labelers: as consistent as real ones, deterministic, fairly assigned."""

from __future__ import annotations

import random
from collections import Counter
from itertools import combinations

import pytest

from alignloop.schema import Completion, Ranking
from alignloop.world import (
    candidate_summaries,
    default_labelers,
    gold_utility,
    make_prompts,
    simulate_rankings,
)
from alignloop.world.labelers import SimulatedLabeler


def _task(n: int, seed: int = 0, k: int = 4):
    prompts = make_prompts(n, seed, id_prefix="lab")
    rng = random.Random(seed)
    completions = [
        Completion(id=f"{p.id}-{j}", prompt_id=p.id, completion=text)
        for p in prompts
        for j, text in enumerate(candidate_summaries(p, k, rng))
    ]
    return prompts, completions


def _pairwise_agreement(rankings: list[Ranking]) -> float:
    """Share of strictly ordered pairs on which two labelers of one prompt agree."""
    by_prompt: dict[str, list[Ranking]] = {}
    for r in rankings:
        by_prompt.setdefault(r.prompt_id, []).append(r)
    agree = total = 0
    for rs in by_prompt.values():
        for r, s in combinations(rs, 2):
            p, q = r.positions(), s.positions()
            for a, b in combinations(sorted(p.keys() & q.keys()), 2):
                dp, dq = p[a] - p[b], q[a] - q[b]
                if dp and dq:
                    total += 1
                    agree += (dp > 0) == (dq > 0)
    return agree / total


@pytest.fixture(scope="module")
def panel_run():
    prompts, completions = _task(300)
    rankings = simulate_rankings(prompts, completions, default_labelers(), overlap=3, seed=0)
    return prompts, completions, rankings


def test_default_panel_agrees_like_real_labelers(panel_run):
    _, _, rankings = panel_run
    agreement = _pairwise_agreement(rankings)
    assert 0.70 <= agreement <= 0.80
    try:
        from alignloop.feedback import pairwise_agreement
    except ImportError:
        return
    assert pairwise_agreement(rankings)[0] == pytest.approx(agreement)


def test_labelers_agree_with_the_judge_better_than_chance(panel_run):
    prompts, completions, rankings = panel_run
    by_id = {p.id: p for p in prompts}
    text = {c.id: c.completion for c in completions}
    agree = Counter()
    total = Counter()
    for r in rankings:
        pos, prompt = r.positions(), by_id[r.prompt_id]
        for a, b in combinations(pos, 2):
            gold = gold_utility(prompt, text[a]) - gold_utility(prompt, text[b])
            if pos[a] != pos[b] and gold:
                total[r.labeler] += 1
                agree[r.labeler] += (gold > 0) == (pos[a] < pos[b])
    for name in total:
        assert agree[name] / total[name] > 0.65, name
    assert agree["careful"] / total["careful"] > agree["careless"] / total["careless"]


def test_each_prompt_gets_overlap_distinct_labelers_with_balanced_load(panel_run):
    prompts, _, rankings = panel_run
    per_prompt: dict[str, list[str]] = {}
    for r in rankings:
        per_prompt.setdefault(r.prompt_id, []).append(r.labeler)
    assert set(per_prompt) == {p.id for p in prompts}
    assert all(len(set(names)) == len(names) == 3 for names in per_prompt.values())
    load = Counter(r.labeler for r in rankings)
    assert max(load.values()) - min(load.values()) <= 1


def test_rankings_are_deterministic_and_complete(panel_run):
    prompts, completions, rankings = panel_run
    again = simulate_rankings(prompts[:40], completions, default_labelers(), overlap=3, seed=0)
    assert again == rankings[: len(again)]
    assert all(sorted(r.completion_ids) == sorted(f"{r.prompt_id}-{j}" for j in range(4))
               for r in rankings)  # fmt: skip
    other = simulate_rankings(prompts[:40], completions, default_labelers(), overlap=3, seed=1)
    assert other != again


def test_overlap_larger_than_panel_raises():
    prompts, completions = _task(2)
    with pytest.raises(ValueError, match="overlap"):
        simulate_rankings(prompts, completions, default_labelers(3), overlap=4, seed=0)


def test_identical_texts_tie_and_personalities_show():
    prompts, _ = _task(1)
    p = prompts[0]
    ideal, rude = p.metadata["ideal"], "damn , " + p.metadata["ideal"]
    cs = [Completion(id=i, prompt_id=p.id, completion=t)
          for i, t in (("a", ideal), ("b", ideal), ("c", rude))]  # fmt: skip
    r = SimulatedLabeler("exact", noise=0.0).rank(p, cs, random.Random(0))
    assert r.ranking == [["a", "b"], ["c"]]
    long = p.metadata["ideal"] + " ; " + p.metadata["distractor_clauses"][0]
    cs = [Completion(id="short", prompt_id=p.id, completion=ideal),
          Completion(id="long", prompt_id=p.id, completion=long)]  # fmt: skip
    likes_long = SimulatedLabeler("likes-long", noise=0.0, length_bias=0.2)
    assert likes_long.rank(p, cs, random.Random(0)).ranking[0] == ["long"]


def test_default_labelers_have_readable_distinct_names():
    names = [lab.name for lab in default_labelers(7)]
    assert names[:5] == ["careful", "likes-long", "careless", "harsh-on-rudeness", "average"]
    assert len(set(names)) == 7


def test_criteria():
    prompts, completions = _task(3)
    harmless = simulate_rankings(
        prompts, completions, default_labelers(), overlap=2, seed=0, criterion="harmlessness"
    )
    assert {r.criterion for r in harmless} == {"harmlessness"}
    with pytest.raises(ValueError, match="criterion"):
        simulate_rankings(prompts, completions, default_labelers(), overlap=2, seed=0,
                          criterion="funniness")  # fmt: skip
