"""`alignloop train-rm` as users run it, in subprocesses: killed with SIGKILL and
resumed, and on two processes with torchrun. Both compare with an ordinary run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _train_rm(model: Path, data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "train-rm", "--model", str(model), "--data", str(data["train"]),
        "--eval-data", str(data["eval"]), "--out", str(out), "--lr", "3e-3",
        "--warmup-ratio", "0.1", "--seed", "3", *extra,
    ]  # fmt: skip


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _metrics(out: Path) -> list[dict]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("eval/seconds", None)  # wall time, the only thing allowed to differ
    return lines


@pytest.mark.slow
def test_killed_and_resumed_run_equals_an_uninterrupted_one(tiny_rm, easy_data, tmp_path):
    # 2 epochs of 30 batches: 60 steps, a checkpoint every 2, metrics every 5 steps.
    args = ("--batch-size", "4", "--epochs", "2", "--save-every", "2", "--log-every", "5",
            "--eval-every", "10")  # fmt: skip
    alignloop = str(BIN / "alignloop")
    _run([alignloop, *_train_rm(tiny_rm, easy_data, tmp_path / "whole", *args)])

    out = tmp_path / "killed"
    run = subprocess.Popen([alignloop, *_train_rm(tiny_rm, easy_data, out, *args)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    checkpoints = out / "checkpoints"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and run.poll() is None:
            steps = [int(d.name[5:]) for d in checkpoints.glob("step-*")]
            if steps and max(steps) >= 12:  # well into the first epoch
                break
            time.sleep(0.005)
        os.kill(run.pid, signal.SIGKILL)
    finally:
        run.wait(timeout=30)
    assert run.returncode == -signal.SIGKILL  # killed, not finished
    kept = sorted(int(d.name[5:]) for d in checkpoints.glob("step-*"))
    assert kept and 12 <= kept[-1] < 60, kept  # really mid-way
    assert not (out / "eval.json").exists()

    _run([alignloop, *_train_rm(tiny_rm, easy_data, out, *args, "--resume")])

    whole = json.loads((tmp_path / "whole" / "eval.json").read_text())
    resumed = json.loads((out / "eval.json").read_text())
    assert resumed["steps"] == whole["steps"] == 60
    for key in ("accuracy", "mean_margin", "loss", "gain", "bias"):
        assert resumed[key] == pytest.approx(whole[key], abs=1e-5), key
    assert _metrics(out) == _metrics(tmp_path / "whole")  # every line, in order
    assert (tmp_path / "whole" / "model.safetensors").read_bytes() == (
        out / "model.safetensors"
    ).read_bytes()


@pytest.mark.slow
def test_two_processes_give_the_result_of_one(tiny_rm, easy_data, tmp_path):
    from alignloop.cli import main

    # one process, 8 prompts a step ...
    one = tmp_path / "one"
    assert main(_train_rm(tiny_rm, easy_data, one, "--batch-size", "8", "--epochs", "2",
                          "--save-every", "0")) == 0  # fmt: skip
    # ... and two processes of 4 prompts each (the same global batches)
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "alignloop.cli",
          *_train_rm(tiny_rm, easy_data, two, "--batch-size", "4", "--epochs", "2",
                     "--save-every", "10")], env=env)  # fmt: skip

    a = json.loads((one / "eval.json").read_text())
    b = json.loads((two / "eval.json").read_text())
    assert a["num_processes"] == 1 and b["num_processes"] == 2
    assert b["steps"] == a["steps"] == 30  # one optimizer step per global batch
    assert b["n"] == a["n"] == 80  # every held-out pair counted once over both processes
    assert b["accuracy"] == pytest.approx(a["accuracy"], abs=0.05)
    assert b["loss"] == pytest.approx(a["loss"], abs=0.02)
    # the learning-rate schedule is the same (not stepped once per process)
    lr_one = {x["step"]: x["rm/lr"] for x in _metrics(one) if "rm/lr" in x}
    lr_two = {x["step"]: x["rm/lr"] for x in _metrics(two) if "rm/lr" in x}
    assert lr_one.keys() == lr_two.keys() and lr_two == pytest.approx(lr_one)
    # both ranks wrote their share of each checkpoint
    last = two / "checkpoints" / "step-00000030"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in last.iterdir()}
