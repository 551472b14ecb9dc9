"""scripts/demo_seeds.py: the figures of runs on several seeds, their mean and spread
(read back from each run's metrics.json with --reuse, so no demo runs here)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo_seeds.py"


def _script():
    spec = importlib.util.spec_from_file_location("demo_seeds", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _metrics(win: float, rm: float, met: bool) -> dict:
    return {
        "win_rate_rlhf_vs_sft": win,
        "ppo_stop_reason": "max_steps",  # not a number: left out
        "rounds": [{"round": 1, "win_rate_vs_sft": win - 0.1, "rm_gold_accuracy_on_policy": rm}],
        "targets": {"win_rate_rlhf_vs_sft": {"target": ">= 0.8", "value": win, "met": met}},
    }


def test_mean_and_spread_over_the_seeds_runs(tmp_path, capsys):
    for seed, (win, rm, met) in enumerate([(0.7, 0.6, False), (0.9, 0.8, True)]):
        run = tmp_path / f"seed-{seed}"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps(_metrics(win, rm, met)))
    assert _script().main(["--seeds", "0", "1", "--out", str(tmp_path), "--reuse"]) == 0
    result = json.loads((tmp_path / "seeds.json").read_text())
    summary = result["summary"]
    assert set(summary) == {
        "win_rate_rlhf_vs_sft",
        "round_1/win_rate_vs_sft",
        "round_1/rm_gold_accuracy_on_policy",
        "target_met/win_rate_rlhf_vs_sft",
    }
    win = summary["win_rate_rlhf_vs_sft"]
    assert win["mean"] == pytest.approx(0.8) and win["n"] == 2
    assert win["std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.7 and 0.9
    assert (win["min"], win["max"]) == (0.7, 0.9)
    assert summary["round_1/win_rate_vs_sft"]["mean"] == pytest.approx(0.7)
    assert summary["target_met/win_rate_rlhf_vs_sft"]["mean"] == 0.5  # met on one seed of two
    assert result["per_seed"]["1"]["win_rate_rlhf_vs_sft"] == 0.9
    assert "win_rate_rlhf_vs_sft" in capsys.readouterr().out


def test_one_seed_has_no_standard_deviation():
    spread = _script().spread([0.75])
    assert spread == {"mean": 0.75, "std": None, "min": 0.75, "max": 0.75, "n": 1}


def test_the_personal_demos_nested_figures_are_flattened():
    metrics = {"personal": {"labelers": {"ann": {"strong_taste": True, "rm_accuracy_personal":
               0.8, "policy_win_rate_own_utility": None}}, "new_user": {"name": "x",
               "accuracy": 0.7}}}  # fmt: skip
    assert _script().figures(metrics) == {
        "personal/labelers/ann/rm_accuracy_personal": 0.8,  # not the flag, None or the name
        "personal/new_user/accuracy": 0.7,
    }
