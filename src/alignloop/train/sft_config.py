"""Options of `alignloop train-sft`: each field's help text is its `--help`; the
training options are the base's (`base_config.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignloop.config import REQUIRED, option, override
from alignloop.train.base_config import EpochOptions, Scheduler


@dataclass
class SFTConfig(EpochOptions):
    """Besides these: the bases' optimizer, schedule, checkpoint, precision and LoRA
    options, --eval-every, --max-steps, --log-every (`alignloop train-sft --help`)."""

    model: str = option(REQUIRED, "causal LM to fine-tune: a local path or a hub id")
    prompts: Path = option(REQUIRED, "prompts file; without --completions, each prompt's "
                           "'reference' is its target")  # fmt: skip
    out: Path = option(REQUIRED, "output directory: the tuned model, metrics.jsonl, checkpoints/")
    completions: Path | None = option(
        None, "completions file: the targets, joined to --prompts by prompt_id"
    )
    eval_fraction: float = override(0.05)
    max_length: int = override(help="tokens of prompt + target; the prompt's start is cut first")
    epochs: int = override(3)
    batch_size: int = option(16, "examples per step on each process", at_least=1)
    lr: float = override(2e-5)
    scheduler: Scheduler = override("cosine")
    seed: int = option(0, "seed of the data order and the split")
    save_every: int = override(200)
    lora_r: int = override(help="LoRA rank; 0 trains every weight (LoRA is merged on save)")
