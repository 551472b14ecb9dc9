"""`alignloop demo --quick`: every stage that exists leaves its files, same seed same run."""

import json

from alignloop.cli import main
from alignloop.io import read_records


def run(tmp_path, name, seed=0):
    out = tmp_path / name
    assert main(["demo", "--quick", "--out", str(out), "--seed", str(seed)]) == 0
    return out


def test_quick_demo_leaves_every_artifact(tmp_path):
    out = run(tmp_path, "a")
    for name in ("completions.jsonl", "rankings.jsonl", "pairs.jsonl", "consensus.jsonl",
                 "agreement.json", "metrics.json", "world/prompts_train.jsonl",
                 "world/prompts_eval.jsonl", "world/tokenizer/tokenizer.json",
                 "world/policy-init/config.json"):  # fmt: skip
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.6 < metrics["labeler_pairwise_agreement"] < 0.9
    rankings = read_records(out / "rankings.jsonl", "ranking")
    assert len(rankings) == 60 * 3  # every labelled prompt, three labelers each
    assert metrics["n_pairs"] == len(read_records(out / "pairs.jsonl", "comparison"))


def test_same_seed_same_files(tmp_path):
    a, b = run(tmp_path, "a"), run(tmp_path, "b")
    for name in ("completions.jsonl", "rankings.jsonl", "pairs.jsonl", "agreement.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = run(tmp_path, "c", seed=1)
    assert (a / "rankings.jsonl").read_bytes() != (c / "rankings.jsonl").read_bytes()
