"""evaluate_completions by hand on given completions; `alignloop eval` end to end on
tiny local models (a policy against itself, and against another policy)."""

from __future__ import annotations

import json

import pytest

from alignloop.cli import main
from alignloop.config import ConfigError
from alignloop.evaluate import (
    PROMPT_REFERENCE,
    EvalConfig,
    WordListToxicity,
    evaluate,
    evaluate_completions,
    report_data,
)
from alignloop.evaluate.report import plots_in
from alignloop.io import read_records
from alignloop.schema import Completion, Prompt

PROMPTS = [
    Prompt(id="p1", prompt="document one", reference="good summary"),
    Prompt(id="p2", prompt="document two", reference="a bad summary"),
    Prompt(id="p3", prompt="document three"),  # no reference
]


def completions(policy: str, texts: dict[str, list[str]]) -> list[Completion]:
    return [
        Completion(id=f"{pid}-{policy}-{j}", prompt_id=pid, completion=t, policy=policy)
        for pid, ts in texts.items()
        for j, t in enumerate(ts)
    ]


def word_count(prompt: Prompt, completion: str) -> float:
    """A judge that likes long completions."""
    return float(len(completion.split()))


def test_evaluate_completions_by_hand():
    sft = completions("sft", {"p1": ["one two", "one"], "p2": ["bad bad"], "p3": ["x y z"]})
    rlhf = completions("rlhf", {"p1": ["one two three", "one"], "p2": ["b"], "p3": ["x y"]})
    ev = evaluate_completions(
        PROMPTS,
        {"sft": sft, "rlhf": rlhf},
        judge=word_count,
        toxicity=WordListToxicity(["bad"]),
        baseline="sft",
        kl={"rlhf": [1.0, 2.0, 3.0, 6.0]},
    )
    assert list(ev.policies) == [PROMPT_REFERENCE, "sft", "rlhf"]
    # rlhf vs sft, pair by pair: 3>2 win, 1=1 tie, 1<2 loss, 2<3 loss -> (1 + .5) / 4
    wr = ev.win_rates["rlhf_vs_sft/gold"]
    assert (wr["wins"], wr["ties"], wr["losses"], wr["rate"]) == (1, 1, 2, 0.375)
    assert (wr["a"], wr["b"], wr["judge"]) == ("rlhf", "sft", "gold")
    # against the references (2 words for p1, 3 for p2; p3 has none):
    # sft: 2=2 tie, 1<2 loss, 2<3 loss; rlhf: 3>2 win, 1<2 loss, 1<3 loss
    assert ev.win_rates[f"sft_vs_{PROMPT_REFERENCE}/gold"]["rate"] == pytest.approx(0.5 / 3)
    assert ev.win_rates[f"rlhf_vs_{PROMPT_REFERENCE}/gold"]["rate"] == pytest.approx(1 / 3)
    assert "sft_vs_rlhf/gold" not in ev.win_rates  # only against the baseline
    assert len(ev.win_rates) == 3  # no reward model: gold win rates only
    sft_figures, rlhf_figures = ev.policies["sft"], ev.policies["rlhf"]
    assert sft_figures["gold_mean"] == pytest.approx((2 + 1 + 2 + 3) / 4)
    assert sft_figures["toxicity_rate"] == 0.25 and rlhf_figures["toxicity_rate"] == 0.0
    assert ev.policies[PROMPT_REFERENCE]["toxicity_rate"] == 0.5
    assert rlhf_figures["kl_mean"] == 3.0 and rlhf_figures["kl_median"] == 2.5
    assert "kl_mean" not in sft_figures and "reward_mean" not in sft_figures
    assert rlhf_figures["length"]["words"]["mean"] == pytest.approx(7 / 4)
    assert ev.rows["rlhf"][0] == {
        "id": "p1-rlhf-0",
        "prompt_id": "p1",
        "gold": 3.0,
        "kl": 1.0,
        "toxicity": 0.0,
        "toxic": False,
    }
    metrics = ev.metrics()
    assert (
        metrics["eval/rlhf/kl_mean"] == 3.0 and metrics["eval/win_rate/rlhf_vs_sft/gold"] == 0.375
    )
    side = ev.side_by_side(PROMPTS, 2)
    assert side[0]["prompt"] == "document one" and side[0]["rlhf"] == "one two three"
    assert side[0][PROMPT_REFERENCE] == "good summary"
    assert side[0]["scores"]["rlhf"] == {"gold": 3.0, "kl": 1.0, "toxicity": 0.0}
    data = report_data(ev, PROMPTS, title="hand")
    assert plots_in(data) == ["win_rates", "before_after"]


