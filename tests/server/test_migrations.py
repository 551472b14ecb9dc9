"""The Alembic migrations build exactly the tables the models describe, on SQLite
and PostgreSQL, and go down and up again."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from alignloop.server.db import Database, downgrade, head_revision, upgrade
from alignloop.server.models import Base


def test_migrated_schema_matches_the_models(db):
    assert db.current_revision() == head_revision()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_db):
    with sqlite_db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_downgrade_to_nothing_and_up_again(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    assert upgrade(db) == (None, head_revision())
    assert downgrade(db, "base") == (head_revision(), None)
    assert set(inspect(db.engine).get_table_names()) == {"alembic_version"}
    assert upgrade(db)[1] == head_revision()
    assert set(inspect(db.engine).get_table_names()) >= set(Base.metadata.tables)
