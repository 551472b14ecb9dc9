"""Options of `alignloop train-rm`: each field's help text is its `--help`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alignloop.config import REQUIRED, ConfigError, option


@dataclass
class RewardConfig:
    model: str = option(REQUIRED, "backbone: a local path or a hub id (decoder LM or encoder)")
    data: Path = option(REQUIRED, "training pairs: a comparisons file or an HH-RLHF file")
    out: Path = option(REQUIRED, "output directory: the reward model, metrics.jsonl, checkpoints/")
    eval_data: Path | None = option(None, "held-out pairs (default: --eval-fraction of --data)")
    eval_fraction: float = option(0.1, "share of the prompts of --data held out when no eval data")
    max_length: int = option(512, "tokens of prompt + completion; the prompt's start is cut first")
    epochs: int = option(1, "passes over the training pairs")
    max_steps: int | None = option(None, "stop after this many optimizer steps (default: epochs)")
    batch_size: int = option(8, "prompts per step on each process, all pairs of a prompt together")
    group_by_length: int = option(
        50, "batches of similar lengths: sort each window of N batches by length (0: off)"
    )
    grad_accum: int = option(1, "gradient accumulation: batches per optimizer step")
    lr: float = option(1e-5, "peak learning rate (AdamW)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.03, "share of the steps with a linear warm-up")
    scheduler: Literal["linear", "cosine", "constant"] = option("linear", "learning-rate decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 disables)")
    use_margin: bool = option(True, "subtract each pair's margin in the loss, when it has one")
    center_coef: float = option(0.0, "reward centering: coefficient of mean(r^2) (0 disables)")
    seed: int = option(0, "seed of the data order, the split and the head's initialization")
    eval_every: int = option(50, "evaluate on the held-out pairs every N steps (0: at the end)")
    save_every: int = option(100, "checkpoint every N steps (0: never)")
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep")
    resume: bool = option(False, "resume from the newest checkpoint in --out")
    log_every: int = option(10, "write training metrics every N steps")
    lora_r: int = option(0, "LoRA rank; 0 trains every weight")
    lora_alpha: int = option(16, "LoRA alpha")
    lora_dropout: float = option(0.0, "LoRA dropout")
    gradient_checkpointing: bool = option(False, "recompute activations to save memory")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = option(
        "auto", "auto: bf16 where the GPU has it, else fp32"
    )
    report_to: Literal["none", "tensorboard", "wandb"] = option("none", "metrics backend")
    norm_samples: int = option(2000, "completions scored to normalize rewards to mean 0, std 1")
    eval_batch_size: int = option(32, "sequences per forward pass when evaluating and scoring")

    def __post_init__(self) -> None:
        positive = ("max_length", "epochs", "batch_size", "grad_accum", "eval_batch_size")
        for name in positive:
            if isinstance(getattr(self, name), int) and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError("--eval-fraction must be in [0, 1)")
        if self.lr <= 0:
            raise ConfigError("--lr must be positive")
