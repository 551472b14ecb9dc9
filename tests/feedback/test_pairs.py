"""Rankings -> pairs: hand-computed examples, errors, margins, and properties."""

from math import comb

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignloop.feedback import (
    PairsResult,
    no_margin,
    ordered_pairs,
    rank_gap_margin,
    ranking_to_pairs,
    rankings_to_pairs,
)
from alignloop.schema import Completion, Prompt, Ranking, SchemaError, parse_record

PROMPT = Prompt(id="p1", prompt="Summarize: the cat sat.")


def completions(texts: dict[str, str], prompt_id: str = "p1") -> dict[str, Completion]:
    return {cid: Completion(id=cid, prompt_id=prompt_id, completion=t) for cid, t in texts.items()}


def ranking(groups, labeler="L1", criterion="overall", prompt_id="p1", **kw) -> Ranking:
    return Ranking(prompt_id=prompt_id, labeler=labeler, criterion=criterion, ranking=groups, **kw)


ABCD = completions({c: f"text {c}" for c in "abcd"})


def test_tied_middle_group_gives_exactly_five_pairs():
    pairs = ranking_to_pairs(ranking([["a"], ["b", "c"], ["d"]]), ABCD, PROMPT)
    assert [(p.chosen_id, p.rejected_id) for p in pairs] == [
        ("a", "b"),
        ("a", "c"),
        ("a", "d"),
        ("b", "d"),
        ("c", "d"),
    ]


def test_pair_carries_texts_and_provenance():
    (pair,) = ranking_to_pairs(ranking([["b"], ["a"]], labeler="ann"), ABCD, PROMPT)
    assert pair.to_dict() == {
        "prompt": "Summarize: the cat sat.",
        "chosen": "text b",
        "rejected": "text a",
        "prompt_id": "p1",
        "chosen_id": "b",
        "rejected_id": "a",
        "labeler": "ann",
        "criterion": "overall",
        "source": "ranking",
    }


def test_all_tied_and_unrankable_give_no_pairs():
    assert ranking_to_pairs(ranking([["a", "b", "c"]]), ABCD, PROMPT) == []
    assert ranking_to_pairs(ranking([], unrankable=True), ABCD, PROMPT) == []
    assert ranking_to_pairs(ranking([["a"], ["b"]], unrankable=True), ABCD, PROMPT) == []


def test_margins():
    r = ranking([["a"], ["b"], ["c", "d"]])
    assert [p.margin for p in ranking_to_pairs(r, ABCD, PROMPT)] == [None] * 5
    gaps = [p.margin for p in ranking_to_pairs(r, ABCD, PROMPT, margin=rank_gap_margin)]
    assert gaps == [1.0, 2.0, 2.0, 1.0, 1.0]  # a>b, a>c, a>d, b>c, b>d
    assert no_margin(0, 1, r) is None
    assert rank_gap_margin(0, 1, r) == 1.0

    def confidence_margin(better_group: int, worse_group: int, rk: Ranking) -> float | None:
        return rk.confidence

    r = ranking([["a"], ["b"]], confidence=0.8)
    assert ranking_to_pairs(r, ABCD, PROMPT, margin=confidence_margin)[0].margin == 0.8


def test_identical_and_empty_texts_are_skipped_and_counted():
    texts = completions({"a": "same", "b": "same", "c": "  ", "d": "other"})
    result = rankings_to_pairs([ranking([["a"], ["b"], ["c"], ["d"]])], texts, [PROMPT])
    # a>b identical; a>c, b>c, c>d empty; a>d and b>d kept.
    assert [(p.chosen_id, p.rejected_id) for p in result.pairs] == [("a", "d"), ("b", "d")]
    assert (result.skipped_identical, result.skipped_empty, result.unrankable) == (1, 3, 0)


