"""`alignloop loop`: rounds in their directories, the figures of each round, the stop
rules, and resuming after SIGKILL inside a round's PPO to the same files and figures."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from alignloop.cli import main
from alignloop.config import ConfigError
from alignloop.loop.loop_config import LoopConfig
from alignloop.loop.rounds import ROUND_KEYS, _round_prompts, _stop_reason
from alignloop.schema import Prompt

from .conftest import ENV, loop_command, run_loop_process

ROUND_FILES = (
    "prompts.jsonl", "completions.jsonl", "rankings.jsonl", "agreement.json", "pairs.jsonl",
    "consensus.jsonl", "rm_pairs.jsonl", "rm_train.jsonl", "rm/model.safetensors",
    "rm/held_out.json", "ppo/model.safetensors", "ppo/metrics.jsonl", "ppo/rollouts.jsonl",
    "eval/completions_rlhf.jsonl", "eval/eval.json", "metrics.json",
)  # fmt: skip
SAME_BYTES = (
    "completions.jsonl", "rankings.jsonl", "pairs.jsonl", "rm_train.jsonl",
    "rm/model.safetensors", "ppo/model.safetensors", "eval/completions_rlhf.jsonl",
)  # fmt: skip


def _config(**keys) -> LoopConfig:
    return LoopConfig(out=Path("run"), policy="p", prompts=Path("prompts.jsonl"), **keys)


def _record(n, win, gold=None, rankings=24):
    return {"round": n, "n_rankings": rankings, "win_rate_vs_sft": win, "gold_mean": gold}


def test_stop_rules():
    def reason(records, **keys):
        return _stop_reason(SimpleNamespace(cfg=_config(**keys)), len(records), records)

    assert reason([_record(1, 0.6)], rounds=3) is None
    assert reason([_record(1, 0.6), _record(2, 0.7), _record(3, 0.8)], rounds=3) == "rounds: 3"
    assert reason([_record(1, 0.81)], target_win_rate=0.8).startswith("target: win rate")
    assert reason([_record(1, 0.5, gold=1.5)], target_reward=1.0).startswith("target: held-out")
    assert reason([_record(1, 0.5, rankings=9)], label_budget=10, overlap=3).startswith(
        "label budget: 9 of 10"
    )
    assert reason([_record(1, 0.5, rankings=6)], label_budget=10, overlap=3) is None
    no_gain = [_record(1, 0.6), _record(2, 0.61)]
    assert reason(no_gain, stop_on_no_gain=True) is None
    assert reason(no_gain, stop_on_no_gain=True, min_gain=0.05).startswith("no gain")


def test_round_prompts_move_on_wrap_around_and_fit_the_label_budget():
    pool = [Prompt(id=f"p{i}", prompt=f"text {i}") for i in range(10)]

    def ids(n, state_rounds=None, **keys):
        run = SimpleNamespace(cfg=_config(**keys), prompts=pool,
                              state={"rounds": state_rounds or {}})  # fmt: skip
        return [p.id for p in _round_prompts(run, n)]

    assert ids(1, prompts_per_round=4) == ["p0", "p1", "p2", "p3"]
    assert ids(3, prompts_per_round=4) == ["p8", "p9", "p0", "p1"]
    assert ids(2, round_prompts=[6, 2]) == ["p6", "p7"]
    assert ids(3, round_prompts=[6, 2]) == ["p8", "p9"]
    # 12 of 15 rankings used, 3 labelers a prompt: one prompt left
    spent = {"1": {"n_rankings": 12}}
    assert ids(2, spent, prompts_per_round=4, label_budget=15, overlap=3) == ["p4"]


def test_config_keys_are_checked(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--server"):
        _config(source="server")
    with pytest.raises(ConfigError, match="--ai-judge"):
        _config(source="judge")
    bad = tmp_path / "loop.yaml"
    bad.write_text("out: run\npolicy: p\nprompts: x.jsonl\nppo_stpes: 3\n")
    assert main(["loop", "--config", str(bad)]) == 2
    assert "unknown key 'ppo_stpes'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_world):
    """Two tiny rounds, run to the end in a process of their own."""
    import yaml

    from .conftest import TINY

    root = tmp_path_factory.mktemp("loop")
    config = root / "loop.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(root / "run"), "policy": str(tiny_world["policy_init"]),
        "prompts": str(tiny_world["prompts_train"]),
        "eval_prompts": str(tiny_world["prompts_eval"]), **TINY,
    }))  # fmt: skip
    done = run_loop_process(config)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run", done


def _rounds_without_time(out: Path) -> list[dict]:
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rounds]


@pytest.mark.slow
def test_rounds_leave_their_files_and_figures(uninterrupted):
    out, done = uninterrupted
    for n in (1, 2):
        missing = [f for f in ROUND_FILES if not (out / f"round-{n}" / f).exists()]
        assert not missing, (n, missing)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [tuple(r) for r in metrics["rounds"]] == [ROUND_KEYS, ROUND_KEYS]
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert [r["n_rankings"] for r in metrics["rounds"]] == [12 * 2, 12 * 2]
    assert metrics["stop_reason"] == "rounds: 2"
    for r in metrics["rounds"]:
        assert 0.0 <= r["win_rate_vs_sft"] <= 1.0 and r["kl_to_sft"] is not None
        assert r["rm_gold_accuracy_on_policy"] is not None
    # round 2 labels the next 12 prompts, sampled from round 1's policy
    first = json.loads((out / "round-1" / "prompts.jsonl").read_text().splitlines()[0])
    second = json.loads((out / "round-2" / "prompts.jsonl").read_text().splitlines()[0])
    assert (first["id"], second["id"]) == ("train-00000", "train-00012")
    policies = {json.loads(line)["policy"]
                for line in (out / "round-2" / "completions.jsonl").read_text().splitlines()}
    assert policies == {"round-1"}
    # the reward model of round 2 trains on both rounds' pairs
    n1 = len((out / "round-1" / "rm_pairs.jsonl").read_text().splitlines())
    n2 = len((out / "round-2" / "rm_pairs.jsonl").read_text().splitlines())
    assert len((out / "round-2" / "rm_train.jsonl").read_text().splitlines()) == n1 + n2
    assert "round 2:" in done.stderr  # one summary line per round
    data = json.loads((out / "report_data.json").read_text())
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html


@pytest.mark.slow
def test_sigkill_inside_ppo_resumes_to_the_same_files_and_figures(
    uninterrupted, loop_yaml, tmp_path
):
    reference, _ = uninterrupted
    out = tmp_path / "killed"
    config = loop_yaml(out)
    proc = subprocess.Popen(loop_command(config), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    checkpoints = out / "round-2" / "ppo" / "checkpoints"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if any(checkpoints.glob("step-*")):  # a complete checkpoint (renamed into place)
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    state = json.loads((out / "state.json").read_text())
    assert state["rounds"]["1"]["done"][-1] == "evaluate"
    assert "ppo" not in state["rounds"]["2"]["done"]

    again = run_loop_process(config)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr  # PPO went on from its checkpoint
    for n in (1, 2):
        for name in SAME_BYTES:
            a = (reference / f"round-{n}" / name).read_bytes()
            assert a == (out / f"round-{n}" / name).read_bytes(), (n, name)
    assert _rounds_without_time(out) == _rounds_without_time(reference)


@pytest.mark.slow
def test_a_finished_run_runs_nothing_again(uninterrupted):
    out, _ = uninterrupted
    before = (out / "round-2" / "ppo" / "model.safetensors").stat().st_mtime_ns
    config = next(out.parent.glob("*.yaml"))
    again = run_loop_process(config)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "round-2" / "ppo" / "model.safetensors").stat().st_mtime_ns == before
    assert "round 2 · PPO" not in again.stderr


@pytest.mark.parametrize(
    ("ppo_init", "reference", "start", "kl_reference"),
    [
        ("previous", "sft", "round-1/ppo", "p"),  # the default: go on, KL to the start
        ("previous", "previous", "round-1/ppo", None),  # KL to where it starts
        ("start", "sft", "p", None),  # anew from the start, which is the reference
        ("start", "previous", "p", "round-1/ppo"),
    ],
)
def test_round_two_ppo_starts_and_keeps_its_kl_where_the_keys_say(
    monkeypatch, tmp_path, ppo_init, reference, start, kl_reference
):
    """Round 2's PPO: from the last round's policy or the start (`ppo_init`), the KL to
    the start or the last round's policy (`reference`); None lets train-ppo take the
    policy it starts from as the reference."""
    import alignloop.train.ppo as ppo
    from alignloop.loop import rounds

    seen = {}

    def fake_train_ppo(config):
        seen["policy"], seen["reference"] = config.policy, config.reference
        return {"steps": 1, "episodes": 2, "stop_reason": "max_steps"}

    monkeypatch.setattr(ppo, "train_ppo", fake_train_ppo)
    cfg = _config(ppo_init=ppo_init, reference=reference)
    (tmp_path / "round-2").mkdir()
    run = SimpleNamespace(
        cfg=cfg, round_dir=lambda n: tmp_path / f"round-{n}",
        policy_before=lambda n: "p" if n == 1 else f"round-{n - 1}/ppo",
        rm_dir=lambda n, criterion: tmp_path / f"round-{n}" / "rm",
    )  # fmt: skip
    rounds._ppo(run, 2)
    assert seen == {"policy": start, "reference": kl_reference}
    rounds._ppo(run, 1)  # round 1 starts from the start, its own reference
    assert seen == {"policy": "p", "reference": None}
