"""Simulated labelers: people who rank summaries by the gold judge, imperfectly.

Each labeler sees a completion's gold utility through their own noise and taste: one
likes longer summaries, one is harsh on rudeness, one sometimes ranks at random. The
default panel agrees with itself about as often as real labelers do (InstructGPT
reports 72.6%; the default panel gives about 75% on `candidate_summaries` with K=4),
so the reward model in the demo learns from data as noisy as the real thing.

A labeler's taste is their noiseless `utility`: the judge's parts reweighted, plus a
bias per token. It is that person's own judge (what they would rank by if they never
slipped), for tests and reports that ask "did the policy get better *for them*"; a
ranking perceives it through Gaussian noise. The default panel's tastes are mild
(their utilities order nearly every pair as the gold judge does); `personal_labelers`
is a panel with strong ones, where the pooled view is wrong for some people on a
quarter or more of the pairs, and `NEW_USER` a persona outside it.

Determinism: each (prompt, labeler, criterion) ranking draws from its own generator
seeded from stable values (crc32 of the ids), never from global random state, so a
prompt's rankings do not depend on which other prompts are in the batch.
"""

from __future__ import annotations

import random
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import combinations, pairwise

from alignloop.schema import Completion, Prompt, Ranking
from alignloop.world.judge import CRITERIA, check_criterion, utility_breakdown

__all__ = [
    "CRITERIA",
    "NEW_USER",
    "SimulatedLabeler",
    "default_labelers",
    "disagreement",
    "panel_utility",
    "personal_labelers",
    "simulate_rankings",
]

# Criteria that count harms: texts equally harmless to a labeler are tied (two clean
# summaries are "neither is more harmful"), not ordered by noise.
COUNTED_CRITERIA = frozenset({"harmlessness"})


@dataclass(frozen=True)
class SimulatedLabeler:
    """A labeler's personality.

    Noiseless utility = the judge's parts of the criterion (rudeness scaled by
    `rude_weight`, invented entities by `invented_weight`) and, by a criterion that
    weighs brevity (overall, helpfulness), their taste in length: `length_bias` per
    token - `over_cost` per token past `max_words` - `under_cost` per token short of
    `min_words` (a reader who wants "at most ten words" or "at least fourteen").
    Perceived quality = utility + Gaussian noise of sd `noise`. Two summaries whose
    perceived quality differs by less than `tie_threshold` are tied. With chance
    `careless_rate` the labeler does not read and ranks at random. By a criterion of
    `COUNTED_CRITERIA` texts of equal utility are tied. `strong_taste`
    marks a labeler whose utility disagrees with the pooled view on a sizeable share
    of pairs (measured in tests/world/test_labelers.py).
    """

    name: str
    noise: float = 0.2
    length_bias: float = 0.0
    careless_rate: float = 0.0
    rude_weight: float = 1.0
    tie_threshold: float = 0.01
    invented_weight: float = 1.0
    max_words: int = 0
    over_cost: float = 0.0
    min_words: int = 0
    under_cost: float = 0.0
    strong_taste: bool = False

    def utility(self, prompt: Prompt, text: str, criterion: str = "overall") -> float:
        """How good this labeler finds `text` by `criterion` without noise or slips:
        the ranking they would give if they always read carefully."""
        check_criterion(criterion)
        b = utility_breakdown(prompt, text)
        parts = {
            **b["parts"],
            "rudeness": self.rude_weight * b["parts"]["rudeness"],
            "invented": self.invented_weight * b["parts"]["invented"],
        }
        value = sum(parts[p] for p in CRITERIA[criterion])
        if "brevity" not in CRITERIA[criterion]:
            return value  # a taste in length is no matter of harm
        n = b["n_tokens"]
        value = value + self.length_bias * n
        if self.over_cost:  # only then: the default panel's arithmetic stays as it was
            value -= self.over_cost * max(0, n - self.max_words)
        if self.under_cost:
            value -= self.under_cost * max(0, self.min_words - n)
        return value

    def perceive(self, prompt: Prompt, text: str, rng: random.Random, criterion: str) -> float:
        """How good this labeler finds `text` this time (utility + one noise draw)."""
        return self.utility(prompt, text, criterion) + rng.gauss(0.0, self.noise)

    def rank(
        self,
        prompt: Prompt,
        completions: list[Completion],
        rng: random.Random,
        criterion: str = "overall",
    ) -> Ranking:
        """Rank `completions` of `prompt`, best group first; identical texts are tied
        (and, by a counted criterion, texts of equal utility)."""
        check_criterion(criterion)
        if not completions:
            raise ValueError(f"no completions of prompt {prompt.id!r} to rank")
        if rng.random() < self.careless_rate:
            order = [c.id for c in completions]
            rng.shuffle(order)
            groups = [[cid] for cid in order]
        else:
            # One draw per distinct text; by a counted criterion, per distinct utility.
            if criterion in COUNTED_CRITERIA:
                key = {c.id: round(self.utility(prompt, c.completion, criterion), 9)
                       for c in completions}  # fmt: skip
            else:
                key = {c.id: c.completion for c in completions}
            seen: dict[str | float, float] = {}
            for c in completions:
                if key[c.id] not in seen:
                    seen[key[c.id]] = self.perceive(prompt, c.completion, rng, criterion)
            scored = sorted(completions, key=lambda c: -seen[key[c.id]])
            groups = [[scored[0].id]]
            for prev, c in pairwise(scored):
                if seen[key[prev.id]] - seen[key[c.id]] <= self.tie_threshold:
                    groups[-1].append(c.id)
                else:
                    groups.append([c.id])
        return Ranking(prompt_id=prompt.id, labeler=self.name, criterion=criterion, ranking=groups)


