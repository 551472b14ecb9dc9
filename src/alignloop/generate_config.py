"""Options of `alignloop generate`: each field's help text is its `--help`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignloop.config import REQUIRED, option
from alignloop.train.base_config import ModelOptions


@dataclass
class GenerateConfig(ModelOptions):
    policy: str = option(REQUIRED, "causal LM: a local path or a hub id")
    adapter: Path | None = option(
        None,
        "a LoRA adapter folder put on --policy, its base (a personalized policy: "
        "train-ppo --lora-r R --save-adapter writes one)",
    )
    prompts: Path = option(REQUIRED, "prompts file (.jsonl or .parquet)")
    out: Path = option(REQUIRED, "completions file to write")
    k: int = option(4, "completions per prompt")
    temperature: float = option(1.0, "sampling temperature")
    max_new_tokens: int = option(64, "longest completion")
    max_prompt_length: int | None = option(
        None, "longer prompts lose their start (none: the model's limit)"
    )
    batch_size: int = option(16, "prompts per generate call")
    seed: int = option(0, "sampling seed")
    name: str | None = option(
        None,
        "the completions' 'policy' field (none: the policy path; POLICY+ADAPTER with --adapter)",
    )
