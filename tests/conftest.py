"""Shared fixtures: tiny record sets and the real HH sample from ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignloop.schema import Completion, Prompt, Ranking, parse_record

REPO = Path(__file__).resolve().parents[1]
HH_SAMPLE = REPO.parent / "shared" / "data" / "hh-harmless-dev.jsonl"


@pytest.fixture
def hh_path() -> Path:
    """The 1,600 real HH-RLHF harmless pairs shipped beside the repository."""
    if not HH_SAMPLE.exists():
        pytest.skip(f"{HH_SAMPLE} is absent (it lives in ../shared, outside the repository)")
    return HH_SAMPLE


@pytest.fixture
def small_task() -> tuple[list[Prompt], list[Completion], list[Ranking]]:
    """Two prompts, three completions each, rankings by two labelers."""
    prompts = [
        Prompt(id="p1", prompt="summarize: the cat sat on the mat"),
        Prompt(id="p2", prompt="summarize: the dog ran in the park"),
    ]
    completions = [
        Completion(id=f"{p}-{j}", prompt_id=p, completion=f"{p} summary {j}")
        for p in ("p1", "p2")
        for j in "abc"
    ]
    rankings = [
        parse_record("ranking", r, f"rankings.jsonl:{i}")
        for i, r in enumerate(
            [
                {"prompt_id": "p1", "labeler": "ann", "criterion": "overall",
                 "ranking": [["p1-a"], ["p1-b", "p1-c"]]},
                {"prompt_id": "p1", "labeler": "bob", "criterion": "overall",
                 "ranking": [["p1-a"], ["p1-c"], ["p1-b"]]},
                {"prompt_id": "p2", "labeler": "ann", "criterion": "overall",
                 "ranking": [["p2-c"], ["p2-b"], ["p2-a"]]},
            ],
            start=1,
        )
    ]  # fmt: skip
    return prompts, completions, rankings


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory) -> Path:
    """A 1-layer Llama with a one-output score head and the world's tokenizer, saved
    as an ordinary Hugging Face directory (seeded: the same weights every time)."""
    import torch
    from transformers import LlamaForSequenceClassification

    from alignloop.models import build_tiny_causal_lm, save_pretrained
    from alignloop.world import build_tokenizer

    tokenizer = build_tokenizer()
    config = build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=4).config
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(config)
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("tiny-rm"))
