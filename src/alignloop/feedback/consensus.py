"""Several labelers' rankings of one prompt -> one consensus ranking.

The method is Bradley-Terry, the same model the reward model is trained with: every
pair a ranking states (as `pairs.ordered_pairs` gives it; ties state none) is one win,
and the consensus orders completions by their fitted strengths. Unlike averaging
ranks, it uses rankings that cover different subsets of the completions, and it
weighs a win over a strong completion more than a win over a weak one.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from alignloop.feedback.pairs import ordered_pairs
from alignloop.schema import Ranking

__all__ = ["bradley_terry", "consensus", "consensus_ranking"]

CONSENSUS_LABELER = "consensus"


def _counts(
    wins: Sequence[tuple[str, str]], items: Sequence[str], prior: float
) -> tuple[np.ndarray, np.ndarray]:
    """Wins per item and games per pair, each with the prior's virtual games added."""
    index = {item: i for i, item in enumerate(items)}
    n = len(items)
    won = np.full(n, prior * (n - 1))  # (N,) prior: `prior` virtual wins vs each other
    games = np.full((n, n), 2.0 * prior)  # (N, N) ... and `prior` virtual losses
    np.fill_diagonal(games, 0.0)
    for winner, loser in wins:
        if winner not in index or loser not in index:
            raise ValueError(f"win ({winner!r}, {loser!r}) names an item not in items")
        w, lo = index[winner], index[loser]
        won[w] += 1.0
        games[w, lo] += 1.0
        games[lo, w] += 1.0
    return won, games


def _mm_step(strength: np.ndarray, won: np.ndarray, games: np.ndarray) -> np.ndarray:
    """One minorization-maximization update (Hunter 2004, eq. 3), scaled to a
    geometric mean of 1 (strengths are defined only up to a common factor)."""
    pair_sum = strength[:, None] + strength[None, :]  # (N, N)
    new = won / (games / pair_sum).sum(axis=1)  # (N,)
    return new / np.exp(np.log(new).mean())


def bradley_terry(
    wins: Sequence[tuple[str, str]],
    items: Sequence[str],
    *,
    prior: float = 0.1,
    iters: int = 10_000,
    tol: float = 1e-10,
) -> dict[str, float]:
    """Bradley-Terry scores (log-strengths, mean 0) from (winner, loser) pairs.

    P(i beats j) = s_i / (s_i + s_j). The maximum-likelihood strength of an item that
    never lost is infinite, so this is the MAP estimate under a weak symmetric prior:
    every item is credited `prior` virtual wins and `prior` virtual losses against
    every other item. At the optimum, for every item i,

        wins_i + prior * (N - 1) = sum_j (n_ij + 2 * prior) * s_i / (s_i + s_j)

    with n_ij the real games between i and j. Solved by Hunter's (2004) MM algorithm,
    which increases the posterior at every step, until no log-strength moves more than
    `tol` (a RuntimeWarning when `iters` steps were not enough).
    """
    if prior <= 0:
        raise ValueError(f"prior must be > 0 (the MLE may not exist), got {prior}")
    if len(items) < 2:
        return {item: 0.0 for item in items}
    won, games = _counts(wins, items, prior)
    log_s = np.zeros(len(items))  # (N,)
    for _ in range(iters):
        new = np.log(_mm_step(np.exp(log_s), won, games))
        converged = np.abs(new - log_s).max() < tol
        log_s = new
        if converged:
            break
    else:
        warnings.warn(
            f"bradley_terry: not converged in {iters} steps", RuntimeWarning, stacklevel=2
        )
    log_s -= log_s.mean()
    return {item: float(v) for item, v in zip(items, log_s, strict=True)}


def _tie_groups(scores: dict[str, float], tol: float) -> list[list[str]]:
    """Items by score, best first; an item within `tol` of its group's best joins it.

    Ids sort by name within a group, so the result does not depend on input order.
    """
    groups: list[list[str]] = []
    top = float("inf")
    for item in sorted(scores, key=lambda k: (-scores[k], k)):
        if groups and top - scores[item] <= tol:
            groups[-1].append(item)
        else:
            groups.append([item])
            top = scores[item]
    return [sorted(g) for g in groups]


def _one_prompt_and_criterion(rankings: Sequence[Ranking]) -> tuple[str, str]:
    """The (prompt_id, criterion) all rankings share; ValueError if they do not."""
    keys = {(r.prompt_id, r.criterion) for r in rankings}
    if len(keys) != 1:
        raise ValueError(
            "consensus_ranking needs rankings of one prompt and one criterion, got "
            f"{sorted(keys) or 'none'}"
        )
    return keys.pop()


def consensus_ranking(rankings: Sequence[Ranking], *, tol: float = 1e-6) -> Ranking:
    """The Bradley-Terry consensus of several labelers' rankings of one prompt under
    one criterion, labelled "consensus".

    Completions ranked by only some labelers are included; unrankable rankings are
    ignored (all unrankable -> an unrankable consensus). Scores within `tol` (on the
    log-strength scale) are tied; a completion no one ordered against another (only
    ever tied) gets the prior's score 0, so it may tie with middling completions.
    """
    prompt_id, criterion = _one_prompt_and_criterion(rankings)
    ranked = [r for r in rankings if not r.unrankable]
    if not ranked:
        return Ranking(
            prompt_id=prompt_id,
            labeler=CONSENSUS_LABELER,
            criterion=criterion,
            ranking=[],
            unrankable=True,
        )
    items = sorted({cid for r in ranked for cid in r.completion_ids})
    wins = [(a, b) for r in ranked for a, b, _, _ in ordered_pairs(r)]
    groups = _tie_groups(bradley_terry(wins, items), tol)
    return Ranking(
        prompt_id=prompt_id, labeler=CONSENSUS_LABELER, criterion=criterion, ranking=groups
    )


def consensus(rankings: Iterable[Ranking]) -> list[Ranking]:
    """One consensus ranking per (prompt_id, criterion), in first-seen order."""
    groups: dict[tuple[str, str], list[Ranking]] = {}
    for r in rankings:
        groups.setdefault((r.prompt_id, r.criterion), []).append(r)
    return [consensus_ranking(group) for group in groups.values()]
