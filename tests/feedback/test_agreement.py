"""Agreement figures: hand-computed examples, an independent alpha, and properties."""

import json
import math
from itertools import combinations

import krippendorff
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from alignloop.feedback import (
    agreement_report,
    kendall_w,
    krippendorff_alpha,
    labeler_agreement,
    mid_ranks,
    pairwise_agreement,
)
from alignloop.schema import Ranking


def ranking(groups, labeler="L1", criterion="overall", prompt_id="p1", **kw) -> Ranking:
    return Ranking(prompt_id=prompt_id, labeler=labeler, criterion=criterion, ranking=groups, **kw)


def strict(order: str, **kw) -> Ranking:
    return ranking([[c] for c in order], **kw)


def test_mid_ranks():
    assert mid_ranks([["a"], ["b", "c"], ["d"]]) == {"a": 1, "b": 2.5, "c": 2.5, "d": 4}
    assert mid_ranks([["a", "b", "c"]]) == {"a": 2, "b": 2, "c": 2}


def test_pairwise_agreement_three_labelers_by_hand():
    rankings = [
        strict("abc", labeler="L1"),  # a>b, a>c, b>c
        strict("acb", labeler="L2"),  # a>b, a>c, c>b
        ranking([["b"], ["a", "c"]], labeler="L3"),  # b>a, b>c, a=c
    ]
    # L1-L2: ab agree, ac agree, bc disagree          -> 2 of 3
    # L1-L3: ab disagree, bc agree, ac tied by L3     -> 1 of 2
    # L2-L3: ab disagree, bc disagree, ac tied by L3  -> 0 of 2
    assert pairwise_agreement(rankings) == (pytest.approx(3 / 7), 7)


def test_pairwise_agreement_keeps_criteria_apart_and_last_ranking_wins():
    rankings = [
        strict("ab", labeler="L1"),
        strict("ba", labeler="L2", criterion="harmless"),  # other criterion: not compared
        strict("ba", labeler="L2"),
        strict("ab", labeler="L2"),  # replaces L2's "ba"
    ]
    assert pairwise_agreement(rankings) == (1.0, 1)
    rankings.append(ranking([], labeler="L2", unrankable=True))  # L2's final word
    assert pairwise_agreement(rankings) == (None, 0)


def test_kendall_w_with_ties_by_hand():
    rankings = [
        strict("abcd", labeler="L1"),  # ranks a 1, b 2,   c 3,   d 4
        ranking([["a"], ["b", "c"], ["d"]], labeler="L2"),  # a 1, b 2.5, c 2.5, d 4
        strict("badc", labeler="L3"),  # a 2, b 1,   c 4,   d 3
    ]
    # m = 3, n = 4. Rank sums: a 4, b 5.5, c 9.5, d 11; mean m(n+1)/2 = 7.5.
    # S = 3.5^2 + 2^2 + 2^2 + 3.5^2 = 32.5. Ties: L2 has one pair, T = 2^3 - 2 = 6.
    # W = 12 S / (m^2 (n^3 - n) - m T) = 390 / (9 * 60 - 3 * 6) = 390 / 522.
    w, n = kendall_w(rankings)
    assert (w, n) == (pytest.approx(390 / 522), 1)


def test_kendall_w_uses_common_items_and_skips_undefined_prompts():
    rankings = [
        strict("abx", labeler="L1"),
        strict("ab", labeler="L2"),  # common items: a, b; both say a > b -> W = 1
        ranking([["a", "b"]], labeler="L1", prompt_id="p2"),
        ranking([["a", "b"]], labeler="L2", prompt_id="p2"),  # all tied: W undefined
        strict("ab", labeler="L1", prompt_id="p3"),  # one labeler: W undefined
    ]
    assert kendall_w(rankings) == (pytest.approx(1.0), 1)
    assert kendall_w([]) == (None, 0)