def test_evaluate_completions_checks_its_inputs():
    with pytest.raises(ValueError, match="baseline 'x' is not one of the policies"):
        evaluate_completions(PROMPTS, {"a": []}, baseline="x", toxicity=None)
    with pytest.raises(ValueError, match="'prompt_reference' cannot name a policy"):
        evaluate_completions(PROMPTS, {PROMPT_REFERENCE: []}, toxicity=None)
    stray = completions("a", {"p9": ["text"]})
    with pytest.raises(ValueError, match="no prompt with id 'p9'"):
        evaluate_completions(PROMPTS, {"a": stray}, toxicity=None)

    def broken(prompt, completion):
        raise KeyError("facts")

    with pytest.raises(ConfigError, match="judge 'gold' failed on prompt 'p1'"):
        evaluate_completions(PROMPTS, {"a": completions("a", {"p1": ["x"]})}, judge=broken)


def test_policy_against_itself_has_zero_kl_and_only_ties(tiny, tmp_path):
    config = EvalConfig(
        policy=str(tiny["policy"]),
        reference=str(tiny["policy"]),
        prompts=tiny["prompts"],
        out=tmp_path,
        reward_model=str(tiny["rm"]),
        max_new_tokens=6,
        batch_size=4,
        report=False,
    )
    result = evaluate(config)
    rows = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [r["kl"] for r in rows if r["policy"] == "policy"] == [0.0] * 10
    wr = result["win_rates"]["policy_vs_reference/reward_model"]
    assert (wr["ties"], wr["n"], wr["rate"]) == (10, 10, 0.5)
    ours = read_records(tmp_path / "completions_policy.jsonl", "completion")
    theirs = read_records(tmp_path / "completions_reference.jsonl", "completion")
    assert [c.completion for c in ours] == [c.completion for c in theirs]  # same seed
    assert not (tmp_path / "report.html").exists()


def test_eval_command_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "eval"
    args = [
        "eval",
        "--policy",
        str(tiny["policy"]),
        "--reference",
        str(tiny["reference"]),
        "--prompts",
        str(tiny["prompts"]),
        "--out",
        str(out),
        "--reward-model",
        str(tiny["rm"]),
        "--judge",
        "alignloop.world:gold_utility",
        "--k",
        "2",
        "--max-new-tokens",
        "8",
        "--batch-size",
        "4",
        "--examples",
        "3",
    ]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "eval.json").read_text())
    assert printed == saved["metrics"]
    assert printed["eval/n_prompts"] == 10
    for key in (
        "eval/policy/kl_mean",
        "eval/policy/reward_mean",
        "eval/reference/gold_mean",
        "eval/win_rate/policy_vs_reference/reward_model",
        "eval/win_rate/policy_vs_reference/gold",
        f"eval/win_rate/policy_vs_{PROMPT_REFERENCE}/gold",
        "eval/policy/toxicity_rate",
        "eval/policy/length_tokens_mean",
    ):
        assert isinstance(printed[key], float), key
    assert saved["policies"]["policy"]["n"] == 20  # k = 2 per prompt
    assert printed["eval/policy/kl_mean"] != 0.0  # two different policies
    # The references of the world are good summaries; a random policy's are not.
    assert printed[f"eval/win_rate/policy_vs_{PROMPT_REFERENCE}/gold"] < 0.2
    assert len(read_records(out / "completions_reference.jsonl", "completion")) == 20
    data = json.loads((out / "report_data.json").read_text())
    assert len(data["side_by_side"]) == 3
    page = (out / "report.html").read_text()
    assert page.count("<img") == len(plots_in(data)) == 2  # win rates, before/after
    assert "Side by side" in page

    bad = [
        "eval",
        "--policy",
        str(tiny["policy"]),
        "--prompts",
        str(tiny["prompts"]),
        "--out",
        str(out),
        "--toxicity",
        str(tiny["generic"]),
    ]
    assert main(bad) == 2
    assert "cannot tell which label means toxic" in capsys.readouterr().err
