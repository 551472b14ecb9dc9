"""`alignloop train-rm` as users run it, in subprocesses: killed with SIGKILL and
resumed, and on two processes with torchrun (compared with an ordinary run, and with
fewer held-out prompts than processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _train_rm(model: Path, data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "train-rm", "--model", str(model), "--data", str(data["train"]),
        "--eval-data", str(data["eval"]), "--out", str(out), "--lr", "3e-3",
        "--warmup-ratio", "0.1", "--seed", "3", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_killed_and_resumed_run_equals_an_uninterrupted_one(tiny_rm, easy_data, tmp_path, runs):
    # 2 epochs of 30 batches: 60 steps, a checkpoint every 2, metrics every 5 steps.
    args = ("--batch-size", "4", "--epochs", "2", "--save-every", "2", "--log-every", "5",
            "--eval-every", "10")  # fmt: skip
    whole, out = runs.resume_after_sigkill(
        lambda out: _train_rm(tiny_rm, easy_data, out, *args), tmp_path, step=12, steps=60
    )  # the metrics log and the model: the same bytes
    whole = json.loads((whole / "eval.json").read_text())
    resumed = json.loads((out / "eval.json").read_text())
    assert resumed["steps"] == whole["steps"] == 60
    for key in ("accuracy", "mean_margin", "loss", "gain", "bias"):
        assert resumed[key] == pytest.approx(whole[key], abs=1e-5), key


@pytest.mark.slow
def test_two_processes_give_the_result_of_one(tiny_rm, easy_data, tmp_path, runs):
    from alignloop.cli import main

    # one process, 8 prompts a step ...
    one = tmp_path / "one"
    assert main(_train_rm(tiny_rm, easy_data, one, "--batch-size", "8", "--epochs", "2",
                          "--save-every", "0")) == 0  # fmt: skip
    # ... and two processes of 4 prompts each (the same global batches)
    two = tmp_path / "two"
    runs.run(_train_rm(tiny_rm, easy_data, two, "--batch-size", "4", "--epochs", "2",
                       "--save-every", "10"), processes=2)  # fmt: skip

    a = json.loads((one / "eval.json").read_text())
    b = json.loads((two / "eval.json").read_text())
    assert a["num_processes"] == 1 and b["num_processes"] == 2
    assert b["steps"] == a["steps"] == 30  # one optimizer step per global batch
    assert b["n"] == a["n"] == 80  # every held-out pair counted once over both processes
    assert b["accuracy"] == pytest.approx(a["accuracy"], abs=0.05)
    assert b["loss"] == pytest.approx(a["loss"], abs=0.02)
    # the learning-rate schedule is the same (not stepped once per process)
    lr_one = {x["step"]: x["rm/lr"] for x in runs.metrics(one) if "rm/lr" in x}
    lr_two = {x["step"]: x["rm/lr"] for x in runs.metrics(two) if "rm/lr" in x}
    assert lr_one.keys() == lr_two.keys() and lr_two == pytest.approx(lr_one)
    # both ranks wrote their share of each checkpoint
    last = two / "checkpoints" / "step-00000030"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in last.iterdir()}


@pytest.mark.slow
def test_two_processes_with_fewer_held_out_prompts_than_processes(tiny_rm, few_pairs, tmp_path,
                                                                  runs):  # fmt: skip
    """11 training prompts and 1 held out on 2 processes (one process has no held-out
    batch, and the last training batch gives it one prompt): the run ends, with the
    held-out figures of every pair counted once."""
    out = tmp_path / "rm"
    runs.run(["train-rm", "--model", str(tiny_rm), "--data", str(few_pairs), "--out", str(out),
              "--batch-size", "4", "--max-steps", "3", "--eval-every", "1", "--save-every", "2",
              "--eval-fraction", "0.1"], processes=2)  # fmt: skip
    final = json.loads((out / "eval.json").read_text())
    assert final["num_processes"] == 2
    assert final["steps"] == 2  # 11 prompts: global batches of 8 and 3
    assert final["n"] == 2  # the held-out prompt's two pairs
    evals = [x for x in runs.metrics(out) if "eval/n" in x]
    assert [x["eval/n"] for x in evals] == [2, 2, 2]  # after steps 1 and 2, and at the end
    assert (out / "model.safetensors").exists()
