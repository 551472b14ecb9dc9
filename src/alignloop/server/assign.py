"""Who ranks what, and storing what they said exactly once.

Assignment (`next_task`):
- A labeler with a pending task gets that task again (a reload or a second tab does
  not use up prompts). A pending task expires `assignment_ttl_s` after it was handed
  out; its slot then returns to the pool. If nobody took the slot meanwhile, the same
  labeler coming back simply continues.
- Otherwise, at the project's `gold_rate`, a hidden gold prompt the labeler has not
  seen yet; else a regular prompt the labeler has never had (UNIQUE (labeler_id,
  prompt_id) in the database) whose done and live pending assignments number fewer
  than `overlap`, preferring prompts already under way so that they complete.
- In a personal project ("my own preferences", issue 16) every labeler gets every
  regular prompt, in the prompts' order, each ranking for themself: no overlap cap
  (so nothing to lock but the labeler), no gold items, and an expired task is theirs
  to finish whenever they come back (nobody else wants its slot).
- The check-then-insert is made safe under concurrency: on SQLite the transaction
  starts with BEGIN IMMEDIATE (one writer at a time); on PostgreSQL the candidate
  prompt is locked with SELECT ... FOR UPDATE SKIP LOCKED (concurrent labelers take
  different prompts instead of queueing on one) and its count is read again once
  locked, in a fresh statement that sees every committed assignment.

Submission (`submit_ranking`): the assignment row is locked (FOR UPDATE; BEGIN
IMMEDIATE on SQLite) and an existing ranking of the same criterion is looked for
first. A retry of the same ranking gets the stored one back (created=False); a
different ranking for a criterion already ranked is a conflict; UNIQUE
(assignment_id, criterion) stops a second row even if all of that were bypassed.

Changing a ranking (`replace_ranking`, PUT): a labeler may change the rankings of
their last ranked task. The row keeps its id and gets the next `version`; the
version it replaces moves to `ranking_revisions`, so exports read the newest and
the history stays.

Several criteria: an assignment's rankings count as a whole. It is done when ranked
by every criterion, and only done assignments are exported (`service.project_records`);
a partly ranked one that expires and loses its slot to another labeler never counts,
so a prompt never holds more than `overlap` rankings by one criterion.

Labelers see completions by random public ids, in an order shuffled per labeler and
assignment (deterministic: a reload shows the same order), with no policy name.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from alignloop.schema import ranking_problems
from alignloop.server.db import Database
from alignloop.server.errors import (
    AssignmentExpired,
    Conflict,
    GuidelinesRequired,
    Invalid,
    NotFound,
)
from alignloop.server.models import (
    DONE,
    EXPIRED,
    PENDING,
    SKIPPED,
    Acknowledgement,
    Assignment,
    CompletionRow,
    Guidelines,
    Labeler,
    Project,
    PromptRow,
    RankingRevision,
    RankingRow,
    utcnow,
)
from alignloop.server.service import (
    NAME_MAX,
    check_text,
    current_guidelines,
    done_tasks,
    get_project,
    needs_acknowledgement,
    regular_prompts,
    shown,
    tasks_per_prompt,
    text_problem,
)

__all__ = [
    "Submission",
    "acknowledge",
    "check_ranking",
    "get_task",
    "guidelines_for",
    "last_ranked_task",
    "next_task",
    "replace_ranking",
    "skip_assignment",
    "submit_ranking",
]

T = TypeVar("T")
RATIONALE_MAX = 10_000
_VERSION = re.compile(r"[0-9a-f]{64}")  # a guidelines version: SHA-256 hex


@dataclass
class Submission:
    """A labeler's ranking of an assignment under one criterion, as sent."""

    criterion: str | None
    ranking: list[list[str]]  # groups of public completion ids, best first
    unrankable: bool = False
    rationale: str = ""
    flag_unsafe: bool = False


