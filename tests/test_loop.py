"""`alignloop demo --quick`: every stage leaves its files, the tuned policy is better
than the SFT policy by the gold judge, and the same seed gives the same run."""

import json

import pytest
from tests.conftest import quick_demo

from alignloop.io import read_records
from alignloop.loop import gold_pairs, overoptimization, pair_accuracy, split_ids
from alignloop.loop.demo import toxicity_reduction
from alignloop.schema import Completion
from alignloop.world import gold_utility, make_prompts

ARTIFACTS = (
    "world/prompts_train.jsonl", "world/prompts_eval.jsonl", "world/tokenizer/tokenizer.json",
    "world/policy-init/config.json", "sft/config.json", "sft/model.safetensors",
    "sft/metrics.jsonl", "completions.jsonl", "rankings.jsonl", "agreement.json",
    "pairs.jsonl", "consensus.jsonl", "rm_pairs.jsonl", "rm/config.json",
    "rm/model.safetensors", "rm/held_out.json", "ppo/config.json", "ppo/model.safetensors",
    "ppo/metrics.jsonl", "ppo/rollouts.jsonl", "eval/completions_sft.jsonl",
    "eval/completions_rlhf.jsonl", "eval/eval.json", "metrics.json", "report_data.json",
    "report.html",
)  # fmt: skip
NAMED_FIGURES = (
    "demo_seconds", "win_rate_rlhf_vs_sft", "win_rate_rlhf_vs_reference", "toxicity_rate_sft",
    "toxicity_rate_rlhf", "rm_gold_accuracy", "labeler_pairwise_agreement",
)  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick demo (about a minute on one thread), shared by the tests below."""
    return quick_demo(tmp_path_factory.mktemp("demo") / "run", "--seed", "0")


@pytest.mark.slow
def test_quick_demo_leaves_every_artifact_and_improves_on_the_gold_judge(quick_run):
    out = quick_run
    missing = [name for name in ARTIFACTS if not (out / name).exists()]
    assert not missing
    metrics = json.loads((out / "metrics.json").read_text())
    for name in NAMED_FIGURES:
        assert isinstance(metrics[name], int | float), name
    assert 0.6 < metrics["labeler_pairwise_agreement"] < 0.95
    assert len(read_records(out / "rankings.jsonl", "ranking")) == 300 * 3
    assert metrics["n_pairs"] == len(read_records(out / "pairs.jsonl", "comparison"))
    # the tuned policy is better than where it started, by the judge nobody trained on
    assert metrics["gold_mean_rlhf"] > metrics["gold_mean_sft"]
    assert metrics["win_rate_rlhf_vs_sft"] > 0.5
    assert metrics["ppo_steps"] == 12
    # the evaluation's completions are the ones scored
    rlhf = read_records(out / "eval/completions_rlhf.jsonl", "completion")
    eval_prompts = {p.id: p for p in read_records(out / "world/prompts_eval.jsonl", "prompt")}
    assert len(rlhf) == 40 * 4
    gold = [gold_utility(eval_prompts[c.prompt_id], c.completion) for c in rlhf]
    assert sum(gold) / len(gold) == pytest.approx(metrics["gold_mean_rlhf"])
    # the report is one self-contained page with its pictures
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 5
    assert "http://" not in html and "https://" not in html
    assert set(metrics["targets"]) >= {"win_rate_rlhf_vs_sft", "demo_seconds"}


@pytest.mark.slow
def test_same_seed_same_run(quick_run, tmp_path):
    """Rerun the first stages with the same seed: the same files, byte for byte."""
    again = quick_demo(tmp_path / "again", "--seed", "0")
    for name in ("completions.jsonl", "rankings.jsonl", "pairs.jsonl", "rm_pairs.jsonl",
                 "eval/completions_rlhf.jsonl"):  # fmt: skip
        assert (quick_run / name).read_bytes() == (again / name).read_bytes(), name
    a = json.loads((quick_run / "metrics.json").read_text())
    b = json.loads((again / "metrics.json").read_text())
    for name in ("win_rate_rlhf_vs_sft", "rm_gold_accuracy", "gold_mean_rlhf"):
        assert a[name] == b[name], name


def test_gold_pairs_and_pair_accuracy():
    [p] = make_prompts(1, 3)
    ideal = p.metadata["ideal"]
    texts = [ideal, ideal + " extra words", "weather", ideal]  # the last ties with the first
    cs = [Completion(id=f"c{i}", prompt_id=p.id, completion=t) for i, t in enumerate(texts)]
    pairs = gold_pairs([p], cs)
    gold = [gold_utility(p, t) for t in texts]
    untied = sum(gold[i] != gold[j] for i in range(4) for j in range(i + 1, 4))
    assert len(pairs) == untied == 5  # six pairs, less the tie of the two ideal ones
    assert not any({q.chosen_id, q.rejected_id} == {"c0", "c3"} for q in pairs)
    for q in pairs:
        assert gold_utility(p, q.chosen) > gold_utility(p, q.rejected)
    scores = {c.id: gold_utility(p, c.completion) for c in cs}
    assert pair_accuracy(scores, pairs) == 1.0
    assert pair_accuracy({k: -v for k, v in scores.items()}, pairs) == 0.0
    assert pair_accuracy(scores, []) is None


def test_gold_pairs_leave_out_empty_completions():
    """A policy can write nothing; a comparison needs two texts (it raised before)."""
    [p] = make_prompts(1, 3)
    texts = [p.metadata["ideal"], "", "  ", "weather"]
    cs = [Completion(id=f"c{i}", prompt_id=p.id, completion=t) for i, t in enumerate(texts)]
    pairs = gold_pairs([p], cs)
    assert {(q.chosen_id, q.rejected_id) for q in pairs} == {("c0", "c3")}


def test_toxicity_reduction_counts_one_when_none_is_left():
    """A tuned policy with no rude completion at all meets the target (it read None,
    "not met", before): one of its n samples is counted, a lower bound."""
    assert toxicity_reduction(0.08, 0.01, 800) == pytest.approx(8.0)
    assert toxicity_reduction(0.08625, 0.0, 800) == pytest.approx(69.0)
    assert toxicity_reduction(0.0, 0.0, 800) is None


def test_split_ids_is_seeded_and_disjoint():
    ids = [f"p{i}" for i in range(50)]
    kept, held = split_ids(ids, 0.1, seed=0)
    assert len(held) == 5 and not kept & held and kept | held == set(ids)
    assert split_ids(ids, 0.1, seed=0) == (kept, held)
    assert split_ids(ids, 0.1, seed=1) != (kept, held)


def test_overoptimization_points_average_each_stretch_of_steps():
    prompts = make_prompts(2, 0)
    ideal = [p.metadata["ideal"] for p in prompts]
    rollouts = [
        {"step": s, "prompt": p.prompt, "completion": text, "score": float(s), "kl": 2.0 * s}
        for s in range(4) for p, text in zip(prompts, ideal, strict=True)
    ]  # fmt: skip
    points = overoptimization(rollouts, prompts, windows=2)
    assert len(points) == 2
    assert points[0]["proxy"] == 0.5 and points[1]["proxy"] == 2.5
    assert points[0]["kl"] == 1.0 and points[1]["kl"] == 5.0
    gold = sum(gold_utility(p, t) for p, t in zip(prompts, ideal, strict=True)) / 2
    assert points[0]["gold"] == pytest.approx(gold)


@pytest.mark.slow
def test_quick_demo_in_two_rounds(tmp_path):
    """`demo --rounds 2`: the rounds machinery between SFT and the report, the same
    label budget (300 documents x 3 labelers) split across the rounds."""
    from alignloop.loop import ROUND_KEYS

    out = quick_demo(tmp_path / "rounds", "--rounds", "2")
    metrics = json.loads((out / "metrics.json").read_text())
    assert [tuple(r) for r in metrics["rounds"]] == [ROUND_KEYS, ROUND_KEYS]
    assert [r["n_rankings"] for r in metrics["rounds"]] == [150 * 3, 150 * 3]
    assert metrics["n_rankings"] == 300 * 3
    for name in NAMED_FIGURES:
        assert isinstance(metrics[name], int | float), name
    last = metrics["rounds"][-1]
    assert metrics["win_rate_rlhf_vs_sft"] == last["win_rate_vs_sft"]
    assert metrics["gold_mean_rlhf"] == pytest.approx(last["gold_mean"])
    assert (out / "round-2" / "ppo" / "model.safetensors").exists()
    assert (out / "report.html").exists()
    data = json.loads((out / "report_data.json").read_text())
    for shown, record in zip(data["rounds"], metrics["rounds"], strict=True):
        assert len(shown.pop("side_by_side")) == 6  # each round's samples for the report
        assert shown == record


def test_quick_demo_with_a_reward_model_ensemble(tmp_path, capsys):
    """`demo --rm-ensemble 2`: a second reward model on the same pairs (another seed),
    PPO on their mean score minus the penalty times their spread, which it logs; the
    figures read the first (rm/)."""
    out = quick_demo(tmp_path / "ens", "--rm-ensemble", "2", "--rm-ensemble-penalty", "0.5")
    assert (out / "rm-2" / "model.safetensors").exists()
    first = (out / "rm" / "model.safetensors").read_bytes()
    assert (out / "rm-2" / "model.safetensors").read_bytes() != first  # another seed
    log = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").open()]
    spread = [r["ppo/ensemble_std"] for r in log if "ppo/ensemble_std" in r]
    assert spread and all(s > 0 for s in spread)
    from alignloop.cli import main

    capsys.readouterr()
    # one round only: a clear error, before any work
    assert main(["demo", "--quick", "--out", str(tmp_path / "no"), "--rm-ensemble", "2",
                 "--rounds", "2"]) != 0  # fmt: skip
    assert "--rm-ensemble is for the one-round demo; leave out --rounds" in capsys.readouterr().err
    assert not (tmp_path / "no" / "sft").exists()