def ordinal_alpha_from_definition(data: list[list[float]]) -> float:
    """Krippendorff's ordinal alpha straight from the definition (coders x units,
    NaN = missing): coincidences o_ck, marginals n_c, ordinal distance
    d_ck = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2, alpha = 1 - (n-1) sum o d / sum n n d."""
    values = sorted({v for row in data for v in row if not math.isnan(v)})
    o = {(c, k): 0.0 for c in values for k in values}
    for unit in zip(*data, strict=True):
        present = [v for v in unit if not math.isnan(v)]
        for i, j in ((i, j) for i in range(len(present)) for j in range(len(present)) if i != j):
            o[present[i], present[j]] += 1 / (len(present) - 1)
    n_c = {c: sum(o[c, k] for k in values) for c in values}
    n = sum(n_c.values())

    def delta(c, k):
        lo, hi = sorted((values.index(c), values.index(k)))
        return (sum(n_c[g] for g in values[lo : hi + 1]) - (n_c[c] + n_c[k]) / 2) ** 2

    observed = sum(o[c, k] * delta(c, k) for c in values for k in values)
    expected = sum(n_c[c] * n_c[k] * delta(c, k) for c in values for k in values)
    return 1 - (n - 1) * observed / expected


def test_krippendorff_package_on_krippendorffs_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", p. 8:
    # 4 coders, 12 units, values 1-5; the paper's ordinal alpha is 0.815.
    nan = math.nan
    data = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ]
    ours = ordinal_alpha_from_definition(data)
    theirs = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal")
    assert round(ours, 3) == 0.815
    assert theirs == pytest.approx(ours, abs=1e-12)


def test_krippendorff_alpha_by_hand():
    rankings = [strict("abc", labeler="L1"), strict("acb", labeler="L2")]
    # Units a (1, 1), b (2, 3), c (3, 2). Coincidences: o11 = 2, o23 = o32 = 2;
    # n_1 = n_2 = n_3 = 2, n = 6. Ordinal distances: d12 = d23 = (4 - 2)^2 = 4,
    # d13 = (6 - 2)^2 = 16. Observed sum o d = 2*4 + 2*4 = 16; expected
    # sum n_c n_k d = 2 * (4*4 + 4*4 + 4*16) = 192. alpha = 1 - 5 * 16 / 192 = 7/12.
    assert krippendorff_alpha(rankings) == pytest.approx(7 / 12)


def test_krippendorff_alpha_with_ties_and_missing_matches_definition():
    rankings = [
        ranking([["a"], ["b", "c"], ["d"]], labeler="L1"),
        strict("abdc", labeler="L2"),
        strict("bad", labeler="L3"),
        strict("xy", labeler="L1", prompt_id="p2"),
        strict("yx", labeler="L3", prompt_id="p2"),
        strict("zw", labeler="L3", prompt_id="p3"),  # one coder only: no pairable unit
    ]
    nan = math.nan
    data = [  # coders L1, L2, L3 x units p1/a, p1/b, p1/c, p1/d, p2/x, p2/y
        [1, 2.5, 2.5, 4, 1, 2],
        [1, 2, 4, 3, nan, nan],
        [2, 1, nan, 3, 2, 1],
    ]
    assert krippendorff_alpha(rankings) == pytest.approx(ordinal_alpha_from_definition(data))


def test_krippendorff_alpha_undefined_cases():
    assert krippendorff_alpha([strict("ab", labeler="L1")]) is None  # one coder
    assert krippendorff_alpha([strict("ab", labeler="L1"), strict("cd", labeler="L2")]) is None
    tied = [ranking([["a", "b"]], labeler=lab) for lab in ("L1", "L2")]
    assert krippendorff_alpha(tied) is None  # no variation: 0/0


def test_labeler_agreement_is_leave_one_out():
    rankings = [
        strict("abc", labeler="L1"),
        strict("abc", labeler="L2"),
        strict("cba", labeler="L3"),
        strict("cba", labeler="L3", prompt_id="p2"),  # alone on p2: nothing to compare
        ranking([], labeler="L3", prompt_id="p3", unrankable=True),
    ]
    stats = labeler_agreement(rankings)
    # L3 against the consensus of L1 and L2 (a > b > c): disagrees on all 3 pairs.
    assert stats["L3"] == {
        "rankings": 3,
        "unrankable": 1,
        "agreement_with_consensus": 0.0,
        "pairs": 3,
    }
    # L1 against L2 + L3, exact opposites: the consensus ties everything -> no pairs.
    # (Counting L1 in its own consensus would have given it 100%.)
    assert stats["L1"]["agreement_with_consensus"] is None and stats["L1"]["pairs"] == 0