def _retrying(db: Database, attempts: int, fn: Callable[[Session], T]) -> T:
    """Run `fn` in a write transaction; run it again (up to `attempts` times) when
    the database refuses it for a concurrent writer (a unique constraint that
    another transaction filled first, a PostgreSQL deadlock or serialization
    failure): the next try sees what the other one committed."""
    for attempt in range(attempts):
        try:
            with db.write() as session:
                return fn(session)
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _lock(db: Database, stmt):
    """`stmt` FOR UPDATE on PostgreSQL; on SQLite the BEGIN IMMEDIATE of the write
    transaction already excludes every other writer."""
    return stmt.with_for_update() if db.is_postgres else stmt


# --- guidelines ----------------------------------------------------------------------


def _acknowledged(session: Session, labeler_id: int, guidelines_id: int) -> bool:
    return (
        session.get(Acknowledgement, {"labeler_id": labeler_id, "guidelines_id": guidelines_id})
        is not None
    )


def _may_rank(session: Session, labeler_id: int, project: Project, g: Guidelines) -> bool:
    """Whether the labeler has acknowledged the current guidelines `g`, or needs not
    (a personal project's default ones, `service.needs_acknowledgement`)."""
    return not needs_acknowledgement(project, g) or _acknowledged(session, labeler_id, g.id)


def guidelines_for(db: Database, labeler_id: int, project_name: str) -> dict[str, Any]:
    """{"project", "version", "markdown", "acknowledged", "personal"} of the current
    guidelines; "acknowledged" is also true where none is needed."""
    with db.read() as session:
        project = get_project(session, project_name)
        g = current_guidelines(session, project)
        return {
            "project": project.name,
            "version": g.version,
            "markdown": g.markdown,
            "acknowledged": _may_rank(session, labeler_id, project, g),
            "personal": project.personal,
        }


def acknowledge(db: Database, labeler_id: int, project_name: str, version: str) -> dict[str, Any]:
    """Record that the labeler read this version; it must be the current one."""

    def run(session: Session) -> dict[str, Any]:
        project = get_project(session, project_name)
        g = current_guidelines(session, project)
        if version != g.version:
            old = (
                session.scalar(
                    select(Guidelines.id).where(
                        Guidelines.project_id == project.id, Guidelines.version == version
                    )
                )
                if _VERSION.fullmatch(version)
                else None
            )
            what = "an earlier version" if old is not None else "no version"
            raise Conflict(
                f"guidelines version {shown(version[:12])} is {what} of project "
                f"{project.name!r}; the current one is {g.version[:12]}"
            )
        ack = session.get(Acknowledgement, {"labeler_id": labeler_id, "guidelines_id": g.id})
        if ack is None:
            ack = Acknowledgement(
                labeler_id=labeler_id, guidelines_id=g.id, acknowledged_at=utcnow()
            )
            session.add(ack)
        return {
            "project": project.name,
            "version": g.version,
            "acknowledged_at": ack.acknowledged_at.isoformat(timespec="seconds"),
        }

    return _retrying(db, 3, run)


# --- handing out tasks -----------------------------------------------------------------


def _live(now: dt.datetime):
    """Assignments holding a slot of their prompt: done, or pending and not expired."""
    return or_(
        Assignment.status == DONE, and_(Assignment.status == PENDING, Assignment.expires_at > now)
    )


def _taken_per_prompt(now: dt.datetime):
    """The live assignments of each prompt, as a subquery correlated to PromptRow."""
    return (
        select(func.count())
        .select_from(Assignment)
        .where(Assignment.prompt_id == PromptRow.id, _live(now))
        .correlate(PromptRow)
        .scalar_subquery()
    )


def _taken(session: Session, prompt_pk: int, now: dt.datetime, *, besides: int | None = None):
    q = (
        select(func.count())
        .select_from(Assignment)
        .where(Assignment.prompt_id == prompt_pk, _live(now))
    )
    if besides is not None:
        q = q.where(Assignment.id != besides)
    return session.scalar(q)


