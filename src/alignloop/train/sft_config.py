"""Options of `alignloop train-sft`: each field's help text is its `--help`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alignloop.config import REQUIRED, ConfigError, option


@dataclass
class SFTConfig:
    model: str = option(REQUIRED, "causal LM to fine-tune: a local path or a hub id")
    prompts: Path = option(REQUIRED, "prompts file; without --completions, each prompt's "
                           "'reference' is its target")  # fmt: skip
    out: Path = option(REQUIRED, "output directory: the tuned model, metrics.jsonl, checkpoints/")
    completions: Path | None = option(
        None, "completions file: the targets, joined to --prompts by prompt_id"
    )
    eval_fraction: float = option(0.05, "share of the prompts held out to measure the loss")
    max_length: int = option(512, "tokens of prompt + target; the prompt's start is cut first")
    epochs: int = option(3, "passes over the training examples")
    max_steps: int | None = option(None, "stop after this many optimizer steps (default: epochs)")
    batch_size: int = option(16, "examples per step on each process")
    grad_accum: int = option(1, "gradient accumulation: batches per optimizer step")
    lr: float = option(2e-5, "peak learning rate (AdamW)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.03, "share of the steps with a linear warm-up")
    scheduler: Literal["linear", "cosine", "constant"] = option("cosine", "learning-rate decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 disables)")
    seed: int = option(0, "seed of the data order and the split")
    eval_every: int = option(100, "held-out loss every N steps (0: at the end only)")
    save_every: int = option(200, "checkpoint every N steps (0: never)")
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep")
    resume: bool = option(False, "resume from the newest checkpoint in --out")
    log_every: int = option(10, "write training metrics every N steps")
    lora_r: int = option(0, "LoRA rank; 0 trains every weight (LoRA is merged on save)")
    lora_alpha: int = option(16, "LoRA alpha")
    lora_dropout: float = option(0.0, "LoRA dropout")
    gradient_checkpointing: bool = option(False, "recompute activations to save memory")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = option(
        "auto", "auto: bf16 where the GPU has it, else fp32"
    )
    report_to: Literal["none", "tensorboard", "wandb"] = option("none", "metrics backend")

    def __post_init__(self) -> None:
        for name in ("max_length", "epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError("--eval-fraction must be in [0, 1)")
        if self.lr <= 0:
            raise ConfigError("--lr must be positive")
