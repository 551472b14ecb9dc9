"""Personal projects ("my own preferences", issue 16): `projects.personal`, false for
every project stored before (so they keep their overlap, gold items and agreement).
See alignloop/server/models.py.

Both steps alter `projects` in place (ALTER TABLE ... ADD / DROP COLUMN, which SQLite
has had since 3.35), never by batch mode's copy of the table: on SQLite, with
foreign keys on, dropping the old `projects` table deletes, by ON DELETE CASCADE,
every prompt, completion, assignment and ranking of every project.

Downgrading drops the flag: a personal project then reads as a regular one of
overlap 1 (what it stores), and its rankings stay as they are.

Revision: 0004 (after 0003)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default ('0' is false on both backends), so that SQLite adds the
    # column in place; an expression default would make Alembic copy the table.
    op.add_column(
        "projects", sa.Column("personal", sa.Boolean(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    op.drop_column("projects", "personal")