def test_agreement_report_is_json_safe_and_split_by_criterion():
    rankings = [
        strict("abc", labeler="L1"),
        strict("abc", labeler="L2"),
        strict("acb", labeler="L1", criterion="harmless"),
        strict("abc", labeler="L2", criterion="harmless"),
        ranking([], labeler="L3", unrankable=True),
    ]
    report = agreement_report(rankings)
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert report["n_rankings"] == 5 and report["n_prompts"] == 1 and report["n_labelers"] == 3
    assert report["pairwise_agreement"] == round(5 / 6, 4)
    assert report["n_pairwise_comparisons"] == 6
    assert report["by_criterion"]["overall"]["pairwise_agreement"] == 1.0
    assert report["by_criterion"]["harmless"]["pairwise_agreement"] == round(2 / 3, 4)
    assert "labelers" not in report["by_criterion"]["overall"]
    assert report["labelers"]["L3"]["agreement_with_consensus"] is None
    assert "by_criterion" not in agreement_report(rankings[:2])
    empty = agreement_report([])
    assert empty["pairwise_agreement"] is None and empty["krippendorff_alpha"] is None


# -- properties -----------------------------------------------------------------------

IDS = [f"c{i}" for i in range(7)]


@st.composite
def groups(draw, ids=IDS):
    """A ranking's groups: a permutation of some ids cut into consecutive groups."""
    chosen = draw(st.permutations(ids))[: draw(st.integers(2, len(ids)))]
    cuts = sorted(draw(st.sets(st.integers(1, len(chosen)))) - {len(chosen)})
    bounds = [0, *cuts, len(chosen)]
    return [list(chosen[i:j]) for i, j in zip(bounds, bounds[1:], strict=False)]


def copies(gs, n) -> list[Ranking]:
    return [ranking(gs, labeler=f"L{i}") for i in range(n)]


@given(groups(), st.integers(2, 5))
def test_identical_rankings_agree_fully(gs, n):
    assume(len(gs) >= 2)  # some pair is strictly ordered
    share, count = pairwise_agreement(copies(gs, n))
    pairs = math.comb(sum(map(len, gs)), 2) - sum(math.comb(len(g), 2) for g in gs)
    assert (share, count) == (1.0, math.comb(n, 2) * pairs)
    assert kendall_w(copies(gs, n)) == (pytest.approx(1.0), 1)
    assert krippendorff_alpha(copies(gs, n)) == pytest.approx(1.0)


@given(groups())
def test_exact_reverse_agrees_never(gs):
    assume(len(gs) >= 2)
    rankings = [ranking(gs, labeler="L1"), ranking(gs[::-1], labeler="L2")]
    assert pairwise_agreement(rankings)[0] == 0.0


@given(st.lists(groups(), min_size=2, max_size=4))
def test_alpha_matches_the_definition(all_groups):
    rankings = [ranking(g, labeler=f"L{i}") for i, g in enumerate(all_groups)]
    ranks = [mid_ranks(g) for g in all_groups]
    shared = sorted(c for c in {c for r in ranks for c in r} if sum(c in r for r in ranks) >= 2)
    data = [[r.get(c, math.nan) for c in shared] for r in ranks]  # (coders, units)
    assume(len({v for row in data for v in row if not math.isnan(v)}) >= 2)
    assert krippendorff_alpha(rankings) == pytest.approx(ordinal_alpha_from_definition(data))


def test_every_pair_of_labelers_counted_once():
    rankings = [strict("ab", labeler=f"L{i}") for i in range(4)]
    assert pairwise_agreement(rankings) == (1.0, len(list(combinations(range(4), 2))))
