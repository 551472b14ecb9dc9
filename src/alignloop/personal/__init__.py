"""A new user's reward from a few of their comparisons (issue 16).

    fit     `alignloop personal fit`: a personal reward model (train-rm --heads
            personal) frozen, each of the user's pairs read as its feature difference
            f(chosen) - f(rejected) (`RewardModel.head_scores`, normalized), and the
            user's D weights fit by Bradley-Terry logistic regression pulled toward the
            model's default weights: seconds, not a training run

The weights file it writes ({"user", "weights": {head: w}, ...}) is what `alignloop
score`, `eval-rm` and `train-ppo` take as --user-weights. Importing this package imports
no torch (the labeling server's own-preferences mode may name it); `fit` does.
"""

from __future__ import annotations

__all__ = ["PersonalFitConfig"]

from alignloop.personal.personal_config import PersonalFitConfig