def _cycled(panel: list[SimulatedLabeler], n: int) -> list[SimulatedLabeler]:
    """`n` labelers: the panel, then copies of it named NAME-2, NAME-3, ..."""
    if n <= len(panel):
        return panel[:n]
    return panel + [
        replace(panel[i % len(panel)], name=f"{panel[i % len(panel)].name}-{i // len(panel) + 1}")
        for i in range(len(panel), n)
    ]


def default_labelers(n: int = 5) -> list[SimulatedLabeler]:
    """A panel of `n` labelers with different personalities (cycled past five)."""
    panel = [
        SimulatedLabeler("careful", noise=0.2),
        SimulatedLabeler("likes-long", noise=0.25, length_bias=0.05),
        SimulatedLabeler("careless", noise=0.25, careless_rate=0.3),
        SimulatedLabeler("harsh-on-rudeness", noise=0.25, rude_weight=3.0),
        SimulatedLabeler("average", noise=0.3),
    ]
    return _cycled(panel, n)


def personal_labelers(n: int = 7) -> list[SimulatedLabeler]:
    """A panel of `n` labelers (cycled past seven) of whom two have strong tastes in
    length: "wants-short" (at most ten words: each word past ten costs them 0.5) and
    "wants-long" (at least fourteen: each word short of that costs 0.3). Each orders
    about 30% of the pairs of `candidate_summaries` completions against the pooled
    view (`scripts/world_tastes.py`), yet both still want the facts: wants-short's best
    summary is the ideal one, wants-long's the ideal in longer wording. The others are
    close to the judge: harsher on rude words or on invented names, noisier, careless.
    Every taste shows in the text (its length, rude words, invented names), so a small
    reward model can learn it."""
    panel = [
        SimulatedLabeler("careful", noise=0.2),
        SimulatedLabeler("wants-short", noise=0.2, max_words=10, over_cost=0.5,
                         strong_taste=True),
        SimulatedLabeler("wants-long", noise=0.2, min_words=14, under_cost=0.3,
                         strong_taste=True),
        SimulatedLabeler("harsh-on-rudeness", noise=0.25, rude_weight=4.0),
        SimulatedLabeler("hates-made-up-names", noise=0.25, invented_weight=3.0),
        SimulatedLabeler("average", noise=0.3),
        SimulatedLabeler("careless", noise=0.25, careless_rate=0.3),
    ]  # fmt: skip
    return _cycled(panel, n)


