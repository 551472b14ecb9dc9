"""PPO end to end on a tiny local policy: it learns a simple reward, a run killed with
SIGKILL resumes to the same final metrics, two processes (torchrun, gloo) train
together, and a reward model + critic started from it run the whole way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alignloop.train.ppo import TIME_KEYS, PPOConfig, train_ppo

REPO = Path(__file__).resolve().parents[2]
# One thread per process: a tiny model gains nothing from two, and on a busy 2-core
# machine oversubscribed threads make each step 10x slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


@pytest.fixture(scope="module")
def world(make_ppo_world) -> dict:
    """A tiny random policy, 64 world prompts and a reward-function file."""
    return make_ppo_world(64)


def cli_args(world, out: Path, **options) -> list[str]:
    base = {
        "policy": world["policy"],
        "prompts": world["prompts"],
        "out": out,
        "reward_fn": world["fn"],
        "max_new_tokens": 6,
        "batch_size": 8,
        "minibatch_size": 4,
        "ppo_epochs": 2,
        "lr": 3e-3,
        "missing_eos_score": "none",
        "sample_every": 2,
        "mixed_precision": "no",
    }
    args = []
    for key, value in {**base, **options}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def metrics(out: Path) -> list[dict]:
    """The metrics log without the timings (which differ between identical runs)."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in lines]


def final_metrics(out: Path) -> dict:
    final = json.loads((out / "final_metrics.json").read_text())
    return {k: v for k, v in final.items() if k not in TIME_KEYS}


def run_module(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alignloop.train.ppo", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_two_processes(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 -m alignloop.train.ppo ARGS` (gloo on
    CPU). A process left waiting on the other ends the test in TimeoutExpired."""
    torchrun = Path(sys.executable).with_name("torchrun")
    return subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "alignloop.train.ppo",
         *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )  # fmt: skip


def first_prompts(world, n: int, path: Path) -> Path:
    """A prompts file with the world's first `n` prompts."""
    path.write_text("".join(world["prompts"].read_text().splitlines(keepends=True)[:n]))
    return path


