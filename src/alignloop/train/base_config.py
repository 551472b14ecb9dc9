"""The options the trainers and evaluation share, each declared once.

    ModelOptions        how models are loaded (revision, remote code, dtype, attention):
                        every command that loads one
    TrainingOptions     optimizer, schedule, checkpoints, precision, LoRA: every trainer
    EpochOptions        epochs over a fixed data set, a held-out split: SFT, reward model
    SamplingOptions     how responses are sampled and scored: PPO and `alignloop eval`

A config inherits the bases it needs (as TRL's configs inherit `_BaseConfig`) and
changes a default or a help text with `override(...)` only where its trainer really
differs; every other option, with its help and its bounds, is the base's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alignloop.config import ConfigError, Options, option

Scheduler = Literal["linear", "cosine", "constant"]
Precision = Literal["auto", "no", "bf16", "fp16"]
Backend = Literal["none", "tensorboard", "wandb"]
DType = Literal["float32", "bfloat16", "float16", "auto"]


@dataclass
class ModelOptions(Options):
    """Given to the one loading helper (`models.from_pretrained`) for every model and
    tokenizer a command loads."""

    revision: str | None = option(
        None, "hub revision (branch, tag or commit) of the models loaded from the hub"
    )
    trust_remote_code: bool = option(
        False, "run a hub repository's own modelling code (off: transformers' own only)"
    )
    dtype: DType = option("float32", "dtype the models are loaded in (auto: the checkpoint's)")
    attn_implementation: str | None = option(
        None, "attention kernel: eager, sdpa, flash_attention_2, ... (default: transformers')"
    )
    chat_template: Path | None = option(
        None, "Jinja file: sets or replaces the chat template of every tokenizer loaded "
        "(prompts given as lists of messages are rendered with it; texts never are)"
    )


@dataclass
class TrainingOptions(ModelOptions):
    lr: float = option(1e-5, "peak learning rate (AdamW)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.03, "share of the steps with a linear warm-up")
    scheduler: Scheduler = option("linear", "learning-rate decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 disables)")
    grad_accum: int = option(1, "gradient accumulation: batches per optimizer step", at_least=1)
    save_every: int = option(100, "checkpoint every N steps (0: never)")
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep")
    resume: bool = option(False, "resume from the newest checkpoint in --out")
    lora_r: int = option(0, "LoRA rank; 0 trains every weight")
    lora_alpha: int = option(16, "LoRA alpha")
    gradient_checkpointing: bool = option(False, "recompute activations to save memory")
    mixed_precision: Precision = option("auto", "auto: bf16 where the GPU has it, else fp32")
    report_to: Backend = option("none", "metrics backend")


@dataclass
class EpochOptions(TrainingOptions):
    max_length: int = option(
        512, "tokens of prompt + completion; the prompt's start is cut first", at_least=1
    )
    epochs: int = option(1, "passes over the training examples", at_least=1)
    max_steps: int | None = option(None, "stop after this many optimizer steps (default: epochs)")
    eval_fraction: float = option(0.1, "share of the prompts held out to measure the loss")
    eval_every: int = option(100, "held-out loss every N steps (0: at the end only)")
    log_every: int = option(10, "write training metrics every N steps")
    lora_dropout: float = option(0.0, "LoRA dropout")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError("--eval-fraction must be in [0, 1)")
        if self.lr <= 0:
            raise ConfigError("--lr must be positive")


@dataclass
class SamplingOptions(ModelOptions):
    """The defaults of the TL;DR reproductions (temperature 0.7, 53 new tokens), so
    that `alignloop eval` measures the KL that PPO's penalty and its `ppo/kl` log do."""

    reward_model: str | None = option(None, "reward model directory (from train-rm)")
    new_head: bool = option(
        False,
        "accept a --reward-model without a trained reward head (a causal LM, a bare "
        "encoder): a new random head, a baseline only",
    )
    temperature: float = option(0.7, "sampling temperature")
    max_new_tokens: int = option(53, "longest completion in tokens", at_least=1)
    max_prompt_length: int = option(512, "longer prompts lose their start", at_least=1)
    reward_max_length: int = option(
        1024, "tokens of prompt + completion the reward model reads", at_least=1
    )
    reward_batch_size: int = option(32, "sequences per reward-model forward pass", at_least=1)
