import pytest
from pydantic import ValidationError

from alignloop.schema import (
    Comparison,
    Completion,
    Prompt,
    Ranking,
    SchemaError,
    check_rankings,
    parse_record,
)


def ranking(**over):
    base = {"prompt_id": "p1", "labeler": "ann", "criterion": "helpfulness",
            "ranking": [["a"], ["b", "c"]]}  # fmt: skip
    return {**base, **over}


def error_of(kind, obj, where="f.jsonl:7") -> str:
    with pytest.raises(SchemaError) as e:
        parse_record(kind, obj, where)
    return str(e.value)


def test_valid_records_parse_and_remember_where_they_came_from():
    r = parse_record("ranking", ranking(rationale="a is concise", confidence=0.8), "r.jsonl:3")
    assert isinstance(r, Ranking)
    assert r.where == "r.jsonl:3"
    assert r.positions() == {"a": 0, "b": 1, "c": 1}
    assert r.completion_ids == ["a", "b", "c"]
    p = parse_record("prompt", {"id": "p1", "prompt": "hi", "metadata": {"facts": [["x"]]}})
    assert isinstance(p, Prompt) and p.metadata == {"facts": [["x"]]}
    c = parse_record("completion", {"id": "c", "prompt_id": "p1", "completion": ""})
    assert isinstance(c, Completion) and c.policy is None
    pair = parse_record("comparison", {"prompt": "q", "chosen": "a", "rejected": "b", "margin": 1})
    assert isinstance(pair, Comparison) and pair.margin == 1.0


def test_unknown_field_is_an_error_naming_file_line_and_field():
    msg = error_of("ranking", ranking(rankng=[["a"]]))
    assert "f.jsonl:7" in msg and "'rankng'" in msg and "unknown field" in msg


def test_missing_field_names_it():
    obj = ranking()
    del obj["labeler"]
    msg = error_of("ranking", obj)
    assert "f.jsonl:7" in msg and "'labeler'" in msg and "required" in msg.lower()


def test_ids_must_be_strings_not_numbers():
    assert "'prompt_id'" in error_of("ranking", ranking(prompt_id=3))


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ([["a"], ["a"]], "completion 'a' appears twice (groups 1 and 2)"),
        ([["a", "b", "a"]], "completion 'a' appears twice in group 1"),
        (["a", "b"], "flat list"),
        ([["a"], []], "group 2 of 2 is empty"),
        ([], "unrankable"),
    ],
)
def test_malformed_rankings(bad, expected):
    assert expected in error_of("ranking", ranking(ranking=bad))


def test_unrankable_may_be_empty():
    r = parse_record("ranking", ranking(ranking=[], unrankable=True))
    assert r.unrankable and r.completion_ids == []


def test_confidence_and_margin_must_be_finite():
    assert "finite" in error_of("ranking", ranking(confidence=float("nan")))
    assert "finite" in error_of(
        "comparison", {"prompt": "q", "chosen": "a", "rejected": "b", "margin": float("inf")}
    )


def test_comparison_texts_must_be_non_empty_and_different():
    empty = {"prompt": "q", "chosen": " ", "rejected": "b"}
    assert "chosen is empty" in error_of("comparison", empty)
    assert "identical" in error_of("comparison", {"prompt": "q", "chosen": "b", "rejected": "b"})


def test_not_an_object():
    assert "expected a JSON object" in error_of("prompt", ["p1", "hello"])


def test_records_are_immutable():
    p = Prompt(id="p", prompt="x")
    with pytest.raises(ValidationError):
        p.id = "q"  # type: ignore[misc]


def test_check_rankings_accepts_consistent_files(small_task):
    prompts, completions, rankings = small_task
    check_rankings(rankings, completions, prompts)


def test_check_rankings_names_every_bad_reference(small_task):
    prompts, completions, _ = small_task
    bad = [
        parse_record("ranking", ranking(prompt_id="p1", ranking=[["p1-a"], ["zzz"]]), "r.jsonl:1"),
        parse_record("ranking", ranking(prompt_id="p1", ranking=[["p1-a"], ["p2-a"]]), "r.jsonl:2"),
        parse_record("ranking", ranking(prompt_id="nope", ranking=[["p1-a"]]), "r.jsonl:3"),
    ]
    with pytest.raises(SchemaError) as e:
        check_rankings(bad, completions, prompts)
    problems = e.value.problems
    assert any("r.jsonl:1" in p and "no completion with id 'zzz'" in p for p in problems)
    assert any("r.jsonl:2" in p and "belongs to prompt 'p2'" in p for p in problems)
    assert any("r.jsonl:3" in p and "no prompt with id 'nope'" in p for p in problems)


def test_check_rankings_rejects_duplicate_completion_ids(small_task):
    prompts, completions, rankings = small_task
    dup = parse_record("completion", {"id": "p1-a", "prompt_id": "p1", "completion": "x"}, "c:9")
    with pytest.raises(SchemaError, match="c:9: field 'id': completion id 'p1-a' already used"):
        check_rankings(rankings, [*completions, dup], prompts)


def test_long_error_lists_are_capped_in_the_message_but_kept():
    e = SchemaError([f"line {i}" for i in range(50)])
    assert len(e.problems) == 50
    assert "and 30 more problems" in str(e)