def _has_room(db: Database, session: Session, a: Assignment, now: dt.datetime) -> bool:
    """Whether an expired pending assignment may still be completed: gold and
    personal ones always (no slot to lose); otherwise only if nobody took its slot
    meanwhile (the prompt row is locked on PostgreSQL, as when a slot is handed out)."""
    if a.is_gold:
        return True
    project = session.get(Project, a.project_id)
    if project.personal:
        return True
    session.execute(_lock(db, select(PromptRow.id).where(PromptRow.id == a.prompt_id)))
    return _taken(session, a.prompt_id, now, besides=a.id) < project.overlap


def _resume(
    db: Database, session: Session, labeler: Labeler, project: Project, now: dt.datetime
) -> Assignment | None:
    """The labeler's pending assignment in this project, renewed if it had expired
    and its slot is still free; expired ones whose slot went to someone else are
    marked so. In a personal project an expired one (the labeler was deactivated, or
    a submission came late) is pending again: every prompt stays the labeler's own."""
    resumable = (PENDING, EXPIRED) if project.personal else (PENDING,)
    pending = session.scalars(
        select(Assignment)
        .where(
            Assignment.labeler_id == labeler.id,
            Assignment.project_id == project.id,
            Assignment.status.in_(resumable),
        )
        .order_by(Assignment.id)
    ).all()
    for a in pending:
        if a.status == PENDING and a.expires_at > now:
            return a
        if _has_room(db, session, a, now):
            a.status = PENDING
            a.expires_at = now + dt.timedelta(seconds=project.assignment_ttl_s)
            return a
        a.status = EXPIRED
    return None


def _mine(labeler_id: int):
    return exists().where(Assignment.prompt_id == PromptRow.id, Assignment.labeler_id == labeler_id)


def _pick_gold(session: Session, labeler: Labeler, project: Project, rng: random.Random):
    ids = session.scalars(
        select(PromptRow.id)
        .where(PromptRow.project_id == project.id, PromptRow.is_gold.is_(True), ~_mine(labeler.id))
        .order_by(PromptRow.id)
    ).all()
    return rng.choice(ids) if ids else None


def _open_prompts(labeler: Labeler, project: Project, now: dt.datetime):
    """The regular prompts the labeler could be given now: never theirs before, with
    fewer than `overlap` live assignments, those already under way first; in a
    personal project every one never theirs before, in the prompts' order."""
    if project.personal:
        return (
            select(PromptRow.id)
            .where(regular_prompts(project.id), ~_mine(labeler.id))
            .order_by(PromptRow.id)
        )
    taken = _taken_per_prompt(now)
    return (
        select(PromptRow.id)
        .where(
            PromptRow.project_id == project.id,
            PromptRow.is_gold.is_(False),
            ~_mine(labeler.id),
            taken < project.overlap,
        )
        .order_by(taken.desc(), PromptRow.id)
    )


def _pick_regular(
    db: Database, session: Session, labeler: Labeler, project: Project, now: dt.datetime
) -> int | None:
    passed: list[int] = []
    while True:
        q = _open_prompts(labeler, project, now).limit(1)
        if passed:
            q = q.where(PromptRow.id.not_in(passed))
        if not db.is_postgres or project.personal:
            # SQLite: BEGIN IMMEDIATE, nothing changed since we looked. Personal: no
            # cap to count; the labeler's row is locked and UNIQUE (labeler, prompt).
            return session.scalar(q)
        prompt_pk = session.scalar(q.with_for_update(skip_locked=True, of=PromptRow))
        if prompt_pk is None:
            return None
        # Locked now; count again in a new statement, which sees every assignment
        # committed before we held the lock (the first count may predate one).
        if _taken(session, prompt_pk, now) < project.overlap:
            return prompt_pk
        passed.append(prompt_pk)


