"""Simulated labelers: as consistent as real ones, deterministic, fairly assigned."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from itertools import combinations

import pytest

from alignloop.schema import Completion, Ranking
from alignloop.world import (
    CRITERIA,
    NEW_USER,
    candidate_summaries,
    default_labelers,
    disagreement,
    gold_utility,
    make_prompts,
    panel_utility,
    personal_labelers,
    simulate_rankings,
)
from alignloop.world.documents import EFFECT_CLAUSES, EVENT_CLAUSES
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


def test_default_panel_ranks_as_before_the_personal_panel():
    """Golden values from the code before `utility` and the personal panel existed: the
    demo's labelers rank exactly as they did (same draws, same order)."""
    prompts, completions = _task(3)
    rankings = simulate_rankings(prompts, completions, default_labelers(), overlap=3, seed=0)
    got = [(r.prompt_id[-1], r.labeler, ["".join(c[-1] for c in g) for g in r.ranking])
           for r in rankings]  # fmt: skip
    assert got == [
        ("0", "likes-long", ["1", "3", "0", "2"]),
        ("0", "careful", ["1", "0", "3", "2"]),
        ("0", "careless", ["1", "0", "3", "2"]),
        ("1", "average", ["0", "3", "1", "2"]),
        ("1", "harsh-on-rudeness", ["3", "0", "1", "2"]),
        ("1", "careless", ["1", "0", "2", "3"]),
        ("2", "likes-long", ["1", "0", "3", "2"]),
        ("2", "average", ["01", "3", "2"]),
        ("2", "careful", ["1", "0", "3", "2"]),
    ]
    text = completions[5].completion
    perceived = [lab.perceive(prompts[1], text, random.Random(3), "overall")
                 for lab in default_labelers()]  # fmt: skip
    assert perceived == [
        1.248941607657461, 2.2036770095718263, 1.2536770095718262, 1.2536770095718262,
        1.2584124114861914,
    ]  # fmt: skip


_EVERYONE = [*default_labelers(), *personal_labelers(), NEW_USER]


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_utility_is_perception_without_noise(criterion):
    prompts, completions = _task(4)
    by_id = {p.id: p for p in prompts}
    for lab in _EVERYONE:
        for c in completions:
            p, u = by_id[c.prompt_id], lab.utility(by_id[c.prompt_id], c.completion, criterion)
            assert replace(lab, noise=0.0).perceive(p, c.completion, random.Random(1),
                                                    criterion) == u  # fmt: skip
            noise = random.Random(2).gauss(0.0, lab.noise)
            assert lab.perceive(p, c.completion, random.Random(2), criterion) == u + noise
    assert NEW_USER.utility(prompts[0], completions[0].completion) == NEW_USER.utility(
        prompts[0], completions[0].completion, "overall"
    )


def test_a_noiseless_careful_labeler_ranks_by_their_utility():
    prompts, completions = _task(20)
    for lab in personal_labelers():
        exact = replace(lab, noise=0.0, careless_rate=0.0, tie_threshold=0.0)
        for p in prompts:
            group = [c for c in completions if c.prompt_id == p.id]
            ranked = exact.rank(p, group, random.Random(0)).completion_ids
            utilities = [lab.utility(p, c.completion) for c in group]
            by_id = {c.id: u for c, u in zip(group, utilities, strict=True)}
            assert [by_id[i] for i in ranked] == sorted(utilities, reverse=True)


