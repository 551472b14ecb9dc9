"""The SFT trainer on CPU in seconds: it changes every weight and learns the
references, LoRA is merged into an ordinary directory, a NaN loss stops the run with
its last good checkpoint; and in subprocesses, a run killed with SIGKILL resumes to
the same log and model, and two processes end with fewer held-out prompts than
processes.

The policy is the tiny random Llama of the trainer tests' world (`make_ppo_world`),
the targets its world prompts' references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from alignloop.train.sft import SFTConfig, train_sft


@pytest.fixture(scope="module")
def world(make_ppo_world) -> dict:
    """A tiny random policy and 24 world prompts: 19 to train on, 5 held out."""
    return make_ppo_world(24)


def _config(world: dict, out: Path, **kw) -> SFTConfig:
    """10 steps (2 epochs of 5 batches) that visibly lower the loss."""
    base = dict(
        model=str(world["policy"]), prompts=world["prompts"], out=out, max_length=128,
        lr=3e-3, batch_size=4, epochs=2, warmup_ratio=0.0, eval_fraction=0.2, eval_every=0,
        save_every=0, log_every=1, mixed_precision="no",
    )  # fmt: skip
    return SFTConfig(**{**base, **kw})


def _cli_args(world: dict, out: Path, *extra: str) -> list[str]:
    return [
        "train-sft", "--model", str(world["policy"]), "--prompts", str(world["prompts"]),
        "--out", str(out), "--max-length", "128", "--lr", "3e-3", "--batch-size", "4",
        "--eval-fraction", "0.2", "--warmup-ratio", "0.1", "--mixed-precision", "no", *extra,
    ]  # fmt: skip


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sft") / "out"
    return out, train_sft(_config(world, out, eval_every=5))


def test_training_changes_every_weight_and_learns_the_references(trained, world):
    out, final = trained
    before, after = _weights(world["policy"]), _weights(out)
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"not trained: {unchanged}"
    assert any(".layers.0.self_attn." in k for k in before)
    assert final["n_train"] == 19 and final["n_eval"] == 5
    assert final["steps"] == 10 and final["num_processes"] == 1

    log = _log(out)
    train = [x["sft/loss"] for x in log if "sft/loss" in x]
    held = [x["eval/loss"] for x in log if "eval/loss" in x]
    assert len(train) == 10 and train[-1] < train[0] - 0.25  # the loss falls ...
    assert len(held) == 2 and final["eval_loss"] == held[-1] < held[0]  # ... held out too
    assert json.loads((out / "eval.json").read_text()) == final
    assert log[-1]["eval/eval_loss"] == final["eval_loss"]


def test_one_scheduler_step_per_optimizer_step_under_accumulation(world, tmp_path):
    """grad_accum 2: 5 optimizer steps of 2 batches; the learning rate follows those 5
    steps (a linear decay from 3e-3 to 0), not the 10 batches."""
    out = tmp_path / "out"
    final = train_sft(_config(world, out, grad_accum=2, scheduler="linear"))
    assert final["steps"] == 5
    lrs = [x["sft/lr"] for x in _log(out) if "sft/lr" in x]
    assert lrs == pytest.approx([3e-3 * (5 - s) / 5 for s in range(1, 6)])


def test_lora_trains_and_saves_a_merged_ordinary_directory(world, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    train_sft(_config(world, out, lora_r=4))
    assert not (out / "adapter_config.json").exists()  # merged, not an adapter
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(model).__name__ == "LlamaForCausalLM"
    before, after = _weights(world["policy"]), _weights(out)
    assert before.keys() == after.keys()  # no lora_A / base_layer names left
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    linear = {k for k in before if k.endswith("_proj.weight")}
    assert linear and linear <= changed  # every linear layer's adapter merged in
    assert "model.embed_tokens.weight" not in changed  # frozen under LoRA


def test_nan_loss_stops_with_the_last_good_checkpoint(world, tmp_path, monkeypatch):
    import alignloop.train.sft as sft
    from alignloop.train import TrainingError

    real = sft.sft_loss
    calls = {"n": 0}

    def nan_from_the_fifth_call(*args, **kwargs):
        calls["n"] += 1
        loss, n = real(*args, **kwargs)
        return (loss if calls["n"] < 5 else loss * float("nan")), n

    monkeypatch.setattr(sft, "sft_loss", nan_from_the_fifth_call)
    out = tmp_path / "out"
    with pytest.raises(TrainingError) as e:
        train_sft(_config(world, out, save_every=2, keep_checkpoints=5))
    checkpoint = out / "checkpoints" / "step-00000004"
    assert "nan at step 5" in str(e.value) and str(checkpoint) in str(e.value)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000002", "step-00000004",
    ]  # fmt: skip
    assert not (out / "eval.json").exists() and not (out / "model.safetensors").exists()

    # the kept checkpoint is good: with the loss repaired, --resume finishes from it
    monkeypatch.setattr(sft, "sft_loss", real)
    final = train_sft(_config(world, out, save_every=2, resume=True))
    assert final["steps"] == 10 and math.isfinite(final["eval_loss"])


@pytest.mark.slow
def test_killed_and_resumed_run_equals_an_uninterrupted_one(world, tmp_path, runs):
    # 12 epochs of 5 batches: 60 steps, a checkpoint every 2, metrics every 5 steps.
    args = ("--epochs", "12", "--save-every", "2", "--log-every", "5", "--eval-every", "10")
    whole, killed = runs.resume_after_sigkill(
        lambda out: _cli_args(world, out, *args), tmp_path, step=12, steps=60
    )  # the metrics log and the model: the same bytes
    a = json.loads((whole / "eval.json").read_text())
    b = json.loads((killed / "eval.json").read_text())
    assert a["steps"] == b["steps"] == 60 and a["eval_loss"] == b["eval_loss"]


@pytest.mark.slow
def test_two_processes_with_fewer_held_out_prompts_than_processes(make_ppo_world, tmp_path, runs):
    """12 prompts, 1 held out, on 2 processes (the last training batch gives one
    process a single prompt): the run ends, every process evaluating the one."""
    small = make_ppo_world(12)
    out = tmp_path / "out"
    runs.run([*_cli_args(small, out, "--epochs", "1", "--max-steps", "3", "--eval-every", "1",
                         "--save-every", "2"), "--eval-fraction", "0.05"], processes=2)  # fmt: skip
    final = json.loads((out / "eval.json").read_text())
    assert final["num_processes"] == 2
    assert final["n_train"] == 11 and final["n_eval"] == 1
    assert final["steps"] == 2  # global batches of 8 and 3 prompts
    held = [x["eval/loss"] for x in runs.metrics(out) if "eval/loss" in x]
    assert len(held) == 2 and held[-1] == final["eval_loss"] and math.isfinite(held[-1])
    assert (out / "checkpoints" / "step-00000002").is_dir()
    assert (out / "model.safetensors").exists()