def _wants_gold(session: Session, labeler: Labeler, project: Project) -> tuple[bool, random.Random]:
    """Whether the labeler's next new task is a gold item: a draw at `gold_rate`,
    seeded by project, labeler and how many tasks they had (reproducible, and not a
    fixed pattern a labeler could learn)."""
    n = session.scalar(
        select(func.count())
        .select_from(Assignment)
        .where(Assignment.labeler_id == labeler.id, Assignment.project_id == project.id)
    )
    rng = random.Random(f"{project.id}:{labeler.id}:{n}")
    return project.gold_rate > 0 and rng.random() < project.gold_rate, rng


def _assign(
    db: Database, session: Session, labeler: Labeler, project: Project, now: dt.datetime
) -> Assignment | None:
    """A new assignment for the labeler in this project, or None when none is left."""
    regular = _pick_regular(db, session, labeler, project, now)
    if regular is None:
        return None  # gold items alone would score a labeler who has nothing to label
    gold = None
    if not project.personal:  # nobody's own taste has a right answer to score
        want_gold, rng = _wants_gold(session, labeler, project)
        gold = _pick_gold(session, labeler, project, rng) if want_gold else None
    a = Assignment(
        project_id=project.id,
        prompt_id=gold if gold is not None else regular,
        labeler_id=labeler.id,
        is_gold=gold is not None,
        status=PENDING,
        created_at=now,
        expires_at=now + dt.timedelta(seconds=project.assignment_ttl_s),
    )
    session.add(a)
    session.flush()  # a unique-constraint race surfaces here and is retried
    return a


def _has_work(
    db: Database, session: Session, labeler: Labeler, project: Project, now: dt.datetime
) -> bool:
    """Without assigning anything: would the labeler get a task in this project?"""
    resumable = (PENDING, EXPIRED) if project.personal else (PENDING,)  # as `_resume`
    pending = session.scalar(
        select(func.count())
        .select_from(Assignment)
        .where(
            Assignment.labeler_id == labeler.id,
            Assignment.project_id == project.id,
            Assignment.status.in_(resumable),
        )
    )
    if pending:
        return True
    return session.scalar(_open_prompts(labeler, project, now).order_by(None).limit(1)) is not None


def _live_pending(db: Database, labeler_id: int, project_name: str, now: dt.datetime) -> int | None:
    """Read-only fast path: the labeler's unexpired pending assignment in the project,
    if the current guidelines are acknowledged (a reload, a second tab). One query
    when there is none, the usual case."""
    if text_problem(project_name, max_len=NAME_MAX):
        return None  # no such project: get_project says so
    with db.read() as session:
        row = session.execute(
            select(Assignment.id, Assignment.project_id)
            .join(Project, Assignment.project_id == Project.id)
            .where(
                Project.name == project_name,
                Assignment.labeler_id == labeler_id,
                Assignment.status == PENDING,
                Assignment.expires_at > now,
            )
            .order_by(Assignment.id)
            .limit(1)
        ).first()
        if row is None:
            return None
        project = session.get(Project, row.project_id)
        if not _may_rank(session, labeler_id, project, current_guidelines(session, project)):
            return None
        return row.id


