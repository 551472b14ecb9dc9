"""Concurrency, on SQLite (BEGIN IMMEDIATE) and PostgreSQL (FOR UPDATE [SKIP LOCKED]):
many labelers asking for tasks at once never break the overlap nor get a prompt
twice; the same ranking sent many times at once is stored once; a double click on
"next" hands out one prompt."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from alignloop.server import assign, service
from alignloop.server.models import Assignment, Labeler, RankingRow


def _labeler(db, name: str) -> int:
    service.add_labeler(db, name)
    with db.read() as session:
        labeler_id = session.scalar(select(Labeler.id).where(Labeler.name == name))
    version = assign.guidelines_for(db, labeler_id, "demo")["version"]
    assign.acknowledge(db, labeler_id, "demo", version)
    return labeler_id


def _together(n: int, fn):
    """Run fn(i) for i < n in n threads released at the same moment."""
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_many_labelers_at_once_keep_overlap_and_never_repeat(db, new_project):
    new_project(n_prompts=12, overlap=3)
    labelers = [_labeler(db, f"l{i}") for i in range(8)]

    def work(i: int) -> list[str]:
        got = []
        while (task := assign.next_task(db, labelers[i], "demo")) is not None:
            got.append(task["prompt"])
            ranking = [[c["id"]] for c in task["completions"]]
            assign.submit_ranking(
                db, labelers[i], task["assignment_id"], assign.Submission(None, ranking)
            )
        return got

    results = _together(len(labelers), work)
    for got in results:
        assert len(got) == len(set(got))  # never the same prompt twice
    per_prompt = Counter(p for got in results for p in got)
    assert len(per_prompt) == 12 and set(per_prompt.values()) == {3}  # overlap exactly 3
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(RankingRow)) == 36
        assert set(session.scalars(select(Assignment.status))) == {"done"}


def test_the_same_ranking_sent_at_once_is_stored_once(db, new_project):
    new_project(n_prompts=1, overlap=1)
    ann = _labeler(db, "ann")
    task = assign.next_task(db, ann, "demo")
    ranking = [[c["id"]] for c in task["completions"]]
    results = _together(
        12,
        lambda i: assign.submit_ranking(
            db, ann, task["assignment_id"], assign.Submission(None, ranking)
        ),
    )
    assert sum(r["created"] for r in results) == 1
    assert all(r["ranking"] == ranking for r in results)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(RankingRow)) == 1


def test_a_double_click_on_next_hands_out_one_prompt(db, new_project):
    new_project(n_prompts=5, overlap=1)
    ann = _labeler(db, "ann")
    tasks = _together(6, lambda i: assign.next_task(db, ann, "demo"))
    assert len({t["assignment_id"] for t in tasks}) == 1
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Assignment)) == 1
