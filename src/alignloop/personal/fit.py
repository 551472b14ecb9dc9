"""`alignloop personal fit`: a user's weights over a frozen reward model's features.

A personal reward model (Shenfeld et al. 2025; Barreto et al. 2025) scores a text with
D reward features f (its heads, each normalized) and a user with a weight vector w:
r_user = w . f. For a new user only w is unknown, and a pair's Bradley-Terry likelihood
is sigmoid(w . d) with d = f(chosen) - f(rejected): logistic regression on the feature
differences, without an intercept (a pair has no order of its own). With 10 to 50 pairs
the fit is pulled toward the model's default weights w0 (its mean user), a Gaussian
prior, so that a few pairs move it only as far as they have evidence for:

    loss(w) = sum_i softplus(-w . d_i) + prior / 2 * |w - w0|^2

It is strictly convex, so Newton's method (D x D systems, D ~ 8) converges in a few
steps; the reward model's forward pass over the pairs' texts is the only real cost.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from alignloop.config import ConfigError
from alignloop.personal.personal_config import PersonalFitConfig
from alignloop.schema import Comparison

__all__ = ["bradley_terry_fit", "fit_user", "pair_features", "pairwise_accuracy", "user_pairs"]


def _objective(w: torch.Tensor, d: torch.Tensor, w0: torch.Tensor, prior: float) -> torch.Tensor:
    """sum_i softplus(-w . d_i) + prior / 2 * |w - w0|^2: the negative log posterior."""
    return torch.nn.functional.softplus(-(d @ w)).sum() + prior / 2 * (w - w0).square().sum()


def bradley_terry_fit(
    d: torch.Tensor,
    w0: torch.Tensor,
    prior: float,
    *,
    max_iter: int = 100,
    tol: float = 1e-12,
) -> torch.Tensor:
    """The weights w (D,) minimizing sum_i softplus(-w . d_i) + prior/2 |w - w0|^2.

    d: (N, D) feature differences chosen - rejected; w0: (D,) the prior's center;
    prior > 0. Newton's method from w0 with a backtracking line search (in float64),
    stopped when the Newton decrement g . H^-1 g / 2 falls below `tol`."""
    if not prior > 0:
        raise ValueError(f"prior {prior}: must be positive")
    d, w0 = d.double(), w0.double()  # (N, D), (D,)
    w = w0.clone()
    eye = torch.eye(len(w0), dtype=torch.float64)
    loss = _objective(w, d, w0, prior)
    for _ in range(max_iter):
        p = torch.sigmoid(d @ w)  # (N,) P(chosen beats rejected) under w
        grad = -d.T @ (1 - p) + prior * (w - w0)  # (D,)
        hessian = d.T @ (d * (p * (1 - p))[:, None]) + prior * eye  # (D, D), positive definite
        step = torch.linalg.solve(hessian, grad)  # (D,)
        decrement = float(grad @ step) / 2
        if decrement < tol:
            break
        t = 1.0  # Armijo backtracking: far from w* a full Newton step can overshoot
        while _objective(w - t * step, d, w0, prior) > loss - 0.5 * t * decrement:
            t /= 2
            if t < 1e-10:  # no descent left at float64 precision: w is the minimum
                return w.float()
        w = w - t * step
        loss = _objective(w, d, w0, prior)
    return w.float()


def pairwise_accuracy(d: torch.Tensor, w: torch.Tensor) -> float:
    """Share of pairs whose chosen text w scores higher (d: (N, D), w: (D,)); a tie
    counts half."""
    margin = d.double() @ w.double()  # (N,)
    return float(((margin > 0).double() + 0.5 * (margin == 0).double()).mean())


def user_pairs(pairs: list[Comparison], user: str, path: str | Path) -> list[Comparison]:
    """The pairs `user` labeled, in file order; a `ConfigError` naming the file (and
    the labelers it holds) when there are none."""
    mine = [p for p in pairs if p.labeler == user]
    if not mine:
        labelers = sorted({p.labeler for p in pairs if p.labeler is not None})
        there = (
            f"its labelers: {', '.join(labelers[:10])}{', ...' if len(labelers) > 10 else ''}"
            if labelers
            else "its pairs name no labeler"
        )
        raise ConfigError(f"--pairs {path}: no pairs of --user {user} ({there})")
    return mine


def pair_features(model, pairs: list[Comparison], *, batch_size: int, max_length: int):
    """d: (N, D) f(chosen) - f(rejected) per pair, the model's normalized head scores
    (`RewardModel.head_scores`), float32 on the CPU."""
    prompts = [p.prompt for p in pairs]
    texts = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    f = model.head_scores(prompts + prompts, texts, batch_size=batch_size, max_length=max_length)
    return f[: len(pairs)] - f[len(pairs) :]  # (N, D)


def _prior_center(model, where: str) -> dict[str, float]:
    """The model's default weights (a personal model's mean user), or 0 per head where
    it has none (a criteria model); a one-output model has nothing to weigh."""
    if model.n_heads < 2:
        raise ConfigError(
            f"--model {where}: a reward model of one output has no features to weigh; "
            "train one with train-rm --heads personal"
        )
    return model.default_weights or dict.fromkeys(model.head_names, 0.0)


def fit_user(config: PersonalFitConfig) -> dict[str, Any]:
    """Fit `config.user`'s weights on their pairs (the first `max_pairs`) and write
    `config.out` atomically: {"user", "weights": {head: w}, "model", "n_pairs",
    "train_accuracy", "default_accuracy" (the default weights' on the same pairs),
    "prior", "pairs"}. Returns the same dict."""
    from alignloop.io import write_json
    from alignloop.models import RewardModel, model_reference
    from alignloop.train.reward import load_pairs

    pairs = user_pairs(load_pairs(config.pairs, "--pairs"), config.user, config.pairs)
    pairs = pairs[: config.max_pairs] if config.max_pairs else pairs
    model = RewardModel.from_pretrained(config.model, options=config, what="--model",
                                        new_head=False)  # fmt: skip
    model.requires_grad_(False)
    center = _prior_center(model, config.model)
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    d = pair_features(model, pairs, batch_size=config.batch_size, max_length=config.max_length)
    w0 = torch.tensor([center[h] for h in model.head_names])  # (D,)
    w = bradley_terry_fit(d, w0, config.prior)
    if not all(math.isfinite(x) for x in w.tolist()):
        raise ConfigError(f"--pairs {config.pairs}: the fit did not converge (weights {w})")
    result = {
        "user": config.user,
        "weights": dict(zip(model.head_names, w.tolist(), strict=True)),
        "model": model_reference(config.model),
        "n_pairs": len(pairs),
        "train_accuracy": pairwise_accuracy(d, w),
        "default_accuracy": pairwise_accuracy(d, w0),
        "prior": config.prior,
        "pairs": str(Path(config.pairs)),
    }
    write_json(config.out, result)
    return result