def next_task(
    db: Database,
    labeler_id: int,
    project_name: str | None = None,
    *,
    now: dt.datetime | None = None,
) -> dict[str, Any] | None:
    """The labeler's next task (see the module doc), or None when none is left.

    With no project named, the projects are tried in the order they were created.
    Raises GuidelinesRequired when the project with work for the labeler has
    guidelines the labeler has not acknowledged in their current version.

    The write transaction only decides the assignment; the task is then read in a
    read-only session, so writers (one at a time on SQLite) hold the lock briefly."""
    now = now or utcnow()

    def run(session: Session) -> int | None:
        # One labeler's requests one at a time (a double click must not hand out two
        # prompts); different labelers do not wait for each other.
        # (On SQLite the write transaction already excludes every other writer.)
        labeler = (
            session.get(Labeler, labeler_id)
            if not db.is_postgres
            else session.scalar(select(Labeler).where(Labeler.id == labeler_id).with_for_update())
        )
        if project_name is not None:
            projects = [get_project(session, project_name)]
        else:
            projects = session.scalars(select(Project).order_by(Project.id)).all()
        for project in projects:
            g = current_guidelines(session, project)
            if not _may_rank(session, labeler.id, project, g):
                if _has_work(db, session, labeler, project, now):
                    raise GuidelinesRequired(project.name, g.version)
                continue
            a = _resume(db, session, labeler, project, now) or _assign(
                db, session, labeler, project, now
            )
            if a is not None:
                return a.id
        return None

    assignment_id = None
    if project_name is not None:
        assignment_id = _live_pending(db, labeler_id, project_name, now)
    if assignment_id is None:
        assignment_id = _retrying(db, 5, run)
    if assignment_id is None:
        return None
    return get_task(db, labeler_id, assignment_id, now=now)


def _order_key(labeler_id: int, assignment_id: int, public_id: str) -> str:
    return hashlib.sha256(f"{labeler_id}:{assignment_id}:{public_id}".encode()).hexdigest()


def _completions(session: Session, a: Assignment) -> list[CompletionRow]:
    """The assignment's completions in the labeler's own shuffled order."""
    rows = session.scalars(
        select(CompletionRow).where(CompletionRow.prompt_id == a.prompt_id)
    ).all()
    return sorted(rows, key=lambda c: _order_key(a.labeler_id, a.id, c.public_id))


def _task_payload(session: Session, a: Assignment, now: dt.datetime) -> dict[str, Any]:
    """An assignment as the labeler sees it (`get_task`): the prompt (a conversation's
    turns under "messages" too), its completions in the labeler's order, the
    project's criteria, guidelines version and progress. In a personal project the
    labeler's progress is their own: `labeler_done` of `project_prompts` (every
    prompt is theirs to rank), and the project's tasks are prompts x its labelers."""
    project = session.get(Project, a.project_id)
    per = tasks_per_prompt(session, project)
    g = current_guidelines(session, project)
    ranked = session.scalars(
        select(RankingRow.criterion).where(RankingRow.assignment_id == a.id)
    ).all()
    done_by_labeler = (
        select(func.count())
        .select_from(Assignment)
        .where(
            Assignment.labeler_id == a.labeler_id,
            Assignment.project_id == project.id,
            Assignment.status == DONE,
        )
        .scalar_subquery()
    )
    per_prompt = (
        select(Assignment.prompt_id)
        .where(done_tasks(project.id))
        .group_by(Assignment.prompt_id)
        .having(func.count() >= per)
        .subquery()
    )
    complete = select(func.count()).select_from(per_prompt).scalar_subquery()
    total = (
        select(func.count()).select_from(PromptRow).where(regular_prompts(project.id))
    ).scalar_subquery()
    # The pages' one progress unit: tasks (a prompt ranked by one labeler), of which a
    # project needs prompts x overlap (x its labelers, personal).
    tasks_done = (
        select(func.count()).select_from(Assignment).where(done_tasks(project.id))
    ).scalar_subquery()
    prompt_text, messages, n_done, n_complete, n_total, n_tasks_done = session.execute(
        select(
            PromptRow.text, PromptRow.messages, done_by_labeler, complete, total, tasks_done
        ).where(PromptRow.id == a.prompt_id)
    ).one()
    return {
        "assignment_id": a.id,
        "project": project.name,
        "personal": project.personal,
        "prompt": prompt_text,
        "messages": messages,
        "completions": [{"id": c.public_id, "text": c.text} for c in _completions(session, a)],
        "criteria": list(project.criteria),
        "ranked_criteria": [c for c in project.criteria if c in ranked],
        "guidelines_version": g.version,
        "status": a.status,
        "expires_at": a.expires_at.isoformat(timespec="seconds") + "Z",
        "progress": {
            "labeler_done": n_done,
            "project_complete_prompts": n_complete,
            "project_prompts": n_total,
            "project_tasks_done": n_tasks_done,
            "project_tasks": n_total * per,
        },
    }


