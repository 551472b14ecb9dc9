"""Fixtures of the evaluation tests: tiny models built locally (nothing downloaded), all
with the built-in world's tokenizer, and a few world prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignloop.io import write_records

TINY_POLICY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 128}


@pytest.fixture(autouse=True)
def one_thread(one_thread):
    """Every evaluation test on one torch thread (the root conftest's `one_thread`)."""
    return one_thread


def _sequence_classifier(tokenizer, num_labels: int, labels: dict[int, str] | None, seed: int):
    from transformers import LlamaForSequenceClassification

    from alignloop.models import build_tiny_causal_lm

    config = build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=4).config
    config.num_labels = num_labels
    if labels is not None:
        config.id2label = labels
        config.label2id = {v: k for k, v in labels.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForSequenceClassification(config)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Two tiny random policies (seeds 0 and 1), a one-output reward model, a
    two-label ("neutral", "toxic") classifier, a three-label classifier with generic
    names, and 10 world prompts (with references and gold facts)."""
    from alignloop.models import build_tiny_causal_lm, save_pretrained
    from alignloop.world import build_tokenizer, make_prompts

    root = tmp_path_factory.mktemp("tiny-eval")
    tokenizer = build_tokenizer()
    paths = {name: root / name for name in ("policy", "reference", "rm", "toxic", "generic")}
    save_pretrained(
        build_tiny_causal_lm(tokenizer, seed=0, **TINY_POLICY), tokenizer, paths["policy"]
    )
    save_pretrained(
        build_tiny_causal_lm(tokenizer, seed=1, **TINY_POLICY), tokenizer, paths["reference"]
    )
    save_pretrained(_sequence_classifier(tokenizer, 1, None, 0), tokenizer, paths["rm"])
    save_pretrained(
        _sequence_classifier(tokenizer, 2, {0: "neutral", 1: "toxic"}, 1), tokenizer, paths["toxic"]
    )
    save_pretrained(_sequence_classifier(tokenizer, 3, None, 2), tokenizer, paths["generic"])
    paths["prompts"] = root / "prompts.jsonl"
    write_records(paths["prompts"], make_prompts(10, seed=0))
    return paths
