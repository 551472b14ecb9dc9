"""Simulated labelers: people who rank summaries by the gold judge, imperfectly.

Each labeler sees a completion's gold utility through their own noise and taste: one
likes longer summaries, one is harsh on rudeness, one sometimes ranks at random. The
default panel agrees with itself about as often as real labelers do (InstructGPT
reports 72.6%; the default panel gives about 75% on `candidate_summaries` with K=4),
so the reward model in the demo learns from data as noisy as the real thing.

Determinism: each (prompt, labeler) ranking draws from its own generator seeded from
stable values (crc32 of the ids), never from global random state, so a prompt's
rankings do not depend on which other prompts are in the batch.
"""

from __future__ import annotations

import random
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from alignloop.schema import Completion, Prompt, Ranking
from alignloop.world.judge import CRITERIA, check_criterion, utility_breakdown

__all__ = ["CRITERIA", "SimulatedLabeler", "default_labelers", "simulate_rankings"]


@dataclass(frozen=True)
class SimulatedLabeler:
    """A labeler's personality.

    Perceived quality = the judge's parts (rudeness scaled by `rude_weight`)
    + `length_bias` per token + Gaussian noise of sd `noise`. Two summaries whose
    perceived quality differs by less than `tie_threshold` are tied. With chance
    `careless_rate` the labeler does not read and ranks at random.
    """

    name: str
    noise: float = 0.2
    length_bias: float = 0.0
    careless_rate: float = 0.0
    rude_weight: float = 1.0
    tie_threshold: float = 0.01

    def perceive(self, prompt: Prompt, text: str, rng: random.Random, criterion: str) -> float:
        """How good this labeler finds `text` this time (one noise draw)."""
        check_criterion(criterion)
        b = utility_breakdown(prompt, text)
        parts = {**b["parts"], "rudeness": self.rude_weight * b["parts"]["rudeness"]}
        value = sum(parts[p] for p in CRITERIA[criterion])
        return value + self.length_bias * b["n_tokens"] + rng.gauss(0.0, self.noise)

    def rank(
        self,
        prompt: Prompt,
        completions: list[Completion],
        rng: random.Random,
        criterion: str = "overall",
    ) -> Ranking:
        """Rank `completions` of `prompt`, best group first; identical texts are tied."""
        check_criterion(criterion)
        if not completions:
            raise ValueError(f"no completions of prompt {prompt.id!r} to rank")
        if rng.random() < self.careless_rate:
            order = [c.id for c in completions]
            rng.shuffle(order)
            groups = [[cid] for cid in order]
        else:
            seen: dict[str, float] = {}  # one draw per distinct text
            for c in completions:
                if c.completion not in seen:
                    seen[c.completion] = self.perceive(prompt, c.completion, rng, criterion)
            scored = sorted(completions, key=lambda c: -seen[c.completion])
            groups = [[scored[0].id]]
            for prev, c in pairwise(scored):
                if seen[prev.completion] - seen[c.completion] <= self.tie_threshold:
                    groups[-1].append(c.id)
                else:
                    groups.append([c.id])
        return Ranking(prompt_id=prompt.id, labeler=self.name, criterion=criterion, ranking=groups)


def default_labelers(n: int = 5) -> list[SimulatedLabeler]:
    """A panel of `n` labelers with different personalities (cycled past five)."""
    panel = [
        SimulatedLabeler("careful", noise=0.2),
        SimulatedLabeler("likes-long", noise=0.25, length_bias=0.05),
        SimulatedLabeler("careless", noise=0.25, careless_rate=0.3),
        SimulatedLabeler("harsh-on-rudeness", noise=0.25, rude_weight=3.0),
        SimulatedLabeler("average", noise=0.3),
    ]
    if n <= len(panel):
        return panel[:n]
    return panel + [
        SimulatedLabeler(f"{panel[i % len(panel)].name}-{i // len(panel) + 1}",
                         **{k: v for k, v in vars(panel[i % len(panel)]).items() if k != "name"})
        for i in range(len(panel), n)
    ]  # fmt: skip


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
) -> list[Ranking]:
    """Each prompt with completions ranked by `overlap` distinct labelers.

    Assignment is deterministic and balanced: each prompt goes to the labelers with
    the fewest prompts so far, ties broken by a seeded shuffle, so every labeler works
    with every other and no one gets more than one prompt more than anyone else.
    """
    if not 1 <= overlap <= len(labelers):
        raise ValueError(f"overlap must be between 1 and {len(labelers)} (the labelers); "
                         f"got {overlap}")  # fmt: skip
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
            rng = random.Random(_seed(seed, prompt.id, lab.name, criterion))
            rankings.append(lab.rank(prompt, group, rng, criterion))
    return rankings