def _own_assignment(
    db: Database, session: Session, labeler_id: int, assignment_id: int, *, lock: bool = False
) -> Assignment:
    """The labeler's assignment; another labeler's, or none, is the same 404 (an id
    must not tell whether it exists)."""
    q = select(Assignment).where(
        Assignment.id == assignment_id, Assignment.labeler_id == labeler_id
    )
    a = session.scalar(_lock(db, q) if lock else q)
    if a is None:
        raise NotFound(f"no assignment {assignment_id} of yours")
    return a


def get_task(
    db: Database, labeler_id: int, assignment_id: int, *, now: dt.datetime | None = None
) -> dict[str, Any]:
    """One of the labeler's own assignments, as `next_task` shows it."""
    with db.read() as session:
        a = _own_assignment(db, session, labeler_id, assignment_id)
        return _task_payload(session, a, now or utcnow())


# --- rankings ------------------------------------------------------------------------


def check_ranking(groups: list[list[str]], known: list[str], unrankable: bool) -> None:
    """Raise Invalid unless `groups` orders exactly the ids in `known` (each once, no
    empty group); an unrankable submission may leave the ranking empty. The message
    says every problem found (`schema.ranking_problems`)."""
    problems = ranking_problems(groups, unrankable=unrankable, known=known)
    if problems:
        prefix = "" if not groups else "ranking: "
        raise Invalid(prefix + "; ".join(problems), "ranking")


def _criterion(project: Project, given: str | None) -> str:
    if given is None or given == "":
        if len(project.criteria) == 1:
            return project.criteria[0]
        raise Invalid(f"criterion is required: one of {', '.join(project.criteria)}", "criterion")
    if given not in project.criteria:
        raise Invalid(
            f"criterion {shown(given)} is not one of this project's criteria "
            f"({', '.join(project.criteria)})",
            "criterion",
        )
    return given


def _canonical(groups: list[list[str]]) -> list[list[str]]:
    """Groups with their ids sorted: two rankings that differ only in the order of
    tied ids are the same ranking."""
    return [sorted(g) for g in groups]


def _ranking_out(
    a: Assignment, r: RankingRow, to_public: dict[str, str], created: bool, complete: bool
) -> dict[str, Any]:
    return {
        "assignment_id": a.id,
        "criterion": r.criterion,
        "ranking": [[to_public[c] for c in g] for g in r.groups],
        "unrankable": r.unrankable,
        "rationale": r.rationale or "",
        "flag_unsafe": r.flagged_unsafe,
        "version": r.version or 1,
        "created": created,
        "assignment_complete": complete,
    }


def _same(row: RankingRow, groups: list[list[str]], sub: Submission) -> bool:
    """Whether a stored ranking says what `sub` (with `groups` in the files' ids) says."""
    return (
        _canonical(row.groups) == _canonical(groups)
        and row.unrankable == sub.unrankable
        and (row.rationale or "") == sub.rationale
        and row.flagged_unsafe == sub.flag_unsafe
    )


def _check_rationale(rationale: str) -> None:
    """Invalid when a submitted rationale is too long or holds characters refused in text."""
    if len(rationale) > RATIONALE_MAX:
        raise Invalid(
            f"rationale: at most {RATIONALE_MAX} characters, got {len(rationale)}", "rationale"
        )
    check_text(rationale, "rationale")


@dataclass
class _Target:
    """What a submitted ranking is about, resolved and checked against the assignment."""

    assignment: Assignment  # the labeler's own, locked
    project: Project
    criterion: str
    groups: list[list[str]]  # the ranking in the files' completion ids, best first
    to_public: dict[str, str]  # the files' completion id -> the public id shown


