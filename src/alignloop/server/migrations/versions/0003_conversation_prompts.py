"""Conversational prompts: `prompts.messages`, a prompt's turns as JSON
([{"role", "content"}, ...]; NULL for a text prompt, so every stored prompt stays as
it was). See alignloop/server/models.py.

Downgrading drops the turns: a conversational prompt then keeps only its text, the
turns written as "role: content" paragraphs (`chat.prompt_display`).

Revision: 0003 (after 0002)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prompts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("messages", sa.JSON(), nullable=True))


def downgrade() -> None:
    # In place (ALTER TABLE ... DROP COLUMN, SQLite 3.35+), not by batch mode's copy
    # of the table: on SQLite, with foreign keys on, dropping the old `prompts` table
    # deletes by ON DELETE CASCADE every completion, assignment and ranking.
    op.drop_column("prompts", "messages")
