"""How much labelers agree: the figures to check before training on their rankings.

Every figure compares rankings of the same prompt under the same criterion only (a
ranking by helpfulness and one by harmlessness may rightly disagree). Before anything
is computed, a labeler's repeated ranking of a prompt and criterion replaces the
earlier one (the last is their final word), and then unrankable rankings are dropped.

- `pairwise_agreement`: the share of completion pairs on which two labelers agree,
  the figure RLHF papers report (InstructGPT: 72.6% +- 1.5% among its labelers).
- `kendall_w`: Kendall's coefficient of concordance per prompt, averaged.
- `krippendorff_alpha`: ordinal alpha over all rankings at once (missing values allowed).
- `labeler_agreement`: each labeler against the leave-one-out consensus of the others,
  to find the labeler who misread the instructions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from itertools import combinations
from typing import Any

import krippendorff
import numpy as np

from alignloop.feedback.consensus import consensus_ranking
from alignloop.schema import Ranking

__all__ = [
    "agreement_report",
    "kendall_w",
    "krippendorff_alpha",
    "labeler_agreement",
    "mid_ranks",
    "pairwise_agreement",
]

Key = tuple[str, str]  # (prompt_id, criterion)


def _judgements(rankings: Iterable[Ranking]) -> dict[Key, dict[str, Ranking]]:
    """(prompt_id, criterion) -> labeler -> that labeler's last ranking, rankable only."""
    last: dict[Key, dict[str, Ranking]] = {}
    for r in rankings:
        last.setdefault((r.prompt_id, r.criterion), {})[r.labeler] = r
    kept = {
        key: {lab: r for lab, r in by_labeler.items() if not r.unrankable}
        for key, by_labeler in last.items()
    }
    return {key: by_labeler for key, by_labeler in kept.items() if by_labeler}


def mid_ranks(groups: list[list[str]]) -> dict[str, float]:
    """Completion id -> rank (1 = best); tied ids share the mean of their positions
    (a tie at positions 2 and 3 gives both 2.5), as rank statistics expect."""
    ranks: dict[str, float] = {}
    start = 0
    for group in groups:
        for cid in group:
            ranks[cid] = start + (len(group) + 1) / 2
        start += len(group)
    return ranks


def _agreements(p: Mapping[str, float], q: Mapping[str, float]) -> tuple[int, int]:
    """(agreeing, compared) over the id pairs both position maps order strictly.

    Positions: smaller is better (group index or rank); ids only one map has are skipped.
    """
    common = sorted(p.keys() & q.keys())
    agree = compared = 0
    for a, b in combinations(common, 2):
        dp, dq = p[a] - p[b], q[a] - q[b]
        if dp and dq:
            compared += 1
            agree += (dp > 0) == (dq > 0)
    return agree, compared


def _share(agree: int, compared: int) -> float | None:
    return agree / compared if compared else None


def pairwise_agreement(rankings: Iterable[Ranking]) -> tuple[float | None, int]:
    """(share of agreeing comparisons, number of comparisons), pooled over every two
    labelers of a prompt and every completion pair both ordered strictly; (None, 0)
    when no two labelers share an ordered pair."""
    agree = compared = 0
    for by_labeler in _judgements(rankings).values():
        for r, s in combinations(by_labeler.values(), 2):
            a, c = _agreements(r.positions(), s.positions())
            agree, compared = agree + a, compared + c
    return _share(agree, compared), compared


def _restricted(groups: list[list[str]], keep: set[str]) -> list[list[str]]:
    """The ranking of only the ids in `keep` (groups left empty are dropped)."""
    kept = [[cid for cid in g if cid in keep] for g in groups]
    return [g for g in kept if g]


def _kendall_w_one(rankings: list[Ranking]) -> float | None:
    """Kendall's W with the tie correction, over the ids every ranking ranks.

    W = 12 S / (m^2 (n^3 - n) - m sum_j T_j), S the sum of squared deviations of the
    items' rank sums from their mean, T_j = sum over rater j's tie groups of t^3 - t.
    None with fewer than 2 raters or items, or when the denominator is 0 (every rater
    tied every item: no order to agree on, so W is undefined, not 0 or 1).
    """
    common = set.intersection(*(set(r.completion_ids) for r in rankings))
    m, n = len(rankings), len(common)
    if m < 2 or n < 2:
        return None
    groups = [_restricted(r.ranking, common) for r in rankings]
    items = sorted(common)
    ranks = np.array([[mid_ranks(g)[cid] for cid in items] for g in groups])  # (m, n)
    rank_sums = ranks.sum(axis=0)  # (n,)
    s = float(((rank_sums - rank_sums.mean()) ** 2).sum())
    ties = sum(len(t) ** 3 - len(t) for g in groups for t in g)
    denominator = m**2 * (n**3 - n) - m * ties
    return 12 * s / denominator if denominator else None


