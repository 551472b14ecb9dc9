"""Options of `alignloop generate`: each field's help text is its `--help`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignloop.config import REQUIRED, ConfigError, option
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
        "the completions' 'policy' field (none: the policy path; POLICY+ADAPTER with "
        "--adapter; then @USER with --user)",
    )
    user: str | None = option(
        None,
        "sample for this user of a conditioned policy (train-ppo --users): each prompt "
        "read after the user's prefix, which the policy saved (alignloop_conditioning.json)",
    )
    user_prefix: str | None = option(
        None,
        "with --user: the prefix template (none: the policy's saved one), {user} the "
        "user's key (saved with the policy, else the name); before a text prompt, at the "
        "start of a conversation's first user turn",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.user_prefix is not None and self.user is None:
            raise ConfigError("--user-prefix is a user's prefix: give --user NAME")
        if self.user_prefix is not None:
            from alignloop.personal.conditioning import check_user_prefix

            check_user_prefix(self.user_prefix)
