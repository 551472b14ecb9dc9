"""Rankings a labeler can change: `rankings.version` and the replaced versions in
`ranking_revisions` (see alignloop/server/models.py).

Revision: 0002 (after 0001)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rankings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))
    op.create_table(
        "ranking_revisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ranking_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("unrankable", sa.Boolean(), nullable=False),
        sa.Column("flagged_unsafe", sa.Boolean(), nullable=False),
        sa.Column("rationale", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("replaced_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ranking_id"],
            ["rankings.id"],
            name=op.f("fk_ranking_revisions_ranking_id_rankings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ranking_revisions")),
        sa.UniqueConstraint(
            "ranking_id", "version", name=op.f("uq_ranking_revisions_ranking_id_version")
        ),
    )


def downgrade() -> None:
    op.drop_table("ranking_revisions")
    with op.batch_alter_table("rankings", schema=None) as batch_op:
        batch_op.drop_column("version")
