"""The database: an embedded SQLite file by default, PostgreSQL for teams.

SQLite runs in WAL mode (readers never block the writer), with a busy timeout (a
writer waits for the lock instead of failing) and foreign keys on. sqlite3's own
transaction handling is switched off and SQLAlchemy emits BEGIN itself, so that a
transaction that will write starts with BEGIN IMMEDIATE: it takes the write lock
first and then reads, so two writers can never both read the same state and then
both act on it (SQLite's equivalent of row locks). `synchronous=FULL`: a ranking
the server has acknowledged survives a power cut, not only a killed process.

PostgreSQL runs at READ COMMITTED; the code that needs it locks rows explicitly
(`SELECT ... FOR UPDATE [SKIP LOCKED]`, see `assign.py`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from alignloop.config import ConfigError

__all__ = [
    "DEFAULT_DB",
    "Database",
    "display_url",
    "downgrade",
    "head_revision",
    "normalize_url",
    "open_database",
    "upgrade",
]

DEFAULT_DB = "sqlite:///alignloop.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> URL:
    """A SQLAlchemy URL from what a user types: `sqlite:///labels.db`,
    `postgresql://user@host/db` (psycopg 3 is the driver), or a plain file path
    (`labels.db`: a SQLite file)."""
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser()}"
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ConfigError(f"--db {url!r}: not a database URL: {e}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"--db: unsupported database {parsed.get_backend_name()!r}: "
            "use sqlite:///FILE or postgresql://USER@HOST/DB"
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError("--db: an in-memory SQLite database cannot be shared; give a file")
    return parsed


def display_url(url: str | URL) -> str:
    """The URL with any password hidden: what may appear in messages and logs."""
    url = normalize_url(url) if isinstance(url, str) else url
    return url.render_as_string(hide_password=True)


def _sqlite_engine(url: URL) -> Engine:
    if url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        pool_size=8,
        max_overflow=24,
        pool_timeout=60,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not sqlite3, decide when a transaction begins (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # A transaction that will write takes the write lock at once (see the module doc).
        immediate = conn.get_execution_options().get("alignloop_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """One database: its engine and sessions.

    `db.read()` gives a session for reading; `db.write()` a session inside a
    transaction that takes SQLite's write lock at its start and commits on leaving
    the block (rolls back on an error)."""

    def __init__(self, url: str | URL):
        self.url = normalize_url(url) if isinstance(url, str) else url
        self.backend = self.url.get_backend_name()
        if self.backend == "sqlite":
            self.engine = _sqlite_engine(self.url)
        else:
            self.engine = create_engine(
                self.url, pool_size=10, max_overflow=30, pool_timeout=60, pool_pre_ping=True
            )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. Writers of this process queue on a lock
        # (first come, first served) instead of polling the file lock through the
        # busy handler, whose growing sleeps make a slow tail under contention; the
        # busy timeout still arbitrates with other processes (CLI commands).
        self._write_lock = threading.Lock() if self.backend == "sqlite" else None

    @property
    def is_postgres(self) -> bool:
        return self.backend == "postgresql"

    def __repr__(self) -> str:
        return f"Database({display_url(self.url)!r})"

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        with self._write_lock or contextlib.nullcontext(), self._sessions() as session:
            session.connection(execution_options={"alignloop_write": True})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()

    def current_revision(self) -> str | None:
        """The Alembic revision the database is at (None: not set up yet)."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def _alembic_config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "alignloop.server:migrations")
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


def _migrate(
    db: Database, step: Callable[..., None], revision: str
) -> tuple[str | None, str | None]:
    """Run alembic's `step` (command.upgrade or command.downgrade) to `revision` on
    one write connection, committed; (revision before, revision after)."""
    before = db.current_revision()
    with db.engine.connect() as connection:
        connection = connection.execution_options(alignloop_write=True)
        step(_alembic_config(connection), revision)
        connection.commit()
    return before, db.current_revision()


def upgrade(db: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Run the migrations up to `revision`; returns (revision before, revision after).

    Alembic's own logging would go to the root logger; it is left as configured by
    the caller. Safe to run on an up-to-date database (nothing happens)."""
    from alembic import command

    return _migrate(db, command.upgrade, revision)


def downgrade(db: Database, revision: str) -> tuple[str | None, str | None]:
    """Undo migrations down to `revision` ("base": no tables); (before, after)."""
    from alembic import command

    return _migrate(db, command.downgrade, revision)


def open_database(url: str | None = None, *, migrate: bool = True) -> Database:
    """The database at `url` (default: $ALIGNLOOP_DB, else `alignloop.db` here),
    migrated to the newest schema unless `migrate=False`, in which case a database
    that is not up to date is an error."""
    db = Database(url or os.environ.get("ALIGNLOOP_DB") or DEFAULT_DB)
    if migrate:
        upgrade(db)
    elif db.current_revision() != head_revision():
        raise ConfigError(
            f"{display_url(db.url)}: the schema is at revision {db.current_revision()}, "
            f"not {head_revision()}: run `alignloop db upgrade --db URL`"
        )
    return db
