"""The Alembic migrations build exactly the tables the models describe, on SQLite
and PostgreSQL, and go down and up again; 0004 keeps what a database of 0003 holds."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from alignloop.server import service
from alignloop.server.db import Database, downgrade, head_revision, upgrade
from alignloop.server.models import Base, Project


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


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0004_keeps_every_project_as_it_was(bare_database, backend):
    """A database of 0003 with a project, its prompt, completions, an assignment and
    its ranking: upgraded, all of it is there and the project is not personal;
    downgraded again, still all there."""
    db = bare_database(backend)
    upgrade(db, "0003")
    rows = {
        "labelers": "(1, 'ann', 'h', false, true, '2026-01-01')",
        "projects": "(1, 'p', '[\"c\"]', 2, 0, 60, '2026-01-01')",
        "prompts": "(1, 1, 'q', 'a text', NULL, '{}', false, NULL)",
        "completions": "(1, 1, 1, 'q-0', 'a', 'one', NULL), (2, 1, 1, 'q-1', 'b', 'two', NULL)",
        "assignments": "(1, 1, 1, 1, false, 'done', '2026-01-01', '2026-01-01', '2026-01-01')",
        "rankings": "(1, 1, 'c', '[[\"q-0\"], [\"q-1\"]]', false, false, NULL, '2026-01-01', 1)",
    }
    with db.engine.begin() as conn:
        for table, values in rows.items():
            conn.execute(text(f"INSERT INTO {table} VALUES {values}"))

    def counts() -> dict[str, int]:
        with db.engine.connect() as conn:
            return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in rows}

    every_one = {t: 2 if t == "completions" else 1 for t in rows}
    assert upgrade(db, "0004") == ("0003", "0004")
    assert counts() == every_one
    with db.read() as session:
        (project,) = session.scalars(select(Project)).all()
        assert project.personal is False and project.overlap == 2
    pairs = service.export_project(db, "p", "pairs")
    assert [(p.chosen_id, p.rejected_id, p.labeler) for p in pairs] == [("q-0", "q-1", "ann")]
    assert downgrade(db, "0003") == ("0004", "0003")
    assert counts() == every_one


def test_downgrading_0003_keeps_the_completions_of_its_prompts(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade(db, "0003")
    with db.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO projects VALUES (1, 'p', '[\"c\"]', 1, 0, 60, '2026-01-01')")
        )
        conn.execute(text("INSERT INTO prompts VALUES (1, 1, 'q', 'a text', NULL, '{}', 0, NULL)"))
        conn.execute(text("INSERT INTO completions VALUES (1, 1, 1, 'q-0', 'a', 'one', NULL)"))
    assert downgrade(db, "0002") == ("0003", "0002")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM completions")).scalar() == 1
    db.dispose()
