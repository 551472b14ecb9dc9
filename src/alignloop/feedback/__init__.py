"""Human feedback math: rankings -> pairs, consensus, and labeler agreement.

    pairs       rankings as labelers gave them -> (prompt, chosen, rejected, margin)
    consensus   several labelers' rankings of a prompt -> one Bradley-Terry ranking
    agreement   how much labelers agree (pairwise, Kendall's W, Krippendorff's alpha)

Imports numpy, krippendorff and the schema (pydantic) only, never torch: the labeling
app and the CLI's report commands load it without a deep-learning stack.
"""

from alignloop.feedback.agreement import (
    agreement_report,
    kendall_w,
    krippendorff_alpha,
    labeler_agreement,
    mid_ranks,
    pairwise_agreement,
)
from alignloop.feedback.consensus import bradley_terry, consensus, consensus_ranking
from alignloop.feedback.pairs import (
    Margin,
    PairsResult,
    no_margin,
    ordered_pairs,
    rank_gap_margin,
    ranking_to_pairs,
    rankings_to_pairs,
)

__all__ = [
    "Margin",
    "PairsResult",
    "agreement_report",
    "bradley_terry",
    "consensus",
    "consensus_ranking",
    "kendall_w",
    "krippendorff_alpha",
    "labeler_agreement",
    "mid_ranks",
    "no_margin",
    "ordered_pairs",
    "pairwise_agreement",
    "rank_gap_margin",
    "ranking_to_pairs",
    "rankings_to_pairs",
]
