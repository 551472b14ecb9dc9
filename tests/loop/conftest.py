"""A tiny built-in world for the loop's tests: 60 training and 8 held-out documents,
the world's tokenizer and its random tiny policy as the start (no SFT: the rounds'
machinery is under test, not how good the policy gets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
       "PYTHONUNBUFFERED": "1"}  # fmt: skip

# A round in seconds: 12 prompts x 3 completions, 2 simulated labelers each, a
# reward-model epoch, 3 PPO steps of 8 prompts (a checkpoint after each), 2 samples
# of each held-out document.
TINY = {
    "judge": "alignloop.world:gold_utility", "rounds": 2, "prompts_per_round": 12, "k": 3,
    "overlap": 2, "labelers": 3, "rm_epochs": 1, "ppo_steps": 3, "ppo_batch_size": 8,
    "ppo_save_every": 1, "eval_k": 2, "threads": 1, "max_new_tokens": 12,
}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> dict[str, Path]:
    from alignloop.loop import build_world

    return build_world(tmp_path_factory.mktemp("world"), seed=0, n_train=60, n_eval=8)


@pytest.fixture
def loop_yaml(tiny_world, tmp_path):
    """loop_yaml(out, **keys) -> a loop.yaml of the tiny world's run with these keys."""

    def make(out: Path, **keys) -> Path:
        config = {
            "out": str(out), "policy": str(tiny_world["policy_init"]),
            "prompts": str(tiny_world["prompts_train"]),
            "eval_prompts": str(tiny_world["prompts_eval"]), **TINY, **keys,
        }  # fmt: skip
        path = tmp_path / f"{Path(out).name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make


def loop_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "alignloop", "loop", "--config", str(config)]


def run_loop_process(config: Path, env: dict | None = None, timeout: float = 600):
    """`alignloop loop --config FILE` in a process of its own, to the end."""
    return subprocess.run(loop_command(config), env=env or ENV, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