@pytest.mark.slow
def test_ppo_learns_a_simple_reward_with_bounded_kl(tmp_path, world, one_thread):
    """The reward counts four target words among ~290; a random policy writes about
    0.1 of them in 8 tokens. PPO must raise that clearly, and the penalized objective
    (score - beta * KL) must rise too: the KL bought is worth its price."""
    config = PPOConfig(
        policy=str(world["policy"]),
        prompts=world["prompts"],
        out=tmp_path / "out",
        reward_fn=world["fn"],
        max_new_tokens=8,
        batch_size=16,
        minibatch_size=8,
        max_steps=40,
        lr=3e-3,
        kl_coef=0.1,
        temperature=1.0,
        scheduler="constant",
        missing_eos_score=None,
        save_every=0,
        sample_every=0,
        mixed_precision="no",
    )
    train_ppo(config)
    log = [r for r in metrics(tmp_path / "out") if "ppo/reward_mean" in r]
    first, last = log[:5], log[-5:]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    reward_before, reward_after = mean(first, "ppo/reward_mean"), mean(last, "ppo/reward_mean")
    kl_after = mean(last, "ppo/kl")
    print(f"reward {reward_before:.3f} -> {reward_after:.3f}, KL {kl_after:.2f}")
    # policy == reference on the first rollout: KL 0, up to the sampler's log-probabilities
    # (the old ones under --recompute-logprobs auto) differing from a full pass by ~1e-7
    assert abs(log[0]["ppo/kl"]) < 1e-5
    assert reward_after > max(5 * reward_before, 2.0)
    assert mean(last, "ppo/rlhf_reward") > mean(first, "ppo/rlhf_reward") + 1.0
    # KL is held to what the score gain pays for (beta * KL < gain) and stays finite
    assert 0 < kl_after < (reward_after - reward_before) / config.kl_coef
    assert all(r["ppo/entropy"] > 0.5 for r in log)


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_final_metrics(tmp_path, world):
    common = {"max_steps": 12, "save_every": 2}
    straight = run_module(cli_args(world, tmp_path / "straight", **common))
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignloop.train.ppo", *cli_args(world, out, **common)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    marker = out / "checkpoints" / "step-00000004" / "trainer_state.json"
    deadline = time.time() + 180
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -9, f"the run ended before it could be killed: {err[-2000:]}"
    assert not (out / "final_metrics.json").exists()

    resumed = run_module([*cli_args(world, out, **common), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert metrics(out) == metrics(tmp_path / "straight")
    assert final_metrics(out) == final_metrics(tmp_path / "straight")
    from safetensors.torch import load_file

    a, b = (
        load_file(out / "model.safetensors"),
        load_file(tmp_path / "straight" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_with_torchrun(tmp_path, world):
    out = tmp_path / "out"
    result = run_two_processes(cli_args(world, out, max_steps=3, save_every=2))
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["num_processes"] == 2
    assert final["episodes"] == 3 * 8 * 2  # steps x batch x processes
    assert final["stop_reason"] == "max_steps"
    assert (out / "checkpoints" / "step-00000002").is_dir()
    assert (out / "model.safetensors").exists()


@pytest.mark.slow
def test_packed_rows_on_two_processes_train_what_padded_rows_do(tmp_path, world):
    """Issue 17: --pack-rows under DDP reads the LM head outside the model's forward;
    its gradients must still be averaged over the processes. Three steps of two
    processes end with the weights and figures of the padded run, to float rounding
    (a process training on its own gradients alone would be a step's size away)."""
    from safetensors.torch import load_file

    runs = {}
    for pack in ("--no-pack-rows", "--pack-rows"):
        out = tmp_path / pack
        result = run_two_processes([*cli_args(world, out, max_steps=3, save_every=0), pack])
        assert result.returncode == 0, result.stderr[-3000:]
        runs[pack] = (load_file(out / "model.safetensors"), metrics(out))
    (padded, log_padded), (packed, log_packed) = runs["--no-pack-rows"], runs["--pack-rows"]
    start = load_file(world["policy"] / "model.safetensors")
    for name, w in padded.items():  # each weight moved by ~2e-2; the two runs ~2e-7 apart
        assert (w - start[name]).abs().max().item() > 1e-3, name
        assert (w - packed[name]).abs().max().item() < 1e-5, name
    rows = [(a, b) for a, b in zip(log_padded, log_packed, strict=True) if "ppo/kl" in a]
    for a, b in rows:
        assert b["ppo/pad_share_update"] <= a["ppo/pad_share_update"]
        for k in ("ppo/reward_mean", "ppo/kl", "ppo/pg_loss", "ppo/v_loss"):
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-4), k


@pytest.mark.slow
def test_two_processes_with_few_prompts_neither_waits_on_the_other(tmp_path, world):
    """17 prompts, 8 per process: one full rollout per pass over them; the trailing 1
    (fewer than the processes) is dropped on both alike, so both take the same steps
    and end. 12 prompts, fewer than one rollout of both needs: a clear error, raised
    on both before any collective, and both end (torchrun may stop the second before
    it prints)."""
    prompts = first_prompts(world, 17, tmp_path / "17.jsonl")
    out = tmp_path / "out"
    result = run_two_processes(cli_args(world, out, prompts=prompts, max_steps=3, save_every=0))
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["steps"] == 3 and final["episodes"] == 3 * 8 * 2
    assert final["stop_reason"] == "max_steps"

    prompts = first_prompts(world, 12, tmp_path / "12.jsonl")
    result = run_two_processes(cli_args(world, tmp_path / "few", prompts=prompts, max_steps=3))
    assert result.returncode != 0
    assert "12 prompts are fewer than one rollout needs (--batch-size 8 x 2" in result.stderr


@pytest.mark.slow
def test_reward_model_plus_reward_fn_and_critic_from_the_reward_model(
    tmp_path, world, tiny_rm, one_thread
):
    """A decoder reward model (the fixture's tiny Llama) scores decoded texts, a
    reward function adds to it, the critic starts from the reward model, and the
    tuned policy is saved as an ordinary HF directory that loads and generates."""
    from transformers import AutoModelForCausalLM

    from alignloop.generate import sample
    from alignloop.models import load_tokenizer

    out = tmp_path / "out"
    final = train_ppo(
        PPOConfig(
            policy=str(world["policy"]),
            prompts=world["prompts"],
            out=out,
            reward_model=str(tiny_rm),
            reward_fn=world["fn"],
            max_new_tokens=6,
            batch_size=8,
            minibatch_size=4,
            max_steps=2,
            kl_target=1.0,
            kl_horizon=100,
            save_every=0,
            missing_eos_score=None,
            sample_every=1,
            mixed_precision="no",
        )
    )
    assert final["steps"] == 2 and final["stop_reason"] == "max_steps"
    assert final["ppo/beta"] != 0.05  # the adaptive controller moved beta
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2 * 3
    policy = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = load_tokenizer(out)
    s = sample(policy, tokenizer, ["the weather was cold . tl;dr :"], max_new_tokens=3)
    assert len(s.completions) == 1


@pytest.mark.slow
def test_lora_policy_head_saves_adapter_and_stops_on_reward_target(tmp_path, world, one_thread):
    out = tmp_path / "out"
    final = train_ppo(
        PPOConfig(
            policy=str(world["policy"]),
            prompts=world["prompts"],
            out=out,
            reward_fn=world["fn"],
            max_new_tokens=6,
            batch_size=8,
            minibatch_size=4,
            max_steps=20,
            lora_r=4,
            critic="policy-head",
            save_adapter=True,
            reward_target=-100.0,
            reward_window=2,
            save_every=0,
            sample_every=0,
            mixed_precision="no",
        )
    )
    assert final["steps"] == 2 and final["stop_reason"].startswith("reward_target")
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()


def test_a_saved_adapter_names_its_base_model_from_anywhere(tmp_path, world, one_thread,
                                                            monkeypatch):  # fmt: skip
    """--save-adapter with the policy given as a relative path: adapter_config.json
    names the base by its absolute path, so the adapter loads from another working
    directory (a hub id would be kept as it is)."""
    from peft import AutoPeftModelForCausalLM

    monkeypatch.chdir(Path(world["policy"]).parent)
    out = tmp_path / "out"
    train_ppo(
        PPOConfig(
            policy=Path(world["policy"]).name, prompts=world["prompts"], out=out,
            reward_fn=world["fn"], max_new_tokens=4, batch_size=8, minibatch_size=4,
            max_steps=1, lora_r=2, critic="policy-head", save_adapter=True, save_every=0,
            sample_every=0, mixed_precision="no",
        )
    )  # fmt: skip
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(Path(world["policy"]).resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = AutoPeftModelForCausalLM.from_pretrained(out)
    assert model.peft_config["default"].r == 2


@pytest.mark.slow
def test_kl_budget_stops_the_run(tmp_path, world, one_thread):
    final = train_ppo(
        PPOConfig(
            policy=str(world["policy"]),
            prompts=world["prompts"],
            out=tmp_path / "out",
            reward_fn=world["fn"],
            max_new_tokens=6,
            batch_size=8,
            minibatch_size=4,
            max_steps=30,
            lr=3e-2,
            kl_budget=0.5,
            save_every=0,
            sample_every=0,
            mixed_precision="no",
        )
    )
    assert final["stop_reason"].startswith("kl_budget") and final["steps"] < 30


@pytest.mark.slow
def test_reward_model_with_another_tokenizer(tmp_path, world, minilm_path, one_thread):
    """An encoder reward model with its own WordPiece vocabulary (all-MiniLM-L6-v2)
    scores the policy's word-level completions: they are decoded and re-encoded, and
    the score logged with each sample is the reward model's score of that text."""
    from alignloop.models import RewardModel

    rm_dir = RewardModel.from_pretrained(minilm_path).save_pretrained(tmp_path / "rm")
    out = tmp_path / "out"
    final = train_ppo(
        PPOConfig(
            policy=str(world["policy"]),
            prompts=world["prompts"],
            out=out,
            reward_model=str(rm_dir),
            critic="policy-head",
            max_new_tokens=6,
            batch_size=4,
            minibatch_size=4,
            max_steps=1,
            save_every=0,
            missing_eos_score=None,
            sample_every=1,
            mixed_precision="no",
        )
    )
    assert final["steps"] == 1 and final["ppo/kl"] == 0.0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    rm = RewardModel.from_pretrained(rm_dir)
    expected = rm.score([s["prompt"] for s in samples], [s["completion"] for s in samples])
    assert [s["score"] for s in samples] == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_two_heads_weighed_and_gated_from_the_command_line(tmp_path, world, two_head_rm):
    """`train-ppo --reward a=1 --reward b=0.5 --safety-head b` on a reward model of two
    heads (issue 16): each step logs both heads' mean scores and the gated share; with
    a threshold below every score the gate stays open and the mean reward is the mean
    of a + 0.5 b, with one above every score it closes on every response: b alone."""
    options = {"reward_model": two_head_rm, "reward_fn": "none", "max_steps": 2,
               "safety_head": "b", "sample_every": 0}  # fmt: skip
    out = tmp_path / "open"
    args = [*cli_args(world, out, safety_threshold=-100, **options),
            "--reward", "a=1", "--reward", "b=0.5"]  # fmt: skip
    result = run_module(args)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [r for r in metrics(out) if "ppo/reward_mean" in r]
    assert len(steps) == 2
    for r in steps:
        assert r["ppo/safety_gated"] == 0.0
        assert r["ppo/reward_mean"] == pytest.approx(r["ppo/score_a"] + 0.5 * r["ppo/score_b"])
    assert {"ppo/score_a", "ppo/score_b", "ppo/safety_gated"} <= set(final_metrics(out))

    shut = tmp_path / "shut"
    config = PPOConfig(
        policy=str(world["policy"]), prompts=world["prompts"], out=shut,
        reward_model=str(two_head_rm), reward={"a": 1.0, "b": 0.5}, safety_head="b",
        safety_threshold=100.0, max_new_tokens=6, batch_size=8, minibatch_size=4,
        max_steps=1, missing_eos_score=None, save_every=0, sample_every=0,
        mixed_precision="no", log_rollouts=True,
    )  # fmt: skip
    final = train_ppo(config)
    # Each episode in rollouts.jsonl has each head's score and the gate: shut, b alone.
    episodes = [json.loads(x) for x in (shut / "rollouts.jsonl").read_text().splitlines()]
    assert len(episodes) == 8 and all(e["safety_gated"] == 1.0 for e in episodes)
    assert [e["score"] for e in episodes] == pytest.approx([e["score_b"] for e in episodes])
    assert sum(e["score_a"] for e in episodes) / 8 == pytest.approx(final["ppo/score_a"])
    assert final["ppo/safety_gated"] == 1.0
    assert final["ppo/reward_mean"] == pytest.approx(final["ppo/score_b"])
    weighed = final["ppo/score_a"] + 0.5 * final["ppo/score_b"]
    assert final["ppo/reward_mean"] != pytest.approx(weighed)  # the gate made a difference
