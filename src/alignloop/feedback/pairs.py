"""Rankings -> preference pairs (`prompt`, `chosen`, `rejected`, `margin`).

A ranking of K completions, best group first, gives every pair (a, b) with a in an
earlier group than b: C(K, 2) pairs when all groups are singletons, C(K, 2) - sum
C(n_g, 2) with tie groups of sizes n_g (a tie is no preference, so it gives no pair).
This is how InstructGPT used its K-way rankings (Ouyang et al. 2022, sec. 3.5): all
C(K, 2) comparisons of one prompt, kept together so that a trainer can put them in one
batch instead of overfitting on a prompt whose pairs it sees in many batches.

The rankings stay the record of what labelers said; pairs are derived here, in one
place, and never stored in their place.

Pairs that carry no preference between *texts* are skipped and counted, not raised:
two different completions with identical text (a policy that wrote the same thing
twice), or a pair in which either text is empty or blank. A reward model sees only
text, so such a pair is either contradictory (identical inputs, one labelled better)
or not a comparison `Comparison` accepts; the counts let the caller report how many.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from alignloop.schema import Comparison, Completion, Prompt, Ranking, check_rankings

__all__ = [
    "Margin",
    "PairsResult",
    "no_margin",
    "ordered_pairs",
    "rank_gap_margin",
    "ranking_to_pairs",
    "rankings_to_pairs",
]

# (better_group, worse_group, ranking) -> margin of the pair, or None for no margin.
Margin = Callable[[int, int, Ranking], float | None]


def no_margin(better_group: int, worse_group: int, ranking: Ranking) -> float | None:
    """No margin: the plain Bradley-Terry pairwise loss (InstructGPT)."""
    return None


def rank_gap_margin(better_group: int, worse_group: int, ranking: Ranking) -> float:
    """How many groups apart the two completions are (1.0 for adjacent groups).

    A margin asks the reward model to separate far-apart completions by more, as
    Llama 2's margin loss does with its "significantly better" labels (Touvron et
    al. 2023, eq. 2); the gap in the ranking is the nearest thing a ranking has.
    """
    return float(worse_group - better_group)


@dataclass
class PairsResult:
    """Pairs derived from rankings, and what was left out on the way."""

    pairs: list[Comparison]
    skipped_identical: int = 0  # pairs of two completions with the same text
    skipped_empty: int = 0  # pairs in which either text is empty or blank
    unrankable: int = 0  # rankings marked unrankable (they give no pairs)

    def __iadd__(self, other: PairsResult) -> PairsResult:
        self.pairs.extend(other.pairs)
        self.skipped_identical += other.skipped_identical
        self.skipped_empty += other.skipped_empty
        self.unrankable += other.unrankable
        return self


def ordered_pairs(ranking: Ranking) -> Iterator[tuple[str, str, int, int]]:
    """Every (better_id, worse_id, better_group, worse_group) the ranking states.

    Deterministic: groups in order, ids within a group in their given order. Tied ids
    give nothing; an unrankable ranking gives nothing.
    """
    if ranking.unrankable:
        return
    groups = ranking.ranking
    for i, better in enumerate(groups):
        for j in range(i + 1, len(groups)):
            for a in better:
                for b in groups[j]:
                    yield a, b, i, j


def _pairs_of_one(
    ranking: Ranking,
    completions: Mapping[str, Completion],
    prompt: Prompt,
    margin: Margin,
) -> PairsResult:
    """The pairs of one ranking whose ids are known to exist (checked by the caller)."""
    result = PairsResult(pairs=[], unrankable=int(ranking.unrankable))
    for a, b, i, j in ordered_pairs(ranking):
        chosen, rejected = completions[a].completion, completions[b].completion
        if not chosen.strip() or not rejected.strip():
            result.skipped_empty += 1
        elif chosen == rejected:
            result.skipped_identical += 1
        else:
            result.pairs.append(
                Comparison(
                    prompt=prompt.prompt,
                    chosen=chosen,
                    rejected=rejected,
                    margin=margin(i, j, ranking),
                    prompt_id=ranking.prompt_id,
                    chosen_id=a,
                    rejected_id=b,
                    labeler=ranking.labeler,
                    criterion=ranking.criterion,
                    source="ranking",
                )
            )
    return result


def ranking_to_pairs(
    ranking: Ranking,
    completions: Mapping[str, Completion],
    prompt: Prompt,
    margin: Margin = no_margin,
) -> list[Comparison]:
    """The comparisons one ranking gives (see the module doc for what is skipped).

    `completions` maps completion id -> Completion (it may hold other prompts' too).
    Raises SchemaError naming the ranking's file:line when it is not a ranking of
    `prompt` or names a completion that is missing or belongs to another prompt.
    """
    known = [completions[cid] for cid in ranking.completion_ids if cid in completions]
    check_rankings([ranking], known, [prompt])
    return _pairs_of_one(ranking, completions, prompt, margin).pairs


def _as_list(records: Iterable | Mapping) -> list:
    """Records given as a list or as a mapping id -> record: the records."""
    return list(records.values()) if isinstance(records, Mapping) else list(records)


def _by_prompt(rankings: Iterable[Ranking]) -> list[Ranking]:
    """Rankings reordered so those of one prompt are adjacent (first-seen prompt
    order, stable within a prompt): a trainer can then group a prompt's pairs."""
    groups: dict[str, list[Ranking]] = {}
    for r in rankings:
        groups.setdefault(r.prompt_id, []).append(r)
    return [r for group in groups.values() for r in group]


def rankings_to_pairs(
    rankings: Iterable[Ranking],
    completions: Iterable[Completion] | Mapping[str, Completion],
    prompts: Iterable[Prompt] | Mapping[str, Prompt],
    *,
    criterion: str | None = None,
    margin: Margin = no_margin,
) -> PairsResult:
    """All pairs of all rankings (of one `criterion` when given), pairs of one prompt
    contiguous.

    Every ranking is checked against the completions and prompts first, also those of
    other criteria: a bad id is a bad file whatever is exported from it. The
    SchemaError names each bad record's file and line.
    """
    rankings, completions, prompts = _as_list(rankings), _as_list(completions), _as_list(prompts)
    check_rankings(rankings, completions, prompts)
    completion_by_id = {c.id: c for c in completions}
    prompt_by_id = {p.id: p for p in prompts}
    chosen = [r for r in rankings if criterion is None or r.criterion == criterion]
    result = PairsResult(pairs=[])
    for r in _by_prompt(chosen):
        result += _pairs_of_one(r, completion_by_id, prompt_by_id[r.prompt_id], margin)
    return result