def test_unknown_id_error_names_file_and_line():
    r = parse_record(
        "ranking",
        {"prompt_id": "p1", "labeler": "L1", "criterion": "overall", "ranking": [["a"], ["zz"]]},
        where="r.jsonl:3",
    )
    with pytest.raises(SchemaError, match=r"r\.jsonl:3: field 'ranking': no completion .*'zz'"):
        rankings_to_pairs([r], ABCD, [PROMPT])
    with pytest.raises(SchemaError, match=r"r\.jsonl:3: .*'zz'"):
        ranking_to_pairs(r, ABCD, PROMPT)


def test_completion_of_another_prompt_error_names_file_and_line():
    other = Prompt(id="p2", prompt="Another.")
    texts = {**ABCD, **completions({"x": "text x"}, prompt_id="p2")}
    r = parse_record(
        "ranking",
        {"prompt_id": "p1", "labeler": "L1", "criterion": "overall", "ranking": [["a"], ["x"]]},
        where="r.jsonl:3",
    )
    with pytest.raises(SchemaError, match=r"r\.jsonl:3: .*'x' belongs to prompt 'p2'"):
        rankings_to_pairs([r], texts, [PROMPT, other])
    with pytest.raises(SchemaError, match=r"r\.jsonl:3"):
        ranking_to_pairs(r, texts, other)  # not a ranking of this prompt


def test_criterion_filter_and_prompt_contiguity():
    other = Prompt(id="p2", prompt="Another.")
    texts = {**ABCD, **completions({"x": "text x", "y": "text y"}, prompt_id="p2")}
    rankings = [
        ranking([["a"], ["b"]], labeler="L1"),
        ranking([["x"], ["y"]], labeler="L1", prompt_id="p2"),
        ranking([["b"], ["a"]], labeler="L2"),
        ranking([["c"], ["d"]], labeler="L2", criterion="harmless"),
        ranking([], labeler="L3", unrankable=True),
    ]
    result = rankings_to_pairs(rankings, texts, {"p1": PROMPT, "p2": other}, criterion="overall")
    assert [(p.prompt_id, p.labeler, p.chosen_id) for p in result.pairs] == [
        ("p1", "L1", "a"),
        ("p1", "L2", "b"),
        ("p2", "L1", "x"),
    ]
    assert result.unrankable == 1
    everything = rankings_to_pairs(rankings, list(texts.values()), [PROMPT, other])
    assert len(everything.pairs) == 4


def test_pairs_result_adds_up():
    total = PairsResult(pairs=[], skipped_empty=1)
    total += PairsResult(pairs=[], skipped_identical=2, unrankable=3)
    assert (total.skipped_empty, total.skipped_identical, total.unrankable) == (1, 2, 3)


# -- properties -----------------------------------------------------------------------

IDS = [f"c{i}" for i in range(8)]


@st.composite
def groups(draw, ids=IDS, min_size=1):
    """A ranking's groups: a permutation of some ids cut into consecutive groups."""
    chosen = draw(st.permutations(ids))[: draw(st.integers(min_size, len(ids)))]
    cuts = draw(st.sets(st.integers(1, max(1, len(chosen) - 1)), max_size=len(chosen)))
    bounds = [0, *sorted(c for c in cuts if c < len(chosen)), len(chosen)]
    return [list(chosen[i:j]) for i, j in zip(bounds, bounds[1:], strict=False)]


MANY = completions({cid: f"completion {cid}" for cid in IDS})


@given(groups())
def test_every_pair_agrees_with_its_ranking(gs):
    r = ranking(gs)
    position = r.positions()
    for pair in ranking_to_pairs(r, MANY, PROMPT):
        assert position[pair.chosen_id] < position[pair.rejected_id]


@given(groups())
def test_pair_count_is_all_pairs_minus_tied_pairs(gs):
    k = sum(len(g) for g in gs)
    expected = comb(k, 2) - sum(comb(len(g), 2) for g in gs)
    assert len(ranking_to_pairs(ranking(gs), MANY, PROMPT)) == expected
    assert len(list(ordered_pairs(ranking(gs)))) == expected