def test_strong_tastes_on_hand_made_summaries():
    """Of the ideal summary (10 words), its verbose wording (16) and its first clause
    alone (5): the judge ranks ideal > verbose > clause; wants-short (at most ten words)
    puts the verbose one last, wants-long (at least fourteen) puts it first; the
    ordinary labelers rank as the judge does."""
    (p,) = make_prompts(1, 3)
    slots, ideal = p.metadata["slots"], p.metadata["ideal"]
    clause = EVENT_CLAUSES["concise"].format(**slots)
    verbose = " ; ".join((EVENT_CLAUSES["verbose"].format(**slots),
                          EFFECT_CLAUSES["verbose"].format(**slots)))  # fmt: skip
    assert [len(t.split()) for t in (ideal, verbose, clause)] == [10, 16, 5]
    panel = {lab.name: lab for lab in personal_labelers()}

    def order(judge):
        return sorted(("ideal", "verbose", "clause"), reverse=True,
                      key=lambda k: judge(p, {"ideal": ideal, "verbose": verbose,
                                              "clause": clause}[k]))  # fmt: skip

    assert order(gold_utility) == ["ideal", "verbose", "clause"]
    assert order(panel["wants-short"].utility) == ["ideal", "clause", "verbose"]
    assert order(panel["wants-long"].utility) == ["verbose", "ideal", "clause"]
    assert order(NEW_USER.utility) == ["verbose", "ideal", "clause"]
    for lab in panel.values():
        if not lab.strong_taste:
            assert order(lab.utility) == ["ideal", "verbose", "clause"], lab.name


@pytest.fixture(scope="module")
def world_pairs():
    """250 documents with 4 candidates each (1,500 pairs), and every labeler's utility
    of every candidate, computed once."""
    prompts = make_prompts(250, 5, id_prefix="taste")
    rng = random.Random(5)
    groups = [(p, candidate_summaries(p, 4, rng)) for p in prompts]
    everyone = [*personal_labelers(), NEW_USER]
    utility = {(lab.name, p.id, t): lab.utility(p, t)
               for lab in everyone for p, ts in groups for t in ts}  # fmt: skip
    return groups, utility


def _judge(utility, name):
    return lambda prompt, text: utility[(name, prompt.id, text)]


def test_strong_tastes_disagree_with_the_pooled_view(world_pairs):
    """The issue's "at least two labelers whose preferences disagree with the pooled view
    on a sizeable share of pairs": a quarter to two fifths of the candidate pairs, against
    the panel's mean utility and against the gold judge (about 0.26-0.35 measured); the
    ordinary labelers agree with both on nearly every pair (at most 0.07 measured)."""
    groups, utility = world_pairs
    panel = personal_labelers()

    def pooled(prompt, text):
        return sum(utility[(lab.name, prompt.id, text)] for lab in panel) / len(panel)

    assert pooled(*groups[0][:1], groups[0][1][0]) == pytest.approx(
        panel_utility(panel, groups[0][0], groups[0][1][0])
    )
    shares = {}
    for lab in [*panel, NEW_USER]:
        vs_pooled, n = disagreement(_judge(utility, lab.name), pooled, groups)
        vs_gold, _ = disagreement(_judge(utility, lab.name), gold_utility, groups)
        assert n > 1400
        shares[lab.name] = (vs_pooled, vs_gold)
        if lab.strong_taste:
            assert 0.25 <= vs_pooled <= 0.40 and 0.25 <= vs_gold <= 0.40, (lab.name, shares)
        else:
            assert vs_pooled <= 0.08 and vs_gold <= 0.05, (lab.name, shares)
    assert sum(lab.strong_taste for lab in panel) >= 2


def test_the_new_user_is_no_panelist_and_has_a_taste_of_their_own(world_pairs):
    groups, utility = world_pairs
    assert NEW_USER.name not in {lab.name for lab in personal_labelers(14)}
    assert NEW_USER.strong_taste
    # not a copy of the panelist they are closest to
    share, _ = disagreement(_judge(utility, NEW_USER.name), _judge(utility, "wants-long"), groups)
    assert share > 0.03


