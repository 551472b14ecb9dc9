"""Options of `alignloop personal fit`: each field's help text is its `--help`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignloop.config import REQUIRED, ConfigError, option
from alignloop.train.base_config import ModelOptions


@dataclass
class PersonalFitConfig(ModelOptions):
    """A user's weights over a reward model's features from their own pairs, the model
    frozen: minimizes sum_i -log sigmoid(w . (f(chosen_i) - f(rejected_i))) +
    prior/2 * |w - w_default|^2 by Newton's method (a personal model's w_default is its
    mean user; a criteria model has none: 0)."""

    user: str = option(REQUIRED, "the user: the pairs' 'labeler' whose weights are fit")
    pairs: Path = option(
        REQUIRED, "comparisons file (.jsonl or .parquet); the pairs of other labelers are skipped"
    )
    model: str = option(
        REQUIRED, "reward model of several heads (train-rm --heads personal): its features"
    )
    out: Path = option(
        REQUIRED, 'weights file to write: {"user", "weights": {HEAD: W}, "model", "n_pairs", '
        '"train_accuracy", ...} (--user-weights of score, eval-rm and train-ppo)'
    )  # fmt: skip
    max_pairs: int | None = option(
        None, "fit on the user's first N pairs only (default: all)", at_least=1
    )
    prior: float = option(
        1.0, "strength of the L2 pull toward the model's default weights (its mean user): "
        "the larger, the more pairs it takes to move the weights"
    )  # fmt: skip
    max_length: int = option(512, "tokens of prompt + completion the reward model reads")
    batch_size: int = option(32, "sequences per forward pass", at_least=1)
    device: str = option("auto", "torch device: auto (cuda if there is one, else cpu), cpu, cuda")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prior > 0:
            raise ConfigError(
                f"--prior {self.prior}: must be positive (without the pull, pairs that one "
                "weight vector orders all correctly have no finite solution)"
            )
