"""Where rankings come from: the AI judge's rankings and its agreement with people,
the simulated labelers as the world gives them, the server source's token rule."""

from __future__ import annotations

import pytest

from alignloop.config import ConfigError
from alignloop.loop.sources import (
    ADMIN_TOKEN_ENV,
    JudgeLabelers,
    ServerLabelers,
    SimulatedLabelers,
    judge_agreement,
    rank_by_scores,
)
from alignloop.schema import Completion, Ranking
from alignloop.world import default_labelers, gold_utility, make_prompts, simulate_rankings


def test_rank_by_scores_puts_the_best_first_and_ties_equal_scores():
    r = rank_by_scores("p", [("a", 0.1), ("b", 2.0), ("c", 0.1), ("d", -1.0)],
                       labeler="ai-judge", criterion="overall")  # fmt: skip
    assert r.ranking == [["b"], ["a", "c"], ["d"]]
    assert (r.prompt_id, r.labeler, r.criterion) == ("p", "ai-judge", "overall")


def test_judge_agreement_counts_people_s_strict_pairs_and_judge_ties_as_half():
    judged = [Ranking(prompt_id="p", labeler="ai", criterion="c", ranking=[["a"], ["b", "c"]])]
    people = [
        # a > b, a > c, b > c: the judge agrees, agrees, ties (a half)
        Ranking(prompt_id="p", labeler="ann", criterion="c", ranking=[["a"], ["b"], ["c"]]),
        # c > a and b > a: the judge disagrees with both
        Ranking(prompt_id="p", labeler="bob", criterion="c", ranking=[["c", "b"], ["a"]]),
        # another criterion: not compared
        Ranking(prompt_id="p", labeler="cai", criterion="other", ranking=[["b"], ["a"]]),
    ]
    result = judge_agreement(judged, people)
    assert result == {"agreement": 2.5 / 5, "pairs": 5}
    assert judge_agreement(judged, []) == {"agreement": None, "pairs": 0}


def test_judge_labelers_rank_by_a_module_function():
    prompts = make_prompts(3, 0)
    completions = [
        Completion(id=f"{p.id}-{j}", prompt_id=p.id, completion=text)
        for p in prompts
        for j, text in enumerate([p.metadata["ideal"], "weather", p.metadata["ideal"] + " x"])
    ]
    source = JudgeLabelers("alignloop.world:gold_utility")
    rankings = source.collect(1, None, prompts, completions, lambda line: None)
    assert len(rankings) == 3
    by_id = {p.id: p for p in prompts}
    text = {c.id: c.completion for c in completions}
    for r in rankings:
        scores = [gold_utility(by_id[r.prompt_id], text[g[0]]) for g in r.ranking]
        assert scores == sorted(scores, reverse=True)
        assert r.labeler == "ai-judge"


def test_judge_labelers_name_a_bad_judge():
    prompts = make_prompts(1, 0)
    cs = [Completion(id=f"c{j}", prompt_id=prompts[0].id, completion="x") for j in range(2)]
    with pytest.raises(ConfigError, match="--ai-judge"):
        JudgeLabelers("alignloop.world:no_such_judge").collect(1, None, prompts, cs, print)


def test_simulated_labelers_are_the_world_s_with_the_round_s_seed():
    from alignloop.loop import stand_in_completions

    prompts = make_prompts(6, 0)
    completions = stand_in_completions(prompts, k=3, seed=0)
    source = SimulatedLabelers(labelers=4, overlap=2, seed=5)
    for round in (1, 2):
        got = source.collect(round, None, prompts, completions, lambda line: None)
        assert got == simulate_rankings(prompts, completions, default_labelers(4), overlap=2,
                                        seed=5 + round - 1)  # fmt: skip


def test_the_server_source_takes_its_token_from_the_environment_only(monkeypatch):
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match=ADMIN_TOKEN_ENV):
        ServerLabelers(url="http://127.0.0.1:9", guidelines="rank")
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "secret")
    source = ServerLabelers(url="http://127.0.0.1:9/", guidelines="rank")
    assert source.token == "secret" and source.url == "http://127.0.0.1:9"
    assert source.project_name(3) == "loop-round-3"


def test_a_server_that_does_not_answer_is_an_error_in_words(monkeypatch, tmp_path):
    from alignloop.loop.sources import ServerError

    monkeypatch.setenv(ADMIN_TOKEN_ENV, "secret")
    source = ServerLabelers(url="http://127.0.0.1:9", guidelines="rank")  # nothing listens
    prompts = make_prompts(1, 0)
    cs = [Completion(id=f"c{j}", prompt_id=prompts[0].id, completion="x") for j in range(2)]
    with pytest.raises(ServerError, match="cannot reach the labeling server at http://127"):
        source.collect(1, tmp_path, prompts, cs, lambda line: None)


def test_judge_labelers_rank_with_a_reward_model(tiny_rm):
    from alignloop.models import RewardModel

    prompts = make_prompts(2, 0)
    completions = [
        Completion(id=f"{p.id}-{j}", prompt_id=p.id, completion=text)
        for p in prompts for j, text in enumerate(["a summary", p.metadata["ideal"], "x y z"])
    ]  # fmt: skip
    rankings = JudgeLabelers(str(tiny_rm), max_length=64).collect(
        1, None, prompts, completions, lambda line: None
    )
    model = RewardModel.from_pretrained(tiny_rm)
    by_id = {p.id: p for p in prompts}
    for r in rankings:
        ids = [cid for group in r.ranking for cid in group]
        cs = [next(c for c in completions if c.id == cid) for cid in ids]
        scores = model.score([by_id[c.prompt_id].prompt for c in cs],
                             [c.completion for c in cs], max_length=64)  # fmt: skip
        assert scores == sorted(scores, reverse=True)


def test_the_loop_never_imports_the_server():
    """The wall: the loop speaks to a labeling server over HTTP only."""
    import subprocess
    import sys

    code = (
        "import sys, alignloop.loop, alignloop.loop.rounds, alignloop.loop.sources; "
        "print(sorted(m for m in sys.modules if m.startswith('alignloop.server')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