def test_personal_panel_names_and_cycling():
    panel = personal_labelers()
    assert [lab.name for lab in panel] == [
        "careful", "wants-short", "wants-long", "harsh-on-rudeness", "hates-made-up-names",
        "average", "careless",
    ]  # fmt: skip
    assert [lab.name for lab in panel if lab.strong_taste] == ["wants-short", "wants-long"]
    more = personal_labelers(10)
    assert len({lab.name for lab in more}) == 10 and more[:7] == panel
    assert more[8] == replace(panel[1], name="wants-short-2")
    assert not any(lab.strong_taste for lab in default_labelers(7))


def test_disagreement_counts_strictly_ordered_pairs_only():
    (p,) = make_prompts(1, 0)
    scores_a = {"x": 1.0, "y": 2.0, "z": 3.0}
    scores_b = {"x": 1.0, "y": 3.0, "z": 2.0}  # y and z swapped
    flat = {"x": 0.0, "y": 0.0, "z": 1.0}  # x and y tied

    def a(prompt, t):
        return scores_a[t]

    assert disagreement(a, lambda prompt, t: scores_b[t], [(p, ["x", "y", "z", "x"])]) == (1 / 3, 3)
    assert disagreement(a, lambda prompt, t: flat[t], [(p, ["x", "y", "z"])]) == (0.0, 2)
    with pytest.raises(ValueError, match="no pair"):
        disagreement(a, a, [(p, ["x", "x"])])


def test_rankings_by_several_criteria():
    prompts, completions = _task(6)
    labelers = personal_labelers()
    both = simulate_rankings(prompts, completions, labelers, overlap=3, seed=4,
                             criteria=["overall", "harmlessness"])  # fmt: skip
    overall = simulate_rankings(prompts, completions, labelers, overlap=3, seed=4)
    harmless = simulate_rankings(prompts, completions, labelers, overlap=3, seed=4,
                                 criterion="harmlessness")  # fmt: skip
    assert [r.criterion for r in both] == ["overall", "harmlessness"] * len(overall)
    assert both[0::2] == overall and both[1::2] == harmless
    assert [(r.prompt_id, r.labeler) for r in both[1::2]] == [
        (r.prompt_id, r.labeler) for r in overall
    ]
    again = simulate_rankings(prompts[:2], completions, labelers, overlap=3, seed=4,
                              criteria=("overall", "harmlessness"))  # fmt: skip
    assert again == both[: len(again)]
    for bad, match in (([], "at least one"), (["overall", "overall"], "distinct"),
                       (["helpfulness", "funniness"], "unknown criterion")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            simulate_rankings(prompts, completions, labelers, overlap=2, seed=0, criteria=bad)
    with pytest.raises(ValueError, match="not both"):
        simulate_rankings(prompts, completions, labelers, overlap=2, seed=0,
                          criterion="helpfulness", criteria=["harmlessness"])  # fmt: skip


def test_equally_harmless_summaries_tie_by_harmlessness():
    """Two clean summaries are "neither is more harmful"; by overall they are ordered."""
    (p,) = make_prompts(1, 0)
    slots, ideal = p.metadata["slots"], p.metadata["ideal"]
    verbose = " ; ".join((EVENT_CLAUSES["verbose"].format(**slots),
                          EFFECT_CLAUSES["verbose"].format(**slots)))  # fmt: skip
    texts = {"ideal": ideal, "verbose": verbose, "rude": "damn , " + ideal}
    cs = [Completion(id=i, prompt_id=p.id, completion=t) for i, t in texts.items()]
    lab = personal_labelers()[0]
    for seed in range(5):
        r = lab.rank(p, cs, random.Random(seed), "harmlessness")
        assert sorted(map(sorted, r.ranking)) == [["ideal", "verbose"], ["rude"]]
        assert r.ranking[-1] == ["rude"]
        assert len(lab.rank(p, cs, random.Random(seed), "overall").ranking) == 3
    # length is a taste in helpfulness, not a harm
    for lab in _EVERYONE:
        assert lab.utility(p, verbose, "harmlessness") == lab.utility(p, ideal, "harmlessness") == 0
        assert lab.utility(p, texts["rude"], "harmlessness") == -lab.rude_weight
