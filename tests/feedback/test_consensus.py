"""Bradley-Terry and the consensus ranking: closed forms, stationarity, properties."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignloop.feedback import bradley_terry, consensus, consensus_ranking
from alignloop.schema import Ranking


def ranking(groups, labeler="L1", criterion="overall", prompt_id="p1", **kw) -> Ranking:
    return Ranking(prompt_id=prompt_id, labeler=labeler, criterion=criterion, ranking=groups, **kw)


def test_two_items_closed_form():
    # a beats b 3 times. With prior p: (3 + p) = (3 + 2p) s_a / (s_a + s_b), so
    # s_a / s_b = (3 + p) / p = 31 for p = 0.1; centred log-strengths are +-log(31)/2.
    scores = bradley_terry([("a", "b")] * 3, ["a", "b"], prior=0.1)
    assert scores["a"] == pytest.approx(math.log(31) / 2, abs=1e-9)
    assert scores["b"] == pytest.approx(-math.log(31) / 2, abs=1e-9)


def test_map_stationarity_on_a_small_example():
    items = ["a", "b", "c", "d"]
    wins = [("a", "b"), ("a", "b"), ("b", "a"), ("a", "c"), ("c", "b"), ("b", "d")]
    wins += [("c", "d"), ("d", "c"), ("a", "d")]  # d never beats a, a never loses but to b
    prior = 0.1
    scores = bradley_terry(wins, items, prior=prior)
    assert sum(scores.values()) == pytest.approx(0.0, abs=1e-12)
    s = {i: math.exp(v) for i, v in scores.items()}
    for i in items:
        won = sum(w == i for w, _ in wins) + prior * (len(items) - 1)
        expected = 0.0
        for j in items:
            if j != i:
                games = sum({w, lo} == {i, j} for w, lo in wins) + 2 * prior
                expected += games * s[i] / (s[i] + s[j])
        assert won == pytest.approx(expected, abs=1e-6)


def test_unbeaten_item_has_finite_score_and_bad_input_raises():
    scores = bradley_terry([("a", "b"), ("a", "c")], ["a", "b", "c"])
    assert all(math.isfinite(v) for v in scores.values())
    assert scores["a"] > scores["b"] == pytest.approx(scores["c"])
    assert bradley_terry([], ["a"]) == {"a": 0.0}
    with pytest.raises(ValueError, match="not in items"):
        bradley_terry([("a", "z")], ["a", "b"])
    with pytest.raises(ValueError, match="prior"):
        bradley_terry([], ["a", "b"], prior=0.0)


def test_consensus_of_disagreeing_labelers():
    rankings = [
        ranking([["a"], ["b"], ["c"]], labeler="L1"),
        ranking([["a"], ["c"], ["b"]], labeler="L2"),
        ranking([["b"], ["a"], ["c"]], labeler="L3"),
        ranking([], labeler="L4", unrankable=True),
    ]
    result = consensus_ranking(rankings)
    # a wins 5 of its 6 games, b 3 of 6 (beats c twice, a once), c 1 of 6: a > b > c.
    assert result.ranking == [["a"], ["b"], ["c"]]
    assert (result.labeler, result.prompt_id, result.criterion) == ("consensus", "p1", "overall")
    assert result.confidence is None and not result.unrankable


def test_exact_opposites_tie_everything_and_partial_items_are_included():
    result = consensus_ranking(
        [ranking([["a"], ["b"], ["c"]]), ranking([["c"], ["b"], ["a"]], labeler="L2")]
    )
    assert result.ranking == [["a", "b", "c"]]
    result = consensus_ranking(
        [ranking([["a"], ["b"]]), ranking([["a"], ["b"], ["x"]], labeler="L2")]
    )
    assert result.ranking == [["a"], ["b"], ["x"]]


def test_all_unrankable_gives_unrankable_consensus():
    result = consensus_ranking([ranking([], unrankable=True)])
    assert result.unrankable and result.ranking == []


def test_mixed_prompts_or_criteria_raise():
    with pytest.raises(ValueError, match="one prompt and one criterion"):
        consensus_ranking([ranking([["a"], ["b"]]), ranking([["a"], ["b"]], prompt_id="p2")])
    with pytest.raises(ValueError, match="one prompt and one criterion"):
        consensus_ranking([ranking([["a"], ["b"]]), ranking([["a"], ["b"]], criterion="x")])
    with pytest.raises(ValueError):
        consensus_ranking([])


def test_consensus_per_prompt_and_criterion_in_first_seen_order():
    rankings = [
        ranking([["b"], ["a"]], prompt_id="p2"),
        ranking([["a"], ["b"]]),
        ranking([["a"], ["b"]], criterion="harmless"),
        ranking([["b"], ["a"]], prompt_id="p2", labeler="L2"),
    ]
    result = consensus(rankings)
    assert [(r.prompt_id, r.criterion, r.ranking) for r in result] == [
        ("p2", "overall", [["b"], ["a"]]),
        ("p1", "overall", [["a"], ["b"]]),
        ("p1", "harmless", [["a"], ["b"]]),
    ]


# -- properties -----------------------------------------------------------------------

IDS = [f"c{i}" for i in range(7)]


@st.composite
def groups(draw, ids=IDS):
    """A ranking's groups: a permutation of some ids cut into consecutive groups."""
    chosen = draw(st.permutations(ids))[: draw(st.integers(1, len(ids)))]
    cuts = sorted(draw(st.sets(st.integers(1, len(chosen)))) - {len(chosen)})
    bounds = [0, *cuts, len(chosen)]
    return [list(chosen[i:j]) for i, j in zip(bounds, bounds[1:], strict=False)]


@given(st.permutations(IDS), st.integers(2, len(IDS)), st.integers(1, 4))
def test_identical_strict_rankings_are_reproduced(order, k, copies):
    strict = [[cid] for cid in order[:k]]
    rankings = [ranking(strict, labeler=f"L{i}") for i in range(copies)]
    assert consensus_ranking(rankings).ranking == strict


@given(st.lists(groups(), min_size=1, max_size=5), st.randoms())
def test_consensus_does_not_depend_on_input_order(all_groups, rnd):
    rankings = [ranking(g, labeler=f"L{i}") for i, g in enumerate(all_groups)]
    shuffled = list(rankings)
    rnd.shuffle(shuffled)
    assert consensus_ranking(shuffled).ranking == consensus_ranking(rankings).ranking