def kendall_w(rankings: Iterable[Ranking]) -> tuple[float | None, int]:
    """(mean Kendall's W over prompts, number of prompts it was defined for)."""
    per_prompt = (_kendall_w_one(list(rs.values())) for rs in _judgements(rankings).values())
    ws = [w for w in per_prompt if w is not None]
    return (float(np.mean(ws)) if ws else None), len(ws)


def _reliability_data(judgements: dict[Key, dict[str, Ranking]]) -> np.ndarray:
    """(coders, units) mid-ranks, NaN where a labeler did not rank that unit; a unit
    is one completion of one prompt under one criterion, kept if >= 2 coders rank it."""
    coders = sorted({lab for by_labeler in judgements.values() for lab in by_labeler})
    columns = []
    for by_labeler in judgements.values():
        ranks = {lab: mid_ranks(r.ranking) for lab, r in by_labeler.items()}
        for cid in sorted({cid for rk in ranks.values() for cid in rk}):
            column = [ranks.get(lab, {}).get(cid, math.nan) for lab in coders]  # (coders,)
            if sum(not math.isnan(v) for v in column) >= 2:
                columns.append(column)
    return np.array(columns, dtype=float).T.reshape(len(coders), len(columns))


def krippendorff_alpha(rankings: Iterable[Ranking]) -> float | None:
    """Krippendorff's ordinal alpha: coders are labelers, units (prompt, criterion,
    completion), values mid-ranks. None when no two labelers share a unit, or when
    all shared values are equal (no variation: alpha is 0/0)."""
    data = _reliability_data(_judgements(rankings))  # (coders, units)
    if data.size == 0 or len(np.unique(data[~np.isnan(data)])) < 2:
        return None
    alpha = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal")
    return float(alpha) if math.isfinite(alpha) else None


def _leave_one_out(by_labeler: dict[str, Ranking]) -> Iterable[tuple[str, int, int]]:
    """(labeler, agreeing, compared) of each labeler of one prompt against the
    consensus of the others; a labeler with no others is skipped."""
    for labeler, ranking in by_labeler.items():
        others = [r for lab, r in by_labeler.items() if lab != labeler]
        if others:
            reference = consensus_ranking(others).positions()
            yield labeler, *_agreements(ranking.positions(), reference)


def labeler_agreement(rankings: Iterable[Ranking]) -> dict[str, dict[str, Any]]:
    """Labeler -> {"rankings", "unrankable", "agreement_with_consensus", "pairs"}.

    "rankings" and "unrankable" count the labeler's records as given; agreement is
    over the pairs both the labeler and the others' (leave-one-out) consensus order
    strictly, so a labeler is never compared with themselves.
    """
    rankings = list(rankings)
    stats: dict[str, dict[str, Any]] = {}
    for r in rankings:
        s = stats.setdefault(r.labeler, {"rankings": 0, "unrankable": 0, "agree": 0, "pairs": 0})
        s["rankings"] += 1
        s["unrankable"] += int(r.unrankable)
    for by_labeler in _judgements(rankings).values():
        for labeler, agree, compared in _leave_one_out(by_labeler):
            stats[labeler]["agree"] += agree
            stats[labeler]["pairs"] += compared
    for s in stats.values():
        s["agreement_with_consensus"] = _share(s.pop("agree"), s["pairs"])
    return stats


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _figures(rankings: list[Ranking]) -> dict[str, Any]:
    """The report's figures for one set of rankings (JSON-safe, 4 decimals)."""
    share, n_pairs = pairwise_agreement(rankings)
    w, n_w = kendall_w(rankings)
    return {
        "n_rankings": len(rankings),
        "n_prompts": len({r.prompt_id for r in rankings}),
        "n_labelers": len({r.labeler for r in rankings}),
        "pairwise_agreement": _round(share),
        "n_pairwise_comparisons": n_pairs,
        "kendall_w": _round(w),
        "n_prompts_w": n_w,
        "krippendorff_alpha": _round(krippendorff_alpha(rankings)),
    }


def agreement_report(rankings: Iterable[Ranking]) -> dict[str, Any]:
    """Every figure above in one JSON-serializable dict, plus per labeler; with more
    than one criterion, also the figures of each criterion ("by_criterion")."""
    rankings = list(rankings)
    report = _figures(rankings)
    report["labelers"] = {
        lab: {**s, "agreement_with_consensus": _round(s["agreement_with_consensus"])}
        for lab, s in labeler_agreement(rankings).items()
    }
    criteria = list(dict.fromkeys(r.criterion for r in rankings))
    if len(criteria) > 1:
        report["by_criterion"] = {
            c: _figures([r for r in rankings if r.criterion == c]) for c in criteria
        }
    return report
