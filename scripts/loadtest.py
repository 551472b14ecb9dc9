"""Load test of the labeling server (a script, not a CI test).

    .venv/bin/python scripts/loadtest.py [--labelers 50] [--rankings 2000] [--postgres]

1. A project (4 completions per prompt, overlap 3) and `--labelers` labelers in a
   fresh database (a SQLite file by default; with --postgres a new database on the
   server of $ALIGNLOOP_TEST_PG, dropped afterwards), and `alignloop serve` on a free
   port of 127.0.0.1 in its own process.
2. Phase 1: every labeler is a client of its own (httpx, async) that asks for the
   next task and submits a ranking, over and over, all at once, until `--rankings`
   rankings are acknowledged (201). Requests per second and the p50/p99 latency of
   each request are measured here.
3. Check: every acknowledged ranking is in the database exactly once, as sent.
4. Phase 2: the same load again; after `--kill-after` more acknowledged rankings the
   server gets SIGKILL and is started again at once. Clients whose request failed
   send it again, unchanged (a ranking submission is idempotent), until the server
   answers. Then the check again, and more: the database is intact (SQLite
   `PRAGMA integrity_check`), no assignment or ranking is half-written (every
   ranking orders exactly its assignment's completions; every done assignment has
   its rankings; no ranking has a second row).

The result goes to --out (default runs/loadtest/result.json), written atomically.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from alignloop.io import write_json
from alignloop.schema import Completion, Prompt
from alignloop.server import service
from alignloop.server.db import Database, display_url, upgrade

console = Console(stderr=True)
PROJECT = "load"
NETWORK_ERRORS = (httpx.TransportError,)


# --- the server process ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`alignloop serve` in a process of its own (its output appended to `log`)."""

    def __init__(self, url: str, port: int, log: Path):
        self.url, self.port, self.log = url, port, log
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start and wait until it answers; returns the seconds that took."""
        t0 = time.monotonic()
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "alignloop",
                    "serve",
                    "--db",
                    self.url,
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        while True:
            try:
                httpx.get(self.base + "/openapi.json", timeout=2).raise_for_status()
                return time.monotonic() - t0
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() - t0 > 120:
                    raise RuntimeError(f"the server did not start; see {self.log}") from None
                time.sleep(0.1)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


# --- the clients ------------------------------------------------------------------------


@dataclass
class Ack:
    assignment_id: int
    criterion: str
    ranking: list[list[str]]  # public ids, as sent
    created: bool  # False: the server already had it (a retry after a lost answer)
    phase: int


@dataclass
class Run:
    target: int  # acknowledged rankings to reach in this phase
    phase: int
    acks: list[Ack] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"next": [], "rank": []})
    requests: int = 0
    network_errors: int = 0
    retried_posts: int = 0
    no_task_left: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self) -> int:
        return sum(a.phase == self.phase for a in self.acks)


async def request(
    client: httpx.AsyncClient, run: Run, kind: str, method: str, path: str, **kw
) -> httpx.Response:
    """The request, sent again unchanged after a network error (the server may be
    down: SIGKILL and restart) until it gets an answer."""
    wait = 0.05
    first = True
    while True:
        t0 = time.perf_counter()
        try:
            response = await client.request(method, path, **kw)
        except NETWORK_ERRORS:
            run.network_errors += 1
            if method == "POST" and first:
                run.retried_posts += 1
            first = False
            await asyncio.sleep(wait)
            wait = min(wait * 2, 1.0)
            continue
        run.requests += 1
        run.latencies[kind].append(time.perf_counter() - t0)
        return response


def a_ranking(ids: list[str], rng: random.Random) -> list[list[str]]:
    """A random order with an occasional tie."""
    order = ids[:]
    rng.shuffle(order)
    groups = [[order[0]]]
    for cid in order[1:]:
        if rng.random() < 0.2:
            groups[-1].append(cid)
        else:
            groups.append([cid])
    return groups


async def labeler(
    client: httpx.AsyncClient, token: str, run: Run, acks: list[Ack], rng: random.Random, on_ack
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    while not run.done.is_set():
        r = await request(
            client, run, "next", "GET", f"/api/v1/tasks/next?project={PROJECT}", headers=headers
        )
        if r.status_code == 204:
            run.no_task_left += 1
            return
        r.raise_for_status()
        task = r.json()
        for criterion in task["criteria"]:
            if criterion in task["ranked_criteria"] or run.done.is_set():
                continue
            ranking = a_ranking([c["id"] for c in task["completions"]], rng)
            body = {"criterion": criterion, "ranking": ranking}
            r = await request(
                client,
                run,
                "rank",
                "POST",
                f"/api/v1/assignments/{task['assignment_id']}/ranking",
                json=body,
                headers=headers,
            )
            if r.status_code not in (200, 201):
                raise RuntimeError(f"submission refused: {r.status_code} {r.text}")
            acks.append(
                Ack(task["assignment_id"], criterion, ranking, r.status_code == 201, run.phase)
            )
            on_ack()
            if run.count() >= run.target:
                run.done.set()


async def phase(
    server: Server,
    tokens: list[str],
    run: Run,
    acks: list[Ack],
    *,
    seed: int,
    kill_after: int | None = None,
) -> dict:
    """Drive all labelers until `run.target` acknowledgements; with `kill_after`,
    SIGKILL the server after that many and start it again."""
    run.acks = acks
    limits = httpx.Limits(max_connections=len(tokens) + 10, max_keepalive_connections=len(tokens))
    kill: dict = {}
    with Progress(
        TextColumn(f"phase {run.phase}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("rankings", total=run.target)
        loop = asyncio.get_running_loop()
        restart_done = asyncio.Event()

        async def restart() -> None:
            # SIGKILL while requests are in flight, then the server comes back.
            in_flight_before = run.requests
            server.kill()
            kill["killed_at_ack"] = run.count()
            kill["restart_seconds"] = round(await loop.run_in_executor(None, server.start), 2)
            kill["requests_between"] = run.requests - in_flight_before
            restart_done.set()

        def on_ack() -> None:
            progress.update(bar, completed=run.count())
            if kill_after is not None and not kill and run.count() >= kill_after:
                kill["pending"] = True
                loop.create_task(restart())

        async with httpx.AsyncClient(base_url=server.base, limits=limits, timeout=60) as client:
            t0 = time.perf_counter()
            await asyncio.gather(
                *(
                    labeler(client, tok, run, acks, random.Random(f"{seed}:{i}"), on_ack)
                    for i, tok in enumerate(tokens)
                )
            )
            seconds = time.perf_counter() - t0
            if kill:
                await restart_done.wait()
    kill.pop("pending", None)
    return {"seconds": seconds, **kill}


def pct(values: list[float], q: float) -> float:
    return round(1000 * statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


# --- checks against the database --------------------------------------------------------


def check(db: Database, acks: list[Ack]) -> dict:
    """Every acknowledged ranking is stored exactly once, as sent; nothing is
    half-written. Raises AssertionError with what is wrong."""
    from sqlalchemy import func, select

    from alignloop.server.assign import check_ranking
    from alignloop.server.models import DONE, SKIPPED, Assignment, CompletionRow, RankingRow

    with db.read() as session:
        project = service.get_project(session, PROJECT)
        rows = session.execute(
            select(RankingRow, Assignment)
            .join(Assignment)
            .where(Assignment.project_id == project.id)
        ).all()
        completions: dict[int, list[CompletionRow]] = {}
        for c in session.scalars(
            select(CompletionRow).where(CompletionRow.project_id == project.id)
        ):
            completions.setdefault(c.prompt_id, []).append(c)
        assignments = session.scalars(
            select(Assignment).where(Assignment.project_id == project.id)
        ).all()
        duplicates = session.execute(
            select(RankingRow.assignment_id, RankingRow.criterion, func.count())
            .group_by(RankingRow.assignment_id, RankingRow.criterion)
            .having(func.count() > 1)
        ).all()
        criteria = list(project.criteria)
    stored = {(r.assignment_id, r.criterion): (r, a) for r, a in rows}
    problems = []
    if duplicates:
        problems.append(f"{len(duplicates)} (assignment, criterion) with several rankings")
    acked = {}
    for ack in acks:
        key = (ack.assignment_id, ack.criterion)
        if key in acked and acked[key].ranking != ack.ranking:
            problems.append(f"assignment {key} acknowledged twice with different rankings")
        acked[key] = ack
        if key not in stored:
            problems.append(f"acknowledged ranking {key} is not in the database")
            continue
        row, a = stored[key]
        public = {c.external_id: c.public_id for c in completions[a.prompt_id]}
        as_sent = [sorted(g) for g in ack.ranking]
        if [sorted(public[c] for c in g) for g in row.groups] != as_sent:
            problems.append(f"ranking {key} is stored differently from what was sent")
    for row, a in stored.values():  # nothing half-written
        ids = [c.public_id for c in completions[a.prompt_id]]
        public = {c.external_id: c.public_id for c in completions[a.prompt_id]}
        try:
            check_ranking([[public[c] for c in g] for g in row.groups], ids, row.unrankable)
        except Exception as e:  # any failure is the finding
            problems.append(f"ranking {row.id} is not a whole ranking: {e}")
        if a.status == SKIPPED:
            problems.append(f"assignment {a.id} is skipped but has a ranking")
    ranked = {}
    for aid, criterion in stored:
        ranked.setdefault(aid, set()).add(criterion)
    for a in assignments:
        if a.status == DONE and ranked.get(a.id, set()) != set(criteria):
            problems.append(f"assignment {a.id} is done without all its rankings")
        if a.status == DONE and a.completed_at is None:
            problems.append(f"assignment {a.id} is done without a completion time")
    integrity = None
    if db.backend == "sqlite":
        with db.engine.connect() as conn:
            integrity = conn.exec_driver_sql("PRAGMA integrity_check").scalar()
        if integrity != "ok":
            problems.append(f"integrity_check: {integrity}")
    if problems:
        raise AssertionError("\n".join(problems[:20]))
    return {
        "acknowledged": len(acked),
        "rows": len(stored),
        "rows_never_acknowledged": len(set(stored) - set(acked)),
        "duplicates": len(duplicates),
        "sqlite_integrity_check": integrity,
        "assignments": {
            s: sum(a.status == s for a in assignments)
            for s in ("pending", "done", "skipped", "expired")
        },
    }


# --- main ------------------------------------------------------------------------------


def setup(db: Database, n_prompts: int, n_labelers: int) -> list[str]:
    prompts = [
        Prompt(id=f"p{i}", prompt=f"Summarize document {i}: " + "words " * 40)
        for i in range(n_prompts)
    ]
    completions = [
        Completion(
            id=f"p{i}-{j}",
            prompt_id=f"p{i}",
            completion=f"A summary {j} of document {i}. " * 5,
            policy=f"policy-{j % 2}",
        )
        for i in range(n_prompts)
        for j in range(4)
    ]
    service.create_project(
        db,
        name=PROJECT,
        criteria=["helpfulness"],
        prompts=prompts,
        completions=completions,
        overlap=3,
        guidelines="# Rank them\nBest first.\n",
    )
    return [service.add_labeler(db, f"labeler-{i:02d}") for i in range(n_labelers)]


def acknowledge_all(base: str, tokens: list[str]) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        for token in tokens:
            h = {"Authorization": f"Bearer {token}"}
            version = client.get(f"/api/v1/projects/{PROJECT}/guidelines", headers=h).json()
            client.post(
                f"/api/v1/projects/{PROJECT}/guidelines/{version['version']}/acknowledge", headers=h
            ).raise_for_status()


def latency_summary(run: Run) -> dict:
    out = {}
    for kind, values in run.latencies.items():
        if len(values) > 1:
            out[kind] = {
                "n": len(values),
                "p50_ms": pct(values, 50),
                "p99_ms": pct(values, 99),
                "max_ms": round(1000 * max(values), 1),
            }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labelers", type=int, default=50)
    ap.add_argument("--rankings", type=int, default=2000, help="acknowledged rankings, phase 1")
    ap.add_argument(
        "--kill-phase",
        type=int,
        default=1000,
        help="acknowledged rankings of phase 2 (the server is killed in it)",
    )
    ap.add_argument(
        "--kill-after",
        type=int,
        default=300,
        help="SIGKILL after this many acknowledged rankings of phase 2",
    )
    ap.add_argument(
        "--postgres",
        action="store_true",
        help="a new database on the PostgreSQL server of $ALIGNLOOP_TEST_PG",
    )
    ap.add_argument("--out", default="runs/loadtest/result.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="alignloop-load-"))
    pg_name = None
    if args.postgres:
        import psycopg
        from sqlalchemy.engine import make_url

        server_url = os.environ.get(
            "ALIGNLOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"
        )
        pg_name = f"alignloop_load_{secrets.token_hex(4)}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{pg_name}"')
        url = make_url(server_url).set(database=pg_name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{work / 'labels.db'}"
    db = Database(url)
    server = Server(url, free_port(), work / "server.log")
    result: dict = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "database": display_url(db.url).replace(str(work), "<tmp>"),
        "labelers": args.labelers,
        "machine": {"cpus": os.cpu_count(), "note": "client and server on one machine, shared"},
    }
    try:
        upgrade(db)
        n_prompts = (args.rankings + args.kill_phase) // 3 + 2 * args.labelers
        tokens = setup(db, n_prompts, args.labelers)
        result["prompts"] = n_prompts
        result["server_start_seconds"] = round(server.start(), 2)
        acknowledge_all(server.base, tokens)
        acks: list[Ack] = []

        run1 = Run(target=args.rankings, phase=1)
        timing = asyncio.run(phase(server, tokens, run1, acks, seed=args.seed))
        result["phase1"] = {
            "acknowledged_rankings": run1.count(),
            "requests": run1.requests,
            "seconds": round(timing["seconds"], 2),
            "requests_per_second": round(run1.requests / timing["seconds"], 1),
            "rankings_per_second": round(run1.count() / timing["seconds"], 1),
            "latency": latency_summary(run1),
            "network_errors": run1.network_errors,
            "check": check(db, acks),
        }
        console.print(result["phase1"])

        run2 = Run(target=args.kill_phase, phase=2)
        timing = asyncio.run(
            phase(server, tokens, run2, acks, seed=args.seed + 1, kill_after=args.kill_after)
        )
        result["phase2_sigkill"] = {
            "acknowledged_rankings": run2.count(),
            "killed_after_acknowledged": timing.get("killed_at_ack"),
            "restart_seconds": timing.get("restart_seconds"),
            "requests": run2.requests,
            "network_errors": run2.network_errors,
            "posts_resent_after_a_network_error": run2.retried_posts,
            "resent_posts_answered_already_stored": sum(
                not a.created for a in acks if a.phase == 2
            ),
            "seconds": round(timing["seconds"], 2),
            "check": check(db, acks),
        }
        console.print(result["phase2_sigkill"])
        log = server.log.read_text()
        result["tokens_in_server_log"] = sum(t in log for t in tokens)
        result["ok"] = True
    finally:
        server.stop()
        db.dispose()
        if pg_name:
            import psycopg

            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    write_json(args.out, result)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
