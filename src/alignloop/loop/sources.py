"""Where a round's rankings come from: one small interface, three sources.

    SimulatedLabelers   the built-in world's labelers (the demo and the tests)
    ServerLabelers      people, through an alignloop labeling server's HTTP API: the
                        round's project is created there, the loop waits for its
                        rankings and exports them, like any other client of the API
    JudgeLabelers       AI feedback (RLAIF): a `module:function` judge or a reward
                        model ranks each prompt's completions

Each has `collect(round, round_dir, prompts, completions, progress) -> rankings`.
`round_dir` is the round's directory, where a source keeps what it needs to resume
(the server source: its project's name and deadline). The loop never imports the
server (the wall): `ServerLabelers` speaks HTTP with the standard library's urllib.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from alignloop.config import ConfigError
from alignloop.schema import Completion, Prompt, Ranking

__all__ = [
    "ADMIN_TOKEN_ENV",
    "JudgeLabelers",
    "LabelSource",
    "Progress",
    "ServerError",
    "ServerLabelers",
    "SimulatedLabelers",
    "judge_agreement",
    "rank_by_scores",
]

ADMIN_TOKEN_ENV = "ALIGNLOOP_ADMIN_TOKEN"  # secrets come from the environment, never flags
Progress = Callable[[str], None]  # a status line: "412 of 500 prompts complete"


class LabelSource(Protocol):
    name: str

    def collect(
        self,
        round: int,
        round_dir: Path,
        prompts: Sequence[Prompt],
        completions: Sequence[Completion],
        progress: Progress,
    ) -> list[Ranking]:
        """The rankings of `completions` (K per prompt of `prompts`) for round `round`."""
        ...


# --- simulated -------------------------------------------------------------------------


@dataclass
class SimulatedLabelers:
    """The world's simulated labelers (`world.simulate_rankings`): `overlap` of a pool
    of `labelers` rank each prompt; the seed moves on with the round."""

    labelers: int = 5
    overlap: int = 3
    seed: int = 0
    criterion: str = "overall"
    name: str = "simulated"

    def collect(self, round, round_dir, prompts, completions, progress) -> list[Ranking]:
        from alignloop.world import default_labelers, simulate_rankings

        progress(f"{len(prompts)} prompts, {self.overlap} of {self.labelers} labelers each")
        return simulate_rankings(
            prompts, completions, default_labelers(self.labelers), overlap=self.overlap,
            seed=self.seed + round - 1, criterion=self.criterion,
        )  # fmt: skip


# --- AI judge ----------------------------------------------------------------------------


def rank_by_scores(
    prompt_id: str, scored: Sequence[tuple[str, float]], *, labeler: str, criterion: str
) -> Ranking:
    """A ranking of (completion id, score) pairs, best first; equal scores tie."""
    groups: list[list[str]] = []
    last = None
    for cid, score in sorted(scored, key=lambda t: -t[1]):
        if groups and score == last:
            groups[-1].append(cid)
        else:
            groups.append([cid])
        last = score
    return Ranking(prompt_id=prompt_id, labeler=labeler, criterion=criterion, ranking=groups)


@dataclass
class JudgeLabelers:
    """RLAIF: `judge` ranks each prompt's completions by its score, one ranking per
    prompt and criterion. `judge` is 'module:function' (judge(prompt, completion) ->
    float, as `alignloop eval --judge`) or a reward-model directory (its scores)."""

    judge: str
    criteria: Sequence[str] = ("overall",)
    batch_size: int = 32
    max_length: int = 512
    name: str = "judge"

    def scores(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> list[float]:
        by_id = {p.id: p for p in prompts}
        if Path(self.judge).is_dir():
            from alignloop.models import RewardModel

            model = RewardModel.from_pretrained(self.judge, what="--ai-judge")
            return model.score(
                [by_id[c.prompt_id].prompt for c in completions],
                [c.completion for c in completions],
                batch_size=self.batch_size, max_length=self.max_length,
            )  # fmt: skip
        from alignloop.config import load_callable

        fn = load_callable(self.judge, "--ai-judge")
        return [float(fn(by_id[c.prompt_id], c.completion)) for c in completions]

    def collect(self, round, round_dir, prompts, completions, progress) -> list[Ranking]:
        progress(f"{self.judge} ranks {len(completions)} completions")
        scores = self.scores(prompts, completions)
        by_prompt: dict[str, list[tuple[str, float]]] = {}
        for c, s in zip(completions, scores, strict=True):
            by_prompt.setdefault(c.prompt_id, []).append((c.id, s))
        return [
            rank_by_scores(p.id, by_prompt[p.id], labeler="ai-judge", criterion=criterion)
            for p in prompts if p.id in by_prompt
            for criterion in self.criteria
        ]  # fmt: skip


def judge_agreement(judged: Sequence[Ranking], people: Sequence[Ranking]) -> dict[str, Any]:
    """How often the AI judge orders a pair of completions as people did: over every
    pair a person put in a strict order (same prompt and criterion), the share the
    judge orders the same way (a tie of the judge counts half)."""
    mine = {(r.prompt_id, r.criterion): r.positions() for r in judged}
    agree = total = 0.0
    for r in people:
        if r.unrankable or (r.prompt_id, r.criterion) not in mine:
            continue
        theirs, pos = mine[(r.prompt_id, r.criterion)], r.positions()
        for a in pos:
            for b in pos:
                if pos[a] < pos[b] and a in theirs and b in theirs:
                    total += 1
                    if theirs[a] == theirs[b]:
                        agree += 0.5
                    elif theirs[a] < theirs[b]:
                        agree += 1
    return {"agreement": agree / total if total else None, "pairs": int(total)}


# --- a labeling server -------------------------------------------------------------------


class ServerError(RuntimeError):
    """The labeling server refused a request or cannot be reached (in words)."""


@dataclass
class ServerLabelers:
    """People rank on an alignloop labeling server. Each round: a project named
    `{prefix}-round-{N}` is created through the admin API (`POST /api/v1/admin/projects`)
    with the round's prompts and completions, the criteria, guidelines, overlap and
    gold items; labelers see its tasks at once. The loop polls its status, showing how
    many rankings came in, and moves on when every prompt has its overlap, or after
    `wait_s` seconds once at least `min_share` of the prompts are complete; then it
    exports the rankings through the API. The admin token is read from
    $ALIGNLOOP_ADMIN_TOKEN. Resuming, the round's project and deadline are reused
    (`round_dir/server.json`)."""

    url: str
    guidelines: str
    criteria: Sequence[str] = ("overall",)
    overlap: int = 3
    prefix: str = "loop"
    gold: tuple[list[Prompt], list[Completion], list[Ranking]] | None = None
    gold_rate: float | None = None
    assignment_ttl_s: int = 3600
    wait_s: float = 86400.0
    min_share: float = 1.0
    poll_s: float = 10.0
    token: str | None = None  # default: $ALIGNLOOP_ADMIN_TOKEN
    name: str = "server"
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if self.token is None:
            self.token = os.environ.get(ADMIN_TOKEN_ENV)
        if not self.token:
            raise ConfigError(
                f"the server source needs an admin's API token in ${ADMIN_TOKEN_ENV} "
                "(alignloop labeler add NAME --admin prints one)"
            )
        if not 0.0 < self.min_share <= 1.0:
            raise ConfigError("--min-share must be in (0, 1]")

    # -- HTTP --
    def _request(self, method: str, path: str, body: Any = None, *, ok=(200,)) -> tuple[int, bytes]:
        """(status, body); an HTTP error not in `ok` is a ServerError in words, a server
        that does not answer an URLError (the poll tries again; see `_reach`)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return e.code, e.read()
            detail = e.read().decode(errors="replace")[:500]
            raise ServerError(f"{method} {self.url}{path}: HTTP {e.code}: {detail}") from None

    def _get_json(self, path: str) -> Any:
        return json.loads(self._request("GET", path)[1])

    def _reach(self, what: Callable[[], Any]) -> Any:
        """`what()`, a server that does not answer being a ServerError in words."""
        try:
            return what()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise ServerError(f"cannot reach the labeling server at {self.url}: {reason}") from None

    # -- a round --
    def project_name(self, round: int) -> str:
        return f"{self.prefix}-round-{round}"

    def create(self, project: str, prompts, completions) -> bool:
        """Create the round's project; False when it exists already (a resumed round)."""
        gold_prompts, gold_completions, gold = self.gold or ([], [], [])
        body = {
            "name": project,
            "criteria": list(self.criteria),
            "guidelines": self.guidelines,
            "prompts": [p.to_dict() for p in [*prompts, *gold_prompts]],
            "completions": [c.to_dict() for c in [*completions, *gold_completions]],
            "gold": [r.to_dict() for r in gold],
            "overlap": self.overlap,
            "gold_rate": self.gold_rate,
            "assignment_ttl_s": self.assignment_ttl_s,
        }
        status, _ = self._request("POST", "/api/v1/admin/projects", body, ok=(201, 409))
        return status == 201

    def status(self, project: str) -> dict[str, Any]:
        return self._get_json(f"/api/v1/admin/projects/{urllib.parse.quote(project)}/status")

    def export(self, project: str) -> list[Ranking]:
        quoted = urllib.parse.quote(project)
        _, body = self._request("GET", f"/api/v1/admin/projects/{quoted}/export?what=rankings")
        return [Ranking.model_validate(json.loads(line)) for line in body.decode().splitlines()
                if line.strip()]  # fmt: skip

    def collect(self, round, round_dir, prompts, completions, progress) -> list[Ranking]:
        from alignloop.io import write_json

        project = self.project_name(round)
        marker = Path(round_dir) / "server.json"
        if marker.exists():  # resumed: the project was made; keep its deadline
            info = json.loads(marker.read_text())
        else:
            info = {"project": project, "url": self.url, "deadline": time.time() + self.wait_s}
        created = self._reach(lambda: self.create(project, prompts, completions))
        if not created and not marker.exists():
            progress(f"project {project} exists on {self.url}: waiting for its rankings")
        write_json(marker, info)
        while True:
            try:
                status = self.status(project)["progress"]
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                progress(f"the server does not answer ({e}); trying again")
                self.sleep(self.poll_s)
                continue
            n, done = status["prompts"], status["complete_prompts"]
            share = done / n if n else 1.0
            late = time.time() >= info["deadline"]
            progress(f"{status['regular_rankings']} rankings; {done} of {n} prompts have "
                     f"their {self.overlap} labelers{'; past the deadline' if late else ''}")
            if done >= n or (late and share >= self.min_share):
                break
            self.sleep(self.poll_s)
        return self._reach(lambda: self.export(project))
