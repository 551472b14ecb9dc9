"""Administration: projects, guidelines, labelers, status, review and export.

What `alignloop project ...` / `alignloop labeler ...`, the admin API and the admin
pages do, as library functions over a `Database`:

    projects    create_project (parse_records for uploads), set_guidelines,
                list_projects, project_status, review_items, export_project
    labelers    add_labeler, list_labelers, deactivate_labeler, reactivate_labeler,
                rotate_token

A personal project ("my own preferences", issue 16) gives every prompt to every labeler
who opens it, each ranking for themself: no overlap cap, no gold items and no
agreement (each ranks by their own taste, so disagreement is the point, not a
quality problem). Its exports keep each pair's labeler, and `export_project(...,
labeler=NAME)` gives one labeler's, what `alignloop personal fit --user NAME` reads.

The feedback math (pairs, consensus, agreement) is `alignloop.feedback`'s: rankings
leave the database as `alignloop.schema.Ranking` records and go through the very
functions the file-based commands use, so an export is exactly what `alignloop
feedback pairs` would have written. Only done assignments' rankings leave (see
`project_records`), in their current version, and pairs and consensus one criterion
at a time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from alignloop.chat import prompt_display
from alignloop.feedback import agreement_report, consensus, pairwise_agreement, rankings_to_pairs
from alignloop.feedback.consensus import CONSENSUS_LABELER
from alignloop.schema import (
    Completion,
    Prompt,
    Ranking,
    Record,
    SchemaError,
    check_rankings,
    index_by_id,
    parse_record,
)
from alignloop.server.db import Database
from alignloop.server.errors import Conflict, Invalid, NotFound
from alignloop.server.models import (
    DONE,
    EXPIRED,
    PENDING,
    SKIPPED,
    Assignment,
    CompletionRow,
    GoldRanking,
    Guidelines,
    Labeler,
    Project,
    PromptRow,
    RankingRow,
    WebSession,
    utcnow,
)
from alignloop.server.security import hash_secret, new_token

__all__ = [
    "EXPORTS",
    "add_labeler",
    "create_project",
    "current_guidelines",
    "deactivate_labeler",
    "export_project",
    "get_project",
    "guidelines_version",
    "list_labelers",
    "list_projects",
    "parse_records",
    "project_status",
    "reactivate_labeler",
    "review_items",
    "rotate_token",
    "set_guidelines",
]

EXPORTS = ("rankings", "pairs", "consensus")
# Comparisons (pairs) of one labeler that `alignloop personal fit` wants to fit their
# weights (issue 16: "weights fit from 20 comparisons"); the admin page counts toward it.
FIT_PAIRS = 20
# A personal project's guidelines when none are given. Labelers need not acknowledge
# these (they say only what the ranking page's banner says); guidelines an admin
# writes for a personal project are acknowledged as in any project.
PERSONAL_GUIDELINES = """# Your own preferences

Rank the responses by what **you** prefer. There is no right answer and nobody else's
ranking to agree with: your rankings teach a model your own taste.
"""
GOLD_LABELER = "gold"  # the labeler name of gold rankings when they are scored
RESERVED_NAMES = (GOLD_LABELER, CONSENSUS_LABELER)  # labeler names the exports use

# What the columns hold (models.py), checked before anything is stored so that the
# same input gets the same clear error on SQLite (which would store anything) and on
# PostgreSQL (which refuses NUL bytes, over-long strings and big integers).
NAME_MAX = 200  # project and labeler names, prompt and completion ids, policies
CRITERION_MAX = 100
DB_INT_MAX = 2**31 - 1  # PostgreSQL INTEGER: row ids, overlap, assignment TTL


def shown(value: str, limit: int = 100) -> str:
    """`value` for a message: repr'd, and cut at `limit` characters (a client may
    send megabytes)."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} chars)"


def text_problem(value: str, *, max_len: int | None = None, name: bool = False) -> str | None:
    """What is wrong with `value` as stored text, or None: a NUL byte (PostgreSQL
    cannot store one), more than `max_len` characters, or, for a `name` (of a
    project or labeler, which appear in URLs and on pages), control characters or
    a slash."""
    if "\x00" in value:
        return "contains a NUL byte"
    if max_len is not None and len(value) > max_len:
        return f"is {len(value)} characters long; at most {max_len}"
    if name and any(ch < " " or ch == "\x7f" for ch in value):
        return "contains a control character"
    if name and "/" in value:
        return "contains '/', which cannot appear in the URL of a name"
    return None


def check_text(value: str, field: str, *, max_len: int | None = None, name: bool = False) -> str:
    """`value`, or Invalid naming `field` (see `text_problem`)."""
    problem = text_problem(value, max_len=max_len, name=name)
    if problem:
        raise Invalid(f"{field} {shown(value, 40)} {problem}", field)
    return value


def check_int(value: int, field: str, *, least: int = 1) -> int:
    """An integer column's value: in [least, DB_INT_MAX]."""
    if not least <= value <= DB_INT_MAX:
        raise Invalid(f"{field} must be in [{least}, {DB_INT_MAX}], got {value}", field)
    return value


