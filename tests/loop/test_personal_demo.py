"""`alignloop demo --personal --quick`: every stage leaves its files, metrics.json has
the issue's `personal` keys with real figures, the adapters and the new user's
weights load through the ordinary commands, and the report names every labeler.
(Quick sizes: the figures are not the targets' evaluation, only their plumbing.)"""

import json

import pytest
from tests.conftest import quick_demo

from alignloop.cli import main
from alignloop.config import ConfigError
from alignloop.io import read_records
from alignloop.loop.demo import DemoConfig, run_demo
from alignloop.loop.personal import PERSONAL_TARGETS, personal_figures
from alignloop.world import NEW_USER, personal_labelers

STRONG = [lab.name for lab in personal_labelers() if lab.strong_taste]
ARTIFACTS = (
    "rankings.jsonl", "pairs_overall.jsonl", "pairs_criteria.jsonl", "new_user_pairs.jsonl",
    "rm-pooled/config.json", "rm-personal/config.json", "new-user/weights.json",
    "new-user/comparisons.jsonl", "new-user/rm-full/config.json", "rm-criteria/config.json",
    "ppo-generic/model.safetensors", "ppo-helpful/model.safetensors",
    "ppo-combined/model.safetensors", "ppo-conditioned/alignloop_conditioning.json",
    "eval/completions_sft.jsonl",
    "eval/completions_generic.jsonl", "metrics.json", "report.html",
    *(f"rm-own-{n}/config.json" for n in STRONG),
    *(f"ppo-user-{n}/adapter_config.json" for n in STRONG),
    *(f"eval/completions_user-{n}.jsonl" for n in STRONG),
    *(f"eval/completions_conditioned@{n}.jsonl" for n in STRONG),
)  # fmt: skip


@pytest.fixture(scope="module")
def personal_run(tmp_path_factory):
    return quick_demo(tmp_path_factory.mktemp("personal") / "run", "--personal")


@pytest.mark.slow
def test_the_personal_demo_leaves_every_file_and_the_issues_keys(personal_run):
    missing = [a for a in ARTIFACTS if not (personal_run / a).exists()]
    assert not missing
    metrics = json.loads((personal_run / "metrics.json").read_text())
    personal = metrics["personal"]
    assert set(personal["labelers"]) == {lab.name for lab in personal_labelers()}
    for name, row in personal["labelers"].items():
        assert row["strong_taste"] == (name in STRONG)
        for key in ("rm_accuracy_personal", "rm_accuracy_pooled"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
        own = row["policy_win_rate_own_utility"]
        assert (own is not None) == (name in STRONG)  # an adapter for strong tastes only
        if name in STRONG:  # and the one conditioned policy, for each of them
            assert 0.0 <= row["conditioned_win_rate_own_utility"] <= 1.0
    new = personal["new_user"]
    assert new["name"] == NEW_USER.name and new["n_comparisons"] == 20
    assert 0.0 <= new["accuracy"] <= 1.0 and 0.0 <= new["accuracy_full_data"] <= 1.0
    # The accuracy averages 50 draws of 20; the first is the one `personal fit` wrote.
    assert new["n_draws"] == 50 and new["accuracy_se"] > 0
    assert 0.0 <= new["accuracy_one_draw"] <= 1.0
    few = read_records(personal_run / "new-user" / "comparisons.jsonl", "comparison")
    assert json.loads((personal_run / "new-user" / "weights.json").read_text())["n_pairs"] == 20
    assert len(few) == 20
    assert personal["gold_win_rate_drop_vs_generic"] is not None
    assert set(metrics["targets"]) == set(PERSONAL_TARGETS)
    assert metrics["targets"]["new_user_gap"]["value"] == pytest.approx(
        new["accuracy"] - new["accuracy_full_data"]
    )
    assert personal_figures(personal) == {k: metrics[k] for k in PERSONAL_TARGETS}
    page = (personal_run / "report.html").read_text()
    assert all(name in page for name in personal["labelers"]) and NEW_USER.name in page


@pytest.mark.slow
def test_the_new_user_weights_and_the_adapters_load_through_the_commands(personal_run, tmp_path):
    weights = json.loads((personal_run / "new-user" / "weights.json").read_text())
    assert weights["user"] == NEW_USER.name and weights["n_pairs"] == 20
    completions = tmp_path / "c.jsonl"
    rows = [json.loads(line) for line in (personal_run / "eval" / "completions_sft.jsonl")
            .read_text().splitlines()[:6]]  # fmt: skip
    completions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scored = tmp_path / "s.jsonl"
    assert main([
        "score", "--model", str(personal_run / "rm-personal"), "--data", str(completions),
        "--prompts", str(personal_run / "world" / "prompts_eval.jsonl"), "--out", str(scored),
        "--user-weights", str(personal_run / "new-user" / "weights.json"),
    ]) == 0  # fmt: skip
    assert len(scored.read_text().splitlines()) == 6
    out = tmp_path / "gen.jsonl"
    assert main([
        "generate", "--policy", str(personal_run / "sft"), "--adapter",
        str(personal_run / f"ppo-user-{STRONG[0]}"), "--prompts",
        str(personal_run / "world" / "prompts_eval.jsonl"), "--out", str(out), "--k", "1",
        "--max-new-tokens", "8",
    ]) == 0  # fmt: skip
    assert out.read_text().count("\n") == 40


def test_personal_and_rounds_do_not_mix(tmp_path):
    with pytest.raises(ConfigError, match="--personal"):
        run_demo(DemoConfig(out=tmp_path, personal=True, rounds=2))
