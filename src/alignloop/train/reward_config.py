"""Options of `alignloop train-rm`, `eval-rm` and `score`: each field's help text is
its `--help`; the training options are the base's (`base_config.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignloop.config import REQUIRED, option, override
from alignloop.train.base_config import EpochOptions, ModelOptions


@dataclass
class RewardConfig(EpochOptions):
    """Besides these: the bases' optimizer, schedule, checkpoint, precision and LoRA
    options, --max-length, --max-steps, --log-every (`alignloop train-rm --help`)."""

    model: str = option(REQUIRED, "backbone: a local path or a hub id (decoder LM or encoder)")
    data: Path = option(REQUIRED, "training pairs: a comparisons file or an HH-RLHF file")
    out: Path = option(REQUIRED, "output directory: the reward model, metrics.jsonl, checkpoints/")
    eval_data: Path | None = option(None, "held-out pairs (default: --eval-fraction of --data)")
    criterion: str | None = option(
        None, "train on the pairs of this criterion; required when the file holds several"
    )
    eval_fraction: float = override(
        help="share of the prompts of --data held out when no eval data"
    )
    epochs: int = override(help="passes over the training pairs")
    batch_size: int = option(
        8, "prompts per step on each process, all pairs of a prompt together", at_least=1
    )
    group_by_length: int = option(
        50, "batches of similar lengths: sort each window of N batches by length (0: off)"
    )
    use_margin: bool = option(True, "subtract each pair's margin in the loss, when it has one")
    center_coef: float = option(0.0, "reward centering: coefficient of mean(r^2) (0 disables)")
    seed: int = option(0, "seed of the data order, the split and the head's initialization")
    eval_every: int = override(50, "evaluate on the held-out pairs every N steps (0: at the end)")
    norm_samples: int = option(2000, "completions scored to normalize rewards to mean 0, std 1")
    eval_batch_size: int = option(
        32, "sequences per forward pass when evaluating and scoring", at_least=1
    )


@dataclass
class EvalRMConfig(ModelOptions):
    """`alignloop eval-rm`: a reward model's accuracy on pairs."""

    model: str = option(REQUIRED, "reward model directory")
    data: Path = option(REQUIRED, "comparisons file or HH-RLHF file")
    max_length: int = option(512, "tokens per sequence")
    batch_size: int = option(32, "sequences per forward pass")
    new_head: bool = option(
        False,
        "accept a --model without a trained reward head (a causal LM, a bare encoder): "
        "a new random head, a baseline only",
    )


@dataclass
class ScoreConfig(EvalRMConfig):
    """`alignloop score`: the reward of every completion of a file."""

    data: Path = override(help="completions file")
    prompts: Path = option(REQUIRED, "prompts file the completions refer to")
    out: Path = option(REQUIRED, 'JSONL to write: {"id", "prompt_id", "reward"}')