def guidelines_version(markdown: str) -> str:
    """The version of a guidelines text: SHA-256 of its Markdown (line endings
    normalized, so the same file saved on Windows is the same version)."""
    return hashlib.sha256(markdown.replace("\r\n", "\n").encode("utf-8")).hexdigest()


def needs_acknowledgement(project: Project, guidelines: Guidelines) -> bool:
    """Whether labelers must acknowledge these guidelines before ranking: always, but
    for a personal project's default guidelines (`PERSONAL_GUIDELINES`)."""
    return not (project.personal and guidelines.version == PERSONAL_GUIDELINES_VERSION)


def regular_prompts(project_id: int) -> ColumnElement[bool]:
    """A condition on PromptRow: the project's prompts that are not gold."""
    return and_(PromptRow.project_id == project_id, PromptRow.is_gold.is_(False))


def done_tasks(project_id: int) -> ColumnElement[bool]:
    """A condition on Assignment: the project's done tasks (a regular prompt ranked by
    one labeler, by every criterion), the unit its progress is counted in."""
    return and_(
        Assignment.project_id == project_id,
        Assignment.status == DONE,
        Assignment.is_gold.is_(False),
    )


PERSONAL_GUIDELINES_VERSION = guidelines_version(PERSONAL_GUIDELINES)


def get_project(session: Session, name: str) -> Project:
    # A name that cannot be stored (NUL, too long) names no project, on every backend.
    fits = text_problem(name, max_len=NAME_MAX) is None
    project = session.scalar(select(Project).where(Project.name == name)) if fits else None
    if project is None:
        names = session.scalars(select(Project.name).order_by(Project.id).limit(21)).all()
        known = ", ".join(repr(n) for n in names[:20]) or "none yet"
        more = ", ..." if len(names) > 20 else ""
        raise NotFound(f"no project named {shown(name)} (projects: {known}{more})")
    return project


def current_guidelines(session: Session, project: Project) -> Guidelines:
    return session.scalars(
        select(Guidelines)
        .options(defer(Guidelines.markdown))  # loaded only where the text is shown
        .where(Guidelines.project_id == project.id)
        .order_by(Guidelines.id.desc())
        .limit(1)
    ).one()


# --- creating a project ----------------------------------------------------------


def _check_criteria(criteria: Sequence[str]) -> list[str]:
    criteria = [c.strip() for c in criteria]
    if not criteria or any(not c for c in criteria):
        raise Invalid(
            "--criteria: give one or more names, e.g. helpfulness,harmlessness", "criteria"
        )
    for c in criteria:
        problem = text_problem(c, max_len=CRITERION_MAX, name=True)
        if problem:
            raise Invalid(f"--criteria: {shown(c, 40)} {problem}", "criteria")
    repeated = [c for c, n in Counter(criteria).items() if n > 1]
    if repeated:
        raise Invalid(f"--criteria: {repeated[0]!r} is given twice", "criteria")
    return criteria


def _check_task(
    prompts: Sequence[Prompt],
    completions: Sequence[Completion],
    gold: Sequence[Ranking],
    criteria: Sequence[str],
) -> None:
    """Every completion belongs to a prompt, every prompt has at least two completions
    to rank, every gold ranking ranks a prompt's own completions under a criterion of
    the project. Raises one SchemaError naming every bad record's file and line."""
    problems = _text_problems(prompts, completions)
    index_by_id(prompts, problems)  # for the repeated prompt ids it names
    try:
        check_rankings(gold, completions, prompts)
    except SchemaError as e:
        problems.extend(e.problems)
    per_prompt = Counter(c.prompt_id for c in completions)
    for p in prompts:
        if per_prompt[p.id] < 2:
            problems.append(
                f"{p.where}: prompt {p.id!r} has {per_prompt[p.id]} completion(s); "
                "a ranking needs at least 2"
            )
    gold_keys: dict[tuple[str, str], Ranking] = {}
    for r in gold:
        if r.criterion not in criteria:
            problems.append(
                f"{r.where}: field 'criterion': {r.criterion!r} is not one of the "
                f"project's criteria ({', '.join(criteria)})"
            )
        if r.unrankable or not r.ranking:
            problems.append(f"{r.where}: a gold ranking must rank the completions")
        key = (r.prompt_id, r.criterion)
        if key in gold_keys:
            problems.append(
                f"{r.where}: a second gold ranking of prompt {r.prompt_id!r} by "
                f"{r.criterion!r} (first at {gold_keys[key].where})"
            )
        gold_keys[key] = r
    if problems:
        raise SchemaError(problems)


def _text_problems(prompts: Sequence[Prompt], completions: Sequence[Completion]) -> list[str]:
    """Ids, texts and policies that the tables cannot hold (see `text_problem`)."""
    problems = []
    for record, field, value, max_len in _stored_texts(prompts, completions):
        problem = text_problem(value, max_len=max_len)
        if problem:
            problems.append(f"{record.where}: {field} {problem}")
            if len(problems) >= SchemaError.shown:
                break
    return problems


