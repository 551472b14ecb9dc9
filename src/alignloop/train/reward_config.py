"""Options of `alignloop train-rm`, `eval-rm` and `score`: each field's help text is
its `--help`; the training options are the base's (`base_config.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alignloop.config import REQUIRED, ConfigError, option, override
from alignloop.train.base_config import EpochOptions, ModelOptions

HeadsMode = Literal["one", "criteria", "personal"]


@dataclass
class RewardConfig(EpochOptions):
    """Besides these: the bases' optimizer, schedule, checkpoint, precision and LoRA
    options, --max-length, --max-steps, --log-every (`alignloop train-rm --help`)."""

    model: str = option(REQUIRED, "backbone: a local path or a hub id (decoder LM or encoder)")
    data: Path = option(REQUIRED, "training pairs: a comparisons file or an HH-RLHF file")
    out: Path = option(REQUIRED, "output directory: the reward model, metrics.jsonl, checkpoints/")
    eval_data: Path | None = option(None, "held-out pairs (default: --eval-fraction of --data)")
    criterion: str | None = option(
        None, "train on the pairs of this criterion; required when the file holds several "
        "(unless --heads criteria)"
    )  # fmt: skip
    heads: HeadsMode = option(
        "one", "the reward model's outputs: one (a scalar reward); criteria (one head per "
        "criterion of --data, each pair's loss on its own criterion's head); personal (D = "
        "--features reward features and a learned weight vector per labeler: each pair's "
        "reward difference is w_labeler . (f(chosen) - f(rejected)); every pair of --data "
        "must name its labeler)"
    )  # fmt: skip
    features: int = option(8, "--heads personal: D, the reward features", at_least=2)
    personal_l2: float = option(
        0.01, "--heads personal: coefficient of the labelers' mean squared weight norm (it "
        "pins the weights' scale; the features take the rest)", at_least=0.0
    )  # fmt: skip
    personal_lr: float = option(
        1e-2, "--heads personal: learning rate of the labelers' weights (Adam moves each "
        "weight about lr a step: at the backbone's they would stay near where they "
        "started)", at_least=0.0
    )  # fmt: skip
    personal_shrink: float = option(
        0.0, "--heads personal: coefficient of the labelers' mean squared distance from the "
        "mean labeler's weights (shrinks each toward the panel)", at_least=0.0
    )  # fmt: skip
    labeler: str | None = option(
        None, "train (and evaluate) on this labeler's pairs only: the per-labeler baseline"
    )
    eval_fraction: float = override(
        help="share of the prompts of --data held out when no eval data"
    )
    epochs: int = override(help="passes over the training pairs")
    batch_size: int = option(
        8, "prompts per step on each process, all pairs of a prompt together", at_least=1
    )
    group_by_length: int | None = option(
        None, "batches of similar lengths: sort each window of N batches by length (0: off; "
        "default: off where the batches are packed, --pack, and 50 where they are padded)",
        at_least=0,
    )  # fmt: skip
    pack: bool = option(
        True, "several texts a row where the backbone allows (no padding computed, the "
        "same rewards): a decoder's prompt once for all its completions, a BERT encoder's "
        "texts end to end; --no-pack: one right-padded row per text"
    )  # fmt: skip
    use_margin: bool = option(True, "subtract each pair's margin in the loss, when it has one")
    center_coef: float = option(0.0, "reward centering: coefficient of mean(r^2) (0 disables)")
    seed: int = option(0, "seed of the data order, the split and the head's initialization")
    eval_every: int = override(50, "evaluate on the held-out pairs every N steps (0: at the end)")
    norm_samples: int = option(2000, "completions scored to normalize rewards to mean 0, std 1")
    eval_batch_size: int = option(
        32, "sequences per forward pass when evaluating and scoring", at_least=1
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.heads == "criteria" and self.criterion is not None:
            raise ConfigError(
                f"--criterion {self.criterion} trains on one criterion's pairs, --heads "
                "criteria on every criterion's (a head each): give one of them"
            )


@dataclass
class EvalRMConfig(ModelOptions):
    """`alignloop eval-rm`: a reward model's accuracy on pairs, overall and by labeler and
    criterion (where the pairs name them). A model of several heads without --reward,
    --user or --user-weights reads each pair on its own head: a criteria model on the
    pair's criterion's, a personal model with the pair's labeler's weights (a labeler it
    was not trained on: the default weights, the mean user's)."""

    model: str = option(REQUIRED, "reward model directory")
    data: Path = option(REQUIRED, "comparisons file or HH-RLHF file")
    max_length: int = option(512, "tokens per sequence")
    batch_size: int = option(32, "sequences per forward pass")
    new_head: bool = option(
        False,
        "accept a --model without a trained reward head (a causal LM, a bare encoder): "
        "a new random head, a baseline only",
    )
    reward: list[str] = option(
        [], "a model of several heads: NAME=W weighs head NAME by W (repeatable; heads not "
        "named weigh 0)", pairs=True,
    )  # fmt: skip
    user: str | None = option(
        None, "a personal reward model: weigh its heads as this labeler (one it was trained on)"
    )
    user_weights: Path | None = option(
        None, 'a JSON file {"user": NAME, "weights": {HEAD: W, ...}} (from `alignloop '
        "personal fit`): weigh the heads so"
    )  # fmt: skip


@dataclass
class ScoreConfig(EvalRMConfig):
    """`alignloop score`: the reward of every completion of a file. A model of several
    heads also writes "rewards" {head: score} (each normalized); its "reward" is the
    combination of --reward, --user or --user-weights, else a personal model's default
    weights (the mean user's); a criteria model given none writes "rewards" only."""

    data: Path = override(help="completions file")
    prompts: Path = option(REQUIRED, "prompts file the completions refer to")
    out: Path = option(
        REQUIRED, 'JSONL to write: {"id", "prompt_id", "reward"} (several heads: and "rewards")'
    )
