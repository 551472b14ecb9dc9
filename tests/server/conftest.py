"""Fixtures of the labeling-server tests: a fresh database on SQLite and on a real
PostgreSQL server, a small project, labelers, and an API client with a clock the
test can move.

PostgreSQL: $ALIGNLOOP_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test)
names a server and a database to connect to; the tests create a database of their
own there (a unique name per run), migrate it once, empty its tables before each
test and drop it at the end. `scripts/test-services.sh` (run by `make test`) starts
PostgreSQL where it can; where it cannot, the PostgreSQL cases skip and say why.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import threading
from dataclasses import dataclass, field

import pytest

pytest.importorskip("fastapi", reason="the labeling server needs: pip install 'alignloop[server]'")

from sqlalchemy import text  # noqa: E402

from alignloop.schema import Completion, Prompt, Ranking  # noqa: E402
from alignloop.server import service  # noqa: E402
from alignloop.server.db import Database, upgrade  # noqa: E402
from alignloop.server.models import Base  # noqa: E402

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
GUIDELINES = "# How to rank\n\nPrefer the response that **answers the prompt** best.\n"


def pg_server_url() -> str:
    return os.environ.get("ALIGNLOOP_TEST_PG", PG_DEFAULT)


def _pg_unavailable() -> str | None:
    """Why PostgreSQL cannot be used here, or None when it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'alignloop[postgres]')"
    try:
        with psycopg.connect(pg_server_url(), connect_timeout=3):
            return None
    except psycopg.Error as e:
        return (
            f"PostgreSQL at {pg_server_url()} does not answer ({str(e).strip()}); "
            "scripts/test-services.sh installs and starts it where apt and root are available"
        )


def _create_pg_database(prefix: str) -> tuple[str, str]:
    """A new empty database on the test PostgreSQL server, named `prefix`, this
    process and a random suffix: (its name, its URL). Skips the test, saying why, when
    PostgreSQL does not answer."""
    reason = _pg_unavailable()
    if reason:
        pytest.skip(reason)
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, make_url(pg_server_url()).set(database=name).render_as_string(hide_password=False)


def _drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(pg_server_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_database():
    """A PostgreSQL database of this test run, migrated; dropped at the end."""
    name, url = _create_pg_database("alignloop_test")
    db = Database(url)
    upgrade(db)
    try:
        yield db
    finally:
        db.dispose()
        _drop_pg_database(name)


@pytest.fixture
def bare_database(tmp_path):
    """bare_database(backend) -> a Database with no tables yet, to migrate step by
    step: a new SQLite file, or a new PostgreSQL database of its own (dropped at the
    end; the test skips, saying why, when PostgreSQL does not answer)."""
    made: list[tuple[Database, str | None]] = []

    def make(backend: str) -> Database:
        if backend == "sqlite":
            database = Database(f"sqlite:///{tmp_path / f'bare-{len(made)}.db'}")
            made.append((database, None))
            return database
        name, url = _create_pg_database("alignloop_bare")
        database = Database(url)
        made.append((database, name))
        return database

    yield make
    for database, name in made:
        database.dispose()
        if name is not None:
            _drop_pg_database(name)


def _empty(db: Database) -> None:
    tables = [t.name for t in Base.metadata.sorted_tables]
    with db.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> Database:
    """A migrated, empty database: a new SQLite file, or the run's PostgreSQL
    database with every table emptied."""
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'labels.db'}")
        upgrade(database)
        yield database
        database.dispose()
    else:
        database = request.getfixturevalue("pg_database")
        _empty(database)
        yield database


@pytest.fixture
def sqlite_db(tmp_path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'labels.db'}")
    upgrade(database)
    yield database
    database.dispose()


def task_records(n_prompts: int = 4, k: int = 3, *, prefix: str = "p") -> tuple[list, list]:
    """`n_prompts` prompts with `k` completions each, by two policies."""
    prompts = [
        Prompt(id=f"{prefix}{i}", prompt=f"Summarize document {i}.") for i in range(n_prompts)
    ]
    completions = [
        Completion(
            id=f"{prefix}{i}-{j}",
            prompt_id=f"{prefix}{i}",
            completion=f"summary {j} of document {i}",
            policy=f"policy-{j % 2}",
        )
        for i in range(n_prompts)
        for j in range(k)
    ]
    return prompts, completions


def make_project(
    db: Database,
    name: str = "demo",
    *,
    n_prompts: int = 4,
    k: int = 3,
    overlap: int = 2,
    criteria: tuple[str, ...] = ("helpfulness",),
    gold: list[Ranking] = (),
    gold_rate: float | None = None,
    ttl_s: int = 3600,
    guidelines: str = GUIDELINES,
    personal: bool = False,
) -> service.ProjectSummary:
    """A project of `n_prompts` prompts with `k` completions each; a personal one
    takes no overlap."""
    prompts, completions = task_records(n_prompts, k)
    return service.create_project(
        db,
        name=name,
        criteria=list(criteria),
        guidelines=guidelines,
        prompts=prompts,
        completions=completions,
        overlap=None if personal else overlap,
        gold=gold,
        gold_rate=gold_rate,
        assignment_ttl_s=ttl_s,
        personal=personal,
    )


@pytest.fixture
def new_project(db):
    """new_project(name="demo", **options) -> the summary of a project made in `db`."""
    return lambda name="demo", **kw: make_project(db, name, **kw)


@pytest.fixture
def records():
    """records(n_prompts, k) -> (prompts, completions) of a small task."""
    return task_records


@dataclass
class Clock:
    """A clock a test moves forward (naive UTC, like the tables)."""

    now: dt.datetime = field(default_factory=lambda: dt.datetime(2026, 1, 1, 12, 0, 0))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> dt.datetime:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Api:
    """A TestClient that speaks as one labeler (bearer token)."""

    def __init__(self, client, token: str | None):
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, **kw):
        return self.client.get(path, headers=self.headers, **kw)

    def post(self, path: str, json=None, **kw):
        return self.client.post(path, json=json, headers=self.headers, **kw)

    def acknowledge(self, project: str = "demo") -> None:
        version = self.get(f"/api/v1/projects/{project}/guidelines").json()["version"]
        r = self.post(f"/api/v1/projects/{project}/guidelines/{version}/acknowledge")
        assert r.status_code == 200, r.text

    def next(self, project: str | None = "demo"):
        return self.get("/api/v1/tasks/next", params={"project": project} if project else None)

    def rank(self, assignment_id: int, ranking, **body):
        return self.post(
            f"/api/v1/assignments/{assignment_id}/ranking", json={"ranking": ranking, **body}
        )


@pytest.fixture
def app(db, clock):
    from alignloop.server.app import create_app

    return create_app(db, clock=clock)


@pytest.fixture
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@pytest.fixture
def as_labeler(db, client):
    """as_labeler(name, admin=False) -> an Api speaking as a new labeler."""

    def make(name: str, *, admin: bool = False, acknowledge: str | None = None) -> Api:
        api = Api(client, service.add_labeler(db, name, admin=admin))
        api.name = name
        if acknowledge:
            api.acknowledge(acknowledge)
        return api

    return make