def _target(
    db: Database, session: Session, labeler_id: int, assignment_id: int, sub: Submission
) -> _Target:
    """Lock the labeler's assignment, resolve the criterion and check the ranking's
    shape against its completions (shared by `submit_ranking` and `replace_ranking`)."""
    a = _own_assignment(db, session, labeler_id, assignment_id, lock=True)
    project = session.get(Project, a.project_id)
    criterion = _criterion(project, sub.criterion)
    rows = _completions(session, a)
    to_external = {c.public_id: c.external_id for c in rows}
    to_public = {c.external_id: c.public_id for c in rows}
    check_ranking(sub.ranking, [c.public_id for c in rows], sub.unrankable)
    groups = [[to_external[c] for c in g] for g in sub.ranking]
    return _Target(a, project, criterion, groups, to_public)


def submit_ranking(
    db: Database,
    labeler_id: int,
    assignment_id: int,
    sub: Submission,
    *,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Store the ranking once (see the module doc); the stored ranking as the API
    returns it, with `created` False when it was already there."""
    now = now or utcnow()
    _check_rationale(sub.rationale)

    def run(session: Session) -> dict[str, Any]:
        t = _target(db, session, labeler_id, assignment_id, sub)
        a = t.assignment
        stored = session.scalars(select(RankingRow).where(RankingRow.assignment_id == a.id)).all()
        same = next((r for r in stored if r.criterion == t.criterion), None)
        if same is not None:
            if not _same(same, t.groups, sub):
                raise Conflict(
                    f"assignment {a.id} already has a different ranking by "
                    f"{t.criterion!r}; to change your last ranking, send it with PUT"
                )
            return _ranking_out(a, same, t.to_public, False, a.status == DONE)
        if a.status == SKIPPED:
            raise Conflict(f"assignment {a.id} was skipped; fetch a new task")
        if a.status == PENDING and a.expires_at <= now:
            if not _has_room(db, session, a, now):
                raise AssignmentExpired(a.id)
            a.expires_at = now + dt.timedelta(seconds=t.project.assignment_ttl_s)
        if a.status == EXPIRED:
            raise AssignmentExpired(a.id)
        row = RankingRow(
            assignment_id=a.id,
            criterion=t.criterion,
            groups=t.groups,
            unrankable=sub.unrankable,
            flagged_unsafe=sub.flag_unsafe,
            rationale=sub.rationale or None,
            created_at=now,
        )
        session.add(row)
        session.flush()  # UNIQUE (assignment_id, criterion): a racing twin fails here
        if {r.criterion for r in stored} | {t.criterion} >= set(t.project.criteria):
            a.status, a.completed_at = DONE, now
        return _ranking_out(a, row, t.to_public, True, a.status == DONE)

    try:
        return _retrying(db, 3, run)
    except AssignmentExpired:
        _mark_expired(db, labeler_id, assignment_id)
        raise


def _mark_expired(db: Database, labeler_id: int, assignment_id: int) -> None:
    """Persist the expiry found during a refused submission (that transaction was
    rolled back with the error)."""
    with db.write() as session:
        a = _own_assignment(db, session, labeler_id, assignment_id, lock=True)
        if a.status == PENDING:
            a.status = EXPIRED


def skip_assignment(db: Database, labeler_id: int, assignment_id: int) -> dict[str, Any]:
    """The labeler passes on this prompt: it goes back to the pool for others (never
    to this labeler). A task ranked by some of its criteria may be skipped too: those
    rankings stay stored but are never exported, since an assignment's rankings count
    only as a whole (a done assignment)."""

    def run(session: Session) -> dict[str, Any]:
        a = _own_assignment(db, session, labeler_id, assignment_id, lock=True)
        if a.status in (PENDING, EXPIRED):
            a.status = SKIPPED
        elif a.status == DONE:
            raise Conflict(f"assignment {a.id} is done; there is nothing to skip")
        return {"assignment_id": a.id, "status": a.status}

    return _retrying(db, 3, run)


# --- changing the last ranking ----------------------------------------------------------


def _last_ranked(session: Session, labeler_id: int, project_id: int | None = None) -> int | None:
    """The assignment of the labeler's most recently submitted ranking, skipped and
    expired ones left out (row ids grow with each submission; a new version keeps
    its row)."""
    q = (
        select(Assignment.id)
        .join(RankingRow, RankingRow.assignment_id == Assignment.id)
        .where(Assignment.labeler_id == labeler_id, Assignment.status.in_((DONE, PENDING)))
        .order_by(RankingRow.id.desc())
        .limit(1)
    )
    if project_id is not None:
        q = q.where(Assignment.project_id == project_id)
    return session.scalar(q)


def replace_ranking(
    db: Database,
    labeler_id: int,
    assignment_id: int,
    sub: Submission,
    *,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """A new version of one of the labeler's rankings of their last ranked assignment
    (any of its criteria): the current version moves to `ranking_revisions`, exports
    read the new one. The same ranking again changes nothing (`created` False).
    Conflict when the assignment is not the labeler's last ranked one, has no ranking
    by that criterion yet (submit it first), or was skipped or expired."""
    now = now or utcnow()
    _check_rationale(sub.rationale)

    def run(session: Session) -> dict[str, Any]:
        t = _target(db, session, labeler_id, assignment_id, sub)
        a = t.assignment
        row = session.scalar(
            select(RankingRow).where(
                RankingRow.assignment_id == a.id, RankingRow.criterion == t.criterion
            )
        )
        if row is None:
            raise Conflict(
                f"assignment {a.id} has no ranking by {t.criterion!r} to change; submit it first"
            )
        if a.status in (SKIPPED, EXPIRED):
            raise Conflict(f"assignment {a.id} is {a.status}; its ranking cannot be changed")
        if _last_ranked(session, labeler_id) != a.id:
            raise Conflict(
                f"only your last ranked task can be changed, and assignment {a.id} is not it"
            )
        if _same(row, t.groups, sub):
            return _ranking_out(a, row, t.to_public, False, a.status == DONE)
        session.add(
            RankingRevision(
                ranking_id=row.id,
                version=row.version,
                groups=row.groups,
                unrankable=row.unrankable,
                flagged_unsafe=row.flagged_unsafe,
                rationale=row.rationale,
                created_at=row.created_at,
                replaced_at=now,
            )
        )
        row.version += 1
        row.groups, row.unrankable = t.groups, sub.unrankable
        row.flagged_unsafe, row.rationale = sub.flag_unsafe, sub.rationale or None
        row.created_at = now
        session.flush()  # UNIQUE (ranking_id, version): a racing twin fails here
        return _ranking_out(a, row, t.to_public, True, a.status == DONE)

    return _retrying(db, 3, run)


def last_ranked_task(
    db: Database,
    labeler_id: int,
    project_name: str | None = None,
    *,
    now: dt.datetime | None = None,
) -> dict[str, Any] | None:
    """The labeler's last ranked task (the one `replace_ranking` may change), as
    `get_task` shows it, with its current rankings under "rankings" (public ids,
    one per criterion ranked); None when they have ranked nothing (in the project)."""
    with db.read() as session:
        project_id = get_project(session, project_name).id if project_name is not None else None
        assignment_id = _last_ranked(session, labeler_id, project_id)
        if assignment_id is None:
            return None
        a = session.get(Assignment, assignment_id)
        task = _task_payload(session, a, now or utcnow())
        to_public = {c.external_id: c.public_id for c in _completions(session, a)}
        stored = session.scalars(
            select(RankingRow).where(RankingRow.assignment_id == a.id).order_by(RankingRow.id)
        ).all()
        outs = [_ranking_out(a, r, to_public, False, a.status == DONE) for r in stored]
        task["rankings"] = [
            {k: v for k, v in out.items() if k not in ("created", "assignment_complete")}
            for out in outs
        ]
        return task