def _stored_texts(
    prompts: Sequence[Prompt], completions: Sequence[Completion]
) -> Iterator[tuple[Record, str, str, int | None]]:
    """(record, "field 'x'", text, its length limit) of every text the tables store;
    each message of a conversation is held to a text prompt's limits."""
    for p in prompts:
        yield p, "field 'id'", p.id, NAME_MAX
        if isinstance(p.prompt, str):
            yield p, "field 'prompt'", p.prompt, None
        else:
            for i, m in enumerate(p.prompt, start=1):
                yield p, f"field 'prompt': message {i}'s content", m.content, None
    yield from ((p, "field 'reference'", p.reference, None) for p in prompts if p.reference)
    for c in completions:
        for f in ("id", "prompt_id", "completion", "policy"):
            if getattr(c, f) is not None:
                yield c, f"field {f!r}", getattr(c, f), None if f == "completion" else NAME_MAX


def _public_ids(n: int) -> list[str]:
    """Random ids for completions as labelers see them: nothing about the file's id,
    its order or its policy can be read from them."""
    ids: set[str] = set()
    while len(ids) < n:
        ids.add(secrets.token_hex(8))
    return list(ids)


def parse_records(kind: str, items: str | Sequence[Any], source: str) -> list[Record]:
    """Records of `kind` from JSONL text (an uploaded file: errors say `source:LINE`)
    or from a list of objects (a JSON body: `source[i]`), for `create_project`.
    One SchemaError names the first bad items."""
    if isinstance(items, str):
        rows: list[tuple[str, Any]] = []
        for lineno, line in enumerate(items.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"{source}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise SchemaError(f"{source}:{lineno}: not valid JSON: {e.msg}") from None
    else:
        rows = [(f"{source}[{i}]", obj) for i, obj in enumerate(items)]
    records, problems = [], []
    for where, obj in rows:
        try:
            records.append(parse_record(kind, obj, where))
        except SchemaError as e:
            problems.extend(e.problems)
            if len(problems) >= SchemaError.shown:
                break
    if problems:
        raise SchemaError(problems)
    return records


@dataclass
class ProjectSummary:
    """A created project (`create_project`), also the admin API's answer."""

    name: str
    prompts: int
    gold_prompts: int
    completions: int
    criteria: list[str]
    overlap: int
    gold_rate: float
    guidelines_version: str
    personal: bool = False


def create_project(
    db: Database,
    *,
    name: str,
    criteria: Sequence[str],
    guidelines: str,
    prompts: Sequence[Prompt],
    completions: Sequence[Completion],
    overlap: int | None = None,
    gold: Sequence[Ranking] = (),
    gold_rate: float | None = None,
    assignment_ttl_s: int = 3600,
    personal: bool = False,
) -> ProjectSummary:
    """A new project with its prompts, completions, guidelines and gold rankings, in
    one transaction (all of it or nothing).

    Prompts that have a gold ranking become hidden gold items: every labeler may get
    each one once, at `gold_rate` of their tasks (default 0.1 when gold is given),
    and they are scored against the gold ranking instead of counting for overlap.
    `overlap` defaults to 3.

    `personal`: every labeler who opens the project ranks every prompt for themself
    (see the module doc), so it takes no overlap and no gold, and its guidelines may
    be empty (`PERSONAL_GUIDELINES` then, which need no acknowledging).
    """
    criteria = _check_criteria(criteria)
    if not name.strip():
        raise Invalid("--name: a project needs a name", "name")
    check_text(name, "--name", max_len=NAME_MAX, name=True)
    if personal:
        _check_personal(overlap, gold, gold_rate)
        overlap, gold_rate = 1, 0.0  # stored, never used: no cap, no gold
        guidelines = guidelines if guidelines.strip() else PERSONAL_GUIDELINES
    overlap = 3 if overlap is None else overlap
    if overlap < 1:
        raise Invalid(f"--overlap must be at least 1, got {overlap}", "overlap")
    check_int(overlap, "--overlap")
    if assignment_ttl_s < 1:
        raise Invalid("--assignment-ttl must be positive", "assignment_ttl_s")
    check_int(assignment_ttl_s, "--assignment-ttl (seconds)")
    check_text(guidelines, "guidelines")
    gold_rate = (0.1 if gold else 0.0) if gold_rate is None else gold_rate
    if not 0.0 <= gold_rate < 1.0:
        raise Invalid(f"--gold-rate must be in [0, 1), got {gold_rate}", "gold_rate")
    if gold_rate > 0 and not gold:
        raise Invalid("--gold-rate needs gold rankings (--gold FILE)", "gold_rate")
    if not guidelines.strip():
        raise Invalid("the guidelines are empty", "guidelines")
    _check_task(prompts, completions, gold, criteria)
    gold_prompts = {r.prompt_id for r in gold}
    if len(gold_prompts) == len({p.id for p in prompts}):
        raise Invalid("every prompt has a gold ranking: nothing is left to label", "gold")

    project = Project(
        name=name,
        criteria=list(criteria),
        overlap=overlap,
        gold_rate=gold_rate,
        assignment_ttl_s=assignment_ttl_s,
        personal=personal,
    )
    try:
        _store_project(db, project, guidelines, prompts, completions, gold)
    except IntegrityError as e:  # the same name, created at the same moment, most likely
        first_line = str(e.orig).strip().splitlines()[0]
        raise Conflict(f"project {name!r} could not be stored: {first_line}") from None
    return ProjectSummary(
        name=name,
        prompts=len(prompts) - len(gold_prompts),
        gold_prompts=len(gold_prompts),
        completions=len(completions),
        criteria=list(criteria),
        overlap=overlap,
        gold_rate=gold_rate,
        guidelines_version=guidelines_version(guidelines),
        personal=personal,
    )


def _check_personal(overlap: int | None, gold: Sequence[Ranking], gold_rate: float | None) -> None:
    """A personal project takes no overlap (every labeler ranks every prompt) and no
    gold (there is no right ranking of someone's own taste to score them against)."""
    why = "in a personal project every labeler ranks every prompt for themself"
    if overlap is not None and overlap != 1:
        raise Invalid(f"--overlap does not apply to a personal project: {why}", "overlap")
    if gold or (gold_rate is not None and gold_rate != 0):
        raise Invalid(
            f"a personal project has no gold items ({why}, by their own taste: there is "
            "no right ranking to score them against); leave out --gold and --gold-rate",
            "gold",
        )


def _store_project(
    db: Database,
    project: Project,
    guidelines: str,
    prompts: Sequence[Prompt],
    completions: Sequence[Completion],
    gold: Sequence[Ranking],
) -> None:
    """The rows of a checked project, in one transaction (all of it or nothing)."""
    gold_prompts = {r.prompt_id for r in gold}
    with db.write() as session:
        if session.scalar(select(Project.id).where(Project.name == project.name)) is not None:
            raise Conflict(f"a project named {project.name!r} already exists")
        session.add(project)
        session.flush()
        session.add(
            Guidelines(
                project_id=project.id, version=guidelines_version(guidelines), markdown=guidelines
            )
        )
        prompt_rows = {
            p.id: PromptRow(
                project_id=project.id,
                external_id=p.id,
                text=prompt_display(p.prompt),
                messages=None if isinstance(p.prompt, str) else [m.model_dump() for m in p.prompt],
                reference=p.reference,
                meta=dict(p.metadata),
                is_gold=p.id in gold_prompts,
            )
            for p in prompts
        }
        session.add_all(prompt_rows.values())
        session.flush()
        session.add_all(
            CompletionRow(
                project_id=project.id,
                prompt_id=prompt_rows[c.prompt_id].id,
                external_id=c.id,
                public_id=public_id,
                text=c.completion,
                policy=c.policy,
            )
            for c, public_id in zip(completions, _public_ids(len(completions)), strict=True)
        )
        session.add_all(
            GoldRanking(
                prompt_id=prompt_rows[r.prompt_id].id,
                criterion=r.criterion,
                groups=[list(g) for g in r.ranking],
            )
            for r in gold
        )


def set_guidelines(db: Database, name: str, markdown: str) -> tuple[str, bool]:
    """Make `markdown` the project's current guidelines; (version, whether it changed).
    Labelers must acknowledge a new version before their next task."""
    if not markdown.strip():
        raise Invalid("the guidelines are empty", "guidelines")
    check_text(markdown, "guidelines")
    version = guidelines_version(markdown)
    with db.write() as session:
        project = get_project(session, name)
        if current_guidelines(session, project).version == version:
            return version, False
        existing = session.scalar(
            select(Guidelines).where(
                Guidelines.project_id == project.id, Guidelines.version == version
            )
        )
        if existing is not None:
            # Back to an earlier text: it becomes the newest row again and, being a
            # change from what labelers last read, needs acknowledging again.
            session.delete(existing)
            session.flush()
        session.add(Guidelines(project_id=project.id, version=version, markdown=markdown))
    return version, True


# --- labelers ----------------------------------------------------------------------


def add_labeler(db: Database, name: str, *, admin: bool = False) -> str:
    """A new labeler; returns their login token. Only its hash is stored: the token
    cannot be shown again (`rotate_token` issues a new one)."""
    name = name.strip()
    if not name:
        raise Invalid("--name: a labeler needs a name", "name")
    if name in RESERVED_NAMES:
        raise Invalid(
            f"--name: {name!r} is reserved (the exports name gold and consensus rankings "
            f"{' and '.join(map(repr, RESERVED_NAMES))})",
            "name",
        )
    check_text(name, "--name", max_len=NAME_MAX, name=True)
    token = new_token()
    try:
        with db.write() as session:
            if session.scalar(select(Labeler.id).where(Labeler.name == name)) is not None:
                raise Conflict(f"a labeler named {name!r} already exists")
            session.add(Labeler(name=name, token_hash=hash_secret(token), is_admin=admin))
    except IntegrityError:
        raise Conflict(f"a labeler named {name!r} already exists") from None
    return token


def _labeler_named(session: Session, name: str, *, project: str | None = None) -> Labeler:
    """The labeler of that name, or NotFound naming it (and, given `project`, the
    project's labelers: those who have had a task in it)."""
    fits = text_problem(name, max_len=NAME_MAX) is None
    labeler = session.scalar(select(Labeler).where(Labeler.name == name)) if fits else None
    if labeler is None:
        known = ""
        if project is not None:
            names = session.scalars(
                select(Labeler.name)
                .join(Assignment, Assignment.labeler_id == Labeler.id)
                .join(Project, Assignment.project_id == Project.id)
                .where(Project.name == project)
                .distinct()
                .order_by(Labeler.name)
                .limit(21)
            ).all()
            more = ", ..." if len(names) > 20 else ""
            listed = ", ".join(repr(n) for n in names[:20]) or "none yet"
            known = f" (labelers of project {project!r}: {listed}{more})"
        raise NotFound(f"no labeler named {shown(name)}{known}")
    return labeler


def _end_sessions(session: Session, labeler: Labeler) -> None:
    session.execute(delete(WebSession).where(WebSession.labeler_id == labeler.id))


def deactivate_labeler(db: Database, name: str, *, by: str | None = None) -> dict[str, Any]:
    """Stop a labeler: their token stops working, their browser sessions end at once,
    and their pending tasks go back to the pool (what they ranked stays). `by` is
    the admin asking, who may not deactivate themselves (and lock the door behind
    them). Returns the labeler as `list_labelers` shows them."""
    if by is not None and by == name:
        raise Conflict("you cannot deactivate yourself; ask another admin")
    with db.write() as session:
        labeler = _labeler_named(session, name)
        labeler.active = False
        _end_sessions(session, labeler)
        for a in session.scalars(
            select(Assignment).where(
                Assignment.labeler_id == labeler.id, Assignment.status == PENDING
            )
        ):
            a.status = EXPIRED
        return _labeler_out(labeler)


def reactivate_labeler(db: Database, name: str) -> dict[str, Any]:
    """Let a deactivated labeler back in with the token they had (`rotate_token`
    for a new one)."""
    with db.write() as session:
        labeler = _labeler_named(session, name)
        labeler.active = True
        return _labeler_out(labeler)


def rotate_token(db: Database, name: str) -> str:
    """A new login token for the labeler (shown once, stored hashed): the old one
    stops working and their browser sessions end at once. Their rankings, tasks and
    acknowledgements stay theirs."""
    token = new_token()
    with db.write() as session:
        labeler = _labeler_named(session, name)
        labeler.token_hash = hash_secret(token)
        _end_sessions(session, labeler)
    return token


def _labeler_out(lab: Labeler) -> dict[str, Any]:
    return {
        "name": lab.name,
        "is_admin": lab.is_admin,
        "active": lab.active,
        "created_at": lab.created_at.isoformat(timespec="seconds"),
    }


def list_labelers(db: Database) -> list[dict[str, Any]]:
    """Every labeler: {"name", "is_admin", "active", "created_at"}, oldest first."""
    with db.read() as session:
        return [_labeler_out(lab) for lab in session.scalars(select(Labeler).order_by(Labeler.id))]


def labeler_by_token(session: Session, token: str) -> Labeler | None:
    if not token:
        return None
    labeler = session.scalar(select(Labeler).where(Labeler.token_hash == hash_secret(token)))
    return labeler if labeler is not None and labeler.active else None


# --- what the database holds, as the schema's records -------------------------------


@dataclass
class ProjectRecords:
    prompts: list[Prompt]
    completions: list[Completion]
    rankings: list[Ranking]  # of done assignments, in the order they were stored
    gold: list[Ranking]  # the known rankings of gold prompts (labeler "gold")
    gold_prompt_ids: set[str]


def project_records(session: Session, project: Project) -> ProjectRecords:
    prompt_rows = session.scalars(
        select(PromptRow).where(PromptRow.project_id == project.id).order_by(PromptRow.id)
    ).all()
    by_pk = {p.id: p for p in prompt_rows}
    prompts = [
        Prompt(
            id=p.external_id,
            prompt=p.text if p.messages is None else p.messages,
            reference=p.reference,
            metadata=p.meta or {},
        )
        for p in prompt_rows
    ]
    completions = [
        Completion(
            id=c.external_id,
            prompt_id=by_pk[c.prompt_id].external_id,
            completion=c.text,
            policy=c.policy,
        )
        for c in session.scalars(
            select(CompletionRow)
            .where(CompletionRow.project_id == project.id)
            .order_by(CompletionRow.id)
        )
    ]
    # An assignment's rankings count as a whole: only done assignments (ranked by
    # every criterion) are exported. A partly ranked one whose slot went to another
    # labeler when it expired never counts, so no prompt holds more than `overlap`
    # rankings by a criterion (its rankings stay in the table, for the record).
    rows = session.execute(
        select(RankingRow, Assignment.prompt_id, Labeler.name)
        .join(Assignment, RankingRow.assignment_id == Assignment.id)
        .join(Labeler, Assignment.labeler_id == Labeler.id)
        .where(Assignment.project_id == project.id, Assignment.status == DONE)
        .order_by(RankingRow.id)
    ).all()
    rankings = [
        Ranking(
            prompt_id=by_pk[prompt_pk].external_id,
            labeler=labeler,
            criterion=r.criterion,
            ranking=r.groups,
            unrankable=r.unrankable,
            rationale=r.rationale or None,
        )
        for r, prompt_pk, labeler in rows
    ]
    gold = [
        Ranking(
            prompt_id=by_pk[g.prompt_id].external_id,
            labeler=GOLD_LABELER,
            criterion=g.criterion,
            ranking=g.groups,
        )
        for g in session.scalars(
            select(GoldRanking)
            .join(PromptRow, GoldRanking.prompt_id == PromptRow.id)
            .where(PromptRow.project_id == project.id)
            .order_by(GoldRanking.id)
        )
    ]
    gold_ids = {p.external_id for p in prompt_rows if p.is_gold}
    return ProjectRecords(prompts, completions, rankings, gold, gold_ids)


def export_project(
    db: Database,
    name: str,
    what: str,
    *,
    include_gold: bool = False,
    criterion: str | None = None,
    labeler: str | None = None,
) -> list[Record]:
    """The project's rankings, pairs or consensus rankings as schema records, ready
    for `alignloop.io.write_records` and then `alignloop train-rm`.

    Rankings of gold prompts are left out unless `include_gold`: every labeler ranks
    each gold prompt, which would weigh those prompts far more than the others.

    Pairs and consensus are per criterion: a project with several needs `criterion`
    for them (one file each), since the same two responses may be ordered one way by
    helpfulness and the other by harmlessness, and a reward model trained on both
    orders learns nothing. Rankings carry their criterion and may be exported
    together.

    Every record keeps its labeler; `labeler` keeps one labeler's only (in a personal
    project, the pairs that fit their own weights). An unknown labeler is NotFound;
    a known one who ranked nothing here exports nothing."""
    if what not in EXPORTS:
        raise Invalid(f"--what must be one of {', '.join(EXPORTS)}, got {shown(what)}", "what")
    with db.read() as session:
        project = get_project(session, name)
        if criterion is not None and criterion not in project.criteria:
            raise Invalid(
                f"--criterion {shown(criterion)} is not one of the project's criteria "
                f"({', '.join(project.criteria)})",
                "criterion",
            )
        if criterion is None and what != "rankings" and len(project.criteria) > 1:
            raise Invalid(
                f"project {project.name!r} has {len(project.criteria)} criteria "
                f"({', '.join(project.criteria)}): {what} are exported one criterion at a "
                f"time (pairs of two criteria may contradict each other); give --criterion "
                f"{project.criteria[0]}",
                "criterion",
            )
        if labeler is not None:
            _labeler_named(session, labeler, project=project.name)
        records = project_records(session, project)
    rankings = [
        r
        for r in records.rankings
        if (include_gold or r.prompt_id not in records.gold_prompt_ids)
        and (criterion is None or r.criterion == criterion)
        and (labeler is None or r.labeler == labeler)
    ]
    if what == "rankings":
        return list(rankings)
    if what == "consensus":
        return list(consensus(rankings))
    result = rankings_to_pairs(rankings, records.completions, records.prompts)
    return list(result.pairs)


# --- status ------------------------------------------------------------------------


def _gold_scores(rankings: Iterable[Ranking], gold: list[Ranking]) -> dict[str, dict[str, Any]]:
    """Labeler -> {"accuracy", "pairs", "items"}: the share of the gold rankings'
    strictly ordered pairs the labeler ordered the same way (pairs the labeler tied
    or left out do not count), by `feedback.pairwise_agreement` between the labeler
    and the gold labeler."""
    by_labeler: dict[str, list[Ranking]] = defaultdict(list)
    gold_keys = {(g.prompt_id, g.criterion) for g in gold}
    for r in rankings:
        if (r.prompt_id, r.criterion) in gold_keys:
            by_labeler[r.labeler].append(r)
    scores = {}
    for labeler, own in by_labeler.items():
        share, pairs = pairwise_agreement([*gold, *own])
        scores[labeler] = {
            "accuracy": None if share is None else round(share, 4),
            "pairs": pairs,
            "items": len({r.prompt_id for r in own}),
        }
    return scores


def _assignment_counts(session: Session, project: Project) -> tuple[dict, dict, int]:
    """(labeler -> status -> count, labeler -> [seconds per done task], complete prompts)."""
    rows = session.execute(
        select(
            Labeler.name,
            Assignment.status,
            Assignment.is_gold,
            Assignment.created_at,
            Assignment.completed_at,
            Assignment.prompt_id,
        )
        .join(Labeler, Assignment.labeler_id == Labeler.id)
        .where(Assignment.project_id == project.id)
    ).all()
    counts: dict[str, Counter] = defaultdict(Counter)
    seconds: dict[str, list[float]] = defaultdict(list)
    done_per_prompt: Counter = Counter()
    for name, status, is_gold, created, completed, prompt_pk in rows:
        counts[name][status] += 1
        if status == DONE:
            if completed is not None:
                seconds[name].append((completed - created).total_seconds())
            if not is_gold:
                done_per_prompt[prompt_pk] += 1
    # A personal project's prompt is complete once every labeler who opened it ranked it.
    needed = len(counts) if project.personal else project.overlap
    complete = sum(1 for n in done_per_prompt.values() if n >= needed)
    return counts, seconds, complete


def project_status(db: Database, name: str, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """Progress, per-labeler throughput, agreement (`feedback.agreement_report` over
    the non-gold rankings), gold accuracy and flagged items, as one JSON-safe dict.

    A personal project (`"personal": true`) has no agreement (None: each labeler ranks
    by their own taste) and no gold; each labeler has instead `"pairs"` (their
    comparisons per criterion, as the export writes them) and `"fit_ready"` (at least
    `FIT_PAIRS` of them by every criterion: enough to fit their weights). Its tasks
    needed are prompts x the labelers who opened it."""
    now = now or utcnow()
    with db.read() as session:
        project = get_project(session, name)
        records = project_records(session, project)
        counts, seconds, complete = _assignment_counts(session, project)
        guidelines = current_guidelines(session, project)
        last_hour = Counter(
            session.scalars(
                select(Labeler.name)
                .join(Assignment, Assignment.labeler_id == Labeler.id)
                .join(RankingRow, RankingRow.assignment_id == Assignment.id)
                .where(
                    Assignment.project_id == project.id,
                    RankingRow.created_at > now - dt.timedelta(hours=1),
                )
            ).all()
        )
        flagged = [
            {
                "prompt_id": prompt_id,
                "prompt": prompt_text,
                "labeler": labeler,
                "criterion": r.criterion,
                "rationale": r.rationale or "",
                "at": r.created_at.isoformat(timespec="seconds"),
            }
            for r, prompt_id, prompt_text, labeler in session.execute(
                select(RankingRow, PromptRow.external_id, PromptRow.text, Labeler.name)
                .join(Assignment, RankingRow.assignment_id == Assignment.id)
                .join(PromptRow, Assignment.prompt_id == PromptRow.id)
                .join(Labeler, Assignment.labeler_id == Labeler.id)
                .where(Assignment.project_id == project.id, RankingRow.flagged_unsafe.is_(True))
                .order_by(RankingRow.id)
            )
        ]
        criteria, overlap, gold_rate = list(project.criteria), project.overlap, project.gold_rate
        personal = project.personal
    regular = [r for r in records.rankings if r.prompt_id not in records.gold_prompt_ids]
    agreement = {"labelers": {}} if personal else agreement_report(regular)
    gold = _gold_scores(records.rankings, records.gold)
    pairs = _pairs_per_labeler(records) if personal else {}
    labelers: dict[str, dict[str, Any]] = {}
    for labeler in sorted(set(counts) | {r.labeler for r in records.rankings}):
        own = [r for r in records.rankings if r.labeler == labeler]
        c = counts.get(labeler, Counter())
        labelers[labeler] = {
            "assignments_done": c[DONE],
            "pending": c[PENDING],
            "skipped": c[SKIPPED],
            "expired": c[EXPIRED],
            "rankings": len(own),
            "unrankable": sum(r.unrankable for r in own),
            "rankings_last_hour": last_hour.get(labeler, 0),
            "median_seconds_per_task": (
                round(statistics.median(seconds[labeler]), 1) if seconds[labeler] else None
            ),
            "agreement_with_consensus": agreement["labelers"]
            .get(labeler, {})
            .get("agreement_with_consensus"),
            "gold": gold.get(labeler, {"accuracy": None, "pairs": 0, "items": 0}),
        }
        if personal:
            own_pairs = {c: pairs.get((labeler, c), 0) for c in criteria}
            labelers[labeler]["pairs"] = own_pairs
            labelers[labeler]["fit_ready"] = min(own_pairs.values()) >= FIT_PAIRS
    n_regular = len(records.prompts) - len(records.gold_prompt_ids)
    return {
        "project": name,
        "personal": personal,
        "criteria": criteria,
        "overlap": overlap,
        "gold_rate": gold_rate,
        "guidelines_version": guidelines.version,
        "progress": {
            "prompts": n_regular,
            "complete_prompts": complete,
            "gold_prompts": len(records.gold_prompt_ids),
            "rankings": len(records.rankings),
            "regular_rankings": len(regular),
            "share_complete": round(complete / n_regular, 4) if n_regular else None,
        },
        "labelers": labelers,
        "agreement": (
            None if personal else {k: v for k, v in agreement.items() if k != "labelers"}
        ),
        "fit_pairs": FIT_PAIRS,
        "flagged_unsafe": flagged,
    }


def _pairs_per_labeler(records: ProjectRecords) -> Counter:
    """(labeler, criterion) -> the pairs an export of that labeler's rankings by that
    criterion holds (`feedback.rankings_to_pairs`, gold prompts left out as there)."""
    regular = [r for r in records.rankings if r.prompt_id not in records.gold_prompt_ids]
    result = rankings_to_pairs(regular, records.completions, records.prompts)
    return Counter((p.labeler, p.criterion) for p in result.pairs)


def _contested(rankings: Sequence[Ranking]) -> list[list[str]]:
    """Completion id pairs [a, b] that one labeler put strictly above the other and
    another labeler strictly below (ties disagree with nobody)."""
    orders: dict[tuple[str, str], set[int]] = defaultdict(set)
    for r in rankings:
        pos = r.positions()
        for a in pos:
            for b in pos:
                if a < b and pos[a] != pos[b]:
                    orders[(a, b)].add(1 if pos[a] < pos[b] else -1)
    return [[a, b] for (a, b), signs in sorted(orders.items()) if len(signs) == 2]


def review_items(
    db: Database, name: str, *, criterion: str | None = None, prompt_id: str | None = None
) -> list[dict[str, Any]]:
    """Per-item review for the admin: every regular prompt with a done ranking (or the
    one `prompt_id`), with its completions and every labeler's current ranking side
    by side, per criterion:

        {"prompt_id", "prompt", "messages": a conversation's [{"role", "content"}] or None,
         "completions": [{"id", "text", "policy"}],
         "criteria": {criterion: {"rankings": [{"labeler", "ranking", "unrankable",
                                                "rationale", "flag_unsafe", "version"}],
                                  "agreement": share or None, "contested": [[a, b]]}},
         "flagged": whether any labeler flagged it unsafe}

    Ids are the files' completion ids. `agreement` is `feedback.pairwise_agreement`
    over the item's labelers; `contested` lists the completion pairs they ordered
    both ways (what the page highlights). Items come in the prompts' order."""
    with db.read() as session:
        project = get_project(session, name)
        if criterion is not None and criterion not in project.criteria:
            raise Invalid(f"criterion {shown(criterion)} is not one of the project's", "criterion")
        q = (
            select(RankingRow, Assignment.prompt_id, Labeler.name)
            .join(Assignment, RankingRow.assignment_id == Assignment.id)
            .join(Labeler, Assignment.labeler_id == Labeler.id)
            .join(PromptRow, Assignment.prompt_id == PromptRow.id)
            .where(
                Assignment.project_id == project.id,
                Assignment.status == DONE,
                PromptRow.is_gold.is_(False),
            )
            .order_by(PromptRow.id, RankingRow.id)
        )
        if criterion is not None:
            q = q.where(RankingRow.criterion == criterion)
        if prompt_id is not None:
            q = q.where(PromptRow.external_id == prompt_id[:NAME_MAX])
        rows = session.execute(q).all()
        prompts = {
            p.id: p
            for p in session.scalars(
                select(PromptRow).where(PromptRow.id.in_({pk for _, pk, _ in rows}))
            )
        }
        completions: dict[int, list[CompletionRow]] = defaultdict(list)
        for c in session.scalars(
            select(CompletionRow)
            .where(CompletionRow.prompt_id.in_(prompts))
            .order_by(CompletionRow.id)
        ):
            completions[c.prompt_id].append(c)
    items: dict[int, dict[str, Any]] = {}
    records: dict[tuple[int, str], list[Ranking]] = defaultdict(list)
    for r, prompt_pk, labeler in rows:
        p = prompts[prompt_pk]
        item = items.setdefault(
            prompt_pk,
            {
                "prompt_id": p.external_id,
                "prompt": p.text,
                "messages": p.messages,
                "completions": [
                    {"id": c.external_id, "text": c.text, "policy": c.policy}
                    for c in completions[prompt_pk]
                ],
                "criteria": {},
                "flagged": False,
            },
        )
        item["flagged"] |= r.flagged_unsafe
        per = item["criteria"].setdefault(r.criterion, {"rankings": []})
        per["rankings"].append(
            {
                "labeler": labeler,
                "ranking": r.groups,
                "unrankable": r.unrankable,
                "rationale": r.rationale or "",
                "flag_unsafe": r.flagged_unsafe,
                "version": r.version,
            }
        )
        if not r.unrankable:
            records[(prompt_pk, r.criterion)].append(
                Ranking(
                    prompt_id=p.external_id,
                    labeler=labeler,
                    criterion=r.criterion,
                    ranking=r.groups,
                )
            )
    for prompt_pk, item in items.items():
        for crit, per in item["criteria"].items():
            ranked = records[(prompt_pk, crit)]
            share, _ = pairwise_agreement(ranked)
            per["agreement"] = None if share is None else round(share, 4)
            per["contested"] = _contested(ranked)
    return list(items.values())


def list_projects(db: Database, *, name: str | None = None) -> list[dict[str, Any]]:
    """Every project with its size and progress (for the project lists); with `name`,
    only that one (none when there is no such project). A personal project's tasks
    needed are its prompts x the labelers who opened it (`tasks_per_prompt`)."""
    with db.read() as session:
        query = select(Project).order_by(Project.id)
        if name is not None:
            query = query.where(Project.name == name)
        projects = session.scalars(query).all()
        out = []
        for p in projects:
            n = session.scalar(
                select(func.count()).select_from(PromptRow).where(regular_prompts(p.id))
            )
            done = session.scalar(
                select(func.count()).select_from(Assignment).where(done_tasks(p.id))
            )
            out.append(
                {
                    "name": p.name,
                    "criteria": list(p.criteria),
                    "overlap": p.overlap,
                    "personal": p.personal,
                    "prompts": n,
                    "assignments_done": done,
                    "assignments_needed": n * tasks_per_prompt(session, p),
                    "guidelines_version": current_guidelines(session, p).version,
                }
            )
    return out


def tasks_per_prompt(session: Session, project: Project) -> int:
    """The tasks each prompt needs: `overlap`, or in a personal project one per labeler
    who opened it (everyone who comes ranks everything)."""
    if not project.personal:
        return project.overlap
    return session.scalar(
        select(func.count(Assignment.labeler_id.distinct())).where(
            Assignment.project_id == project.id
        )
    )