NEW_USER = SimulatedLabeler(
    "wants-detail-no-insults", noise=0.2, min_words=14, under_cost=0.5, rude_weight=4.0,
    invented_weight=3.0, strong_taste=True,
)  # fmt: skip
"""A persona in no panel, for fitting a new user from a few comparisons: wants at
least fourteen words (more insistently than "wants-long") and is harsh on rude words
and made-up names, a mix of the panel's tastes; orders about 30% of the pairs against
the pooled view of `personal_labelers()`."""


def panel_utility(
    labelers: Sequence[SimulatedLabeler], prompt: Prompt, text: str, criterion: str = "overall"
) -> float:
    """The pooled view: the mean of the panel's noiseless utilities."""
    return sum(lab.utility(prompt, text, criterion) for lab in labelers) / len(labelers)


Judge = Callable[[Prompt, str], float]


def disagreement(
    a: Judge, b: Judge, groups: Iterable[tuple[Prompt, Sequence[str]]], *, tol: float = 1e-9
) -> tuple[float, int]:
    """(share of pairs that `a` and `b` order oppositely, number of pairs) over every
    pair of distinct texts of each (prompt, texts) group that both order strictly."""
    opposite = n = 0
    for prompt, texts in groups:
        distinct = list(dict.fromkeys(texts))
        sa = [a(prompt, t) for t in distinct]
        sb = [b(prompt, t) for t in distinct]
        for i, j in combinations(range(len(distinct)), 2):
            da, db = sa[i] - sa[j], sb[i] - sb[j]
            if abs(da) > tol and abs(db) > tol:
                n += 1
                opposite += (da > 0) != (db > 0)
    if not n:
        raise ValueError("no pair that both judges order strictly")
    return opposite / n, n


def _seed(seed: int, *parts: str) -> int:
    return zlib.crc32(":".join((str(seed), *parts)).encode())


def simulate_rankings(
    prompts: Sequence[Prompt],
    completions: Sequence[Completion],
    labelers: Sequence[SimulatedLabeler],
    *,
    overlap: int,
    seed: int,
    criterion: str = "overall",
    criteria: Sequence[str] | None = None,
) -> list[Ranking]:
    """Each prompt with completions ranked by `overlap` distinct labelers, each of them
    once by `criterion`, or once by each of `criteria` (in that order).

    Assignment is deterministic and balanced: each prompt goes to the labelers with
    the fewest prompts so far, ties broken by a seeded shuffle, so every labeler works
    with every other and no one gets more than one prompt more than anyone else. Who
    ranks a prompt does not depend on the criteria; each (prompt, labeler, criterion)
    ranking draws from its own generator, so `criteria=["overall", "harmlessness"]`
    gives the "overall" rankings of `criterion="overall"` and the "harmlessness" ones of
    `criterion="harmlessness"`, interleaved.
    """
    if not 1 <= overlap <= len(labelers):
        raise ValueError(f"overlap must be between 1 and {len(labelers)} (the labelers); "
                         f"got {overlap}")  # fmt: skip
    if criteria is None:
        criteria = (criterion,)
    elif criterion != "overall":
        raise ValueError(f"give criterion ({criterion!r}) or criteria, not both")
    if not criteria or len(set(criteria)) != len(criteria):
        raise ValueError(f"criteria must be distinct and at least one; got {list(criteria)}")
    for c in criteria:
        check_criterion(c)
    by_prompt: dict[str, list[Completion]] = defaultdict(list)
    for c in completions:
        by_prompt[c.prompt_id].append(c)
    load = [0] * len(labelers)
    assign_rng = random.Random(_seed(seed, "assign"))
    rankings = []
    for prompt in prompts:
        group = by_prompt.get(prompt.id)
        if not group:
            continue
        order = list(range(len(labelers)))
        assign_rng.shuffle(order)
        chosen = sorted(order, key=lambda i: load[i])[:overlap]  # stable: shuffle breaks ties
        for i in chosen:
            load[i] += 1
            lab = labelers[i]
            for crit in criteria:
                rng = random.Random(_seed(seed, prompt.id, lab.name, crit))
                rankings.append(lab.rank(prompt, group, rng, crit))
    return rankings
