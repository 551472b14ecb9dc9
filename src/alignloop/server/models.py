"""The labeling server's tables (SQLAlchemy 2 declarative models).

    projects ─┬─ guidelines (one row per version: the SHA-256 of the Markdown)
              ├─ prompts ── completions          (gold prompts carry gold_rankings)
              └─ assignments (labeler x prompt) ── rankings (one per criterion)
                                                     └─ ranking_revisions (replaced versions)
    labelers ─┬─ acknowledgements (labeler x guidelines version)
              └─ sessions (browser sign-ins)

Invariants the database itself keeps, whatever the code does:
- a labeler is assigned a prompt at most once: UNIQUE (labeler_id, prompt_id);
- an assignment holds at most one ranking per criterion: UNIQUE (assignment_id,
  criterion), so a retried or double-clicked submission can never add a second row;
- tokens and session ids are stored only as SHA-256 hex digests (UNIQUE).

A personal project (`projects.personal`, "my own preferences") hands every prompt to
every labeler who opens it, each ranking for themself: its rankings keep their
labeler, and one labeler's pairs fit that labeler's weights (`alignloop personal fit`).

Times are naive UTC datetimes (SQLite has no time zones; both backends store the same).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Acknowledgement",
    "Assignment",
    "Base",
    "CompletionRow",
    "GoldRanking",
    "Guidelines",
    "Labeler",
    "Project",
    "PromptRow",
    "RankingRevision",
    "RankingRow",
    "WebSession",
    "utcnow",
]

# Named constraints, so that migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PENDING, DONE, SKIPPED, EXPIRED = "pending", "done", "skipped", "expired"
STATUSES = (PENDING, DONE, SKIPPED, EXPIRED)


def utcnow() -> dt.datetime:
    """Now, as the naive UTC datetime the tables store."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (
        CheckConstraint("overlap >= 1", name="overlap_positive"),
        CheckConstraint("gold_rate >= 0 AND gold_rate < 1", name="gold_rate_range"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    criteria: Mapped[list[Any]]  # ["helpfulness", "harmlessness"]
    overlap: Mapped[int] = mapped_column(Integer)  # distinct labelers per (non-gold) prompt
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)  # share of tasks that are gold
    assignment_ttl_s: Mapped[int] = mapped_column(Integer)  # a pending task expires after this
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # "My own preferences" (issue 16): every labeler ranks every item for themself, and
    # their rankings fit their own weights. No overlap cap (`overlap` is stored as 1 and
    # unused), no gold items, no agreement: each ranks by their own taste.
    personal: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")

    guidelines: Mapped[list[Guidelines]] = relationship(
        back_populates="project", order_by="Guidelines.id"
    )


class Guidelines(Base):
    """One version of a project's guidelines; the newest row is the current one."""

    __tablename__ = "guidelines"
    __table_args__ = (UniqueConstraint("project_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(64))  # SHA-256 hex of the Markdown
    markdown: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    project: Mapped[Project] = relationship(back_populates="guidelines")


class PromptRow(Base):
    __tablename__ = "prompts"
    __table_args__ = (
        UniqueConstraint("project_id", "external_id"),
        Index("ix_prompts_project_gold", "project_id", "is_gold"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(200))  # the id in the prompts file
    # A text prompt as it is; a conversation as `chat.prompt_display` writes it ("role:
    # content" paragraphs), what the admin pages show and search, while `messages`
    # holds its turns as the file gave them ([{"role", "content"}, ...]; NULL for a
    # text prompt), what the labeling page shows and the exports give back.
    text: Mapped[str] = mapped_column(Text)
    messages: Mapped[list[Any] | None] = mapped_column(JSON)
    reference: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)

    completions: Mapped[list[CompletionRow]] = relationship(order_by="CompletionRow.id")


class CompletionRow(Base):
    """A completion; labelers see only `public_id` (random) and the text, never the
    file's id or the policy that wrote it."""

    __tablename__ = "completions"
    __table_args__ = (UniqueConstraint("project_id", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(200))  # the id in the completions file
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    text: Mapped[str] = mapped_column(Text)
    policy: Mapped[str | None] = mapped_column(String(200))


class GoldRanking(Base):
    """The known ranking of a gold prompt under one criterion."""

    __tablename__ = "gold_rankings"
    __table_args__ = (UniqueConstraint("prompt_id", "criterion"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    criterion: Mapped[str] = mapped_column(String(100))
    groups: Mapped[list[Any]]  # [[completion external id, ...], ...] best first


class Labeler(Base):
    __tablename__ = "labelers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 hex
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Acknowledgement(Base):
    """A labeler has read one version of a project's guidelines."""

    __tablename__ = "acknowledgements"

    labeler_id: Mapped[int] = mapped_column(
        ForeignKey("labelers.id", ondelete="CASCADE"), primary_key=True
    )
    guidelines_id: Mapped[int] = mapped_column(
        ForeignKey("guidelines.id", ondelete="CASCADE"), primary_key=True
    )
    acknowledged_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Assignment(Base):
    """A prompt given to a labeler: pending until ranked under every criterion (done),
    skipped by the labeler, or expired (its slot went back to the pool)."""

    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("labeler_id", "prompt_id"),
        CheckConstraint(f"status IN {STATUSES}", name="status_known"),
        Index("ix_assignments_prompt_status", "prompt_id", "status"),
        Index("ix_assignments_labeler_project", "labeler_id", "project_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"))
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    prompt: Mapped[PromptRow] = relationship()
    labeler: Mapped[Labeler] = relationship()
    project: Mapped[Project] = relationship()
    rankings: Mapped[list[RankingRow]] = relationship(
        back_populates="assignment", order_by="RankingRow.id"
    )


class RankingRow(Base):
    """One submitted ranking, in its current version: completion ids of the files
    (not the public ids), best group first, ties inside a group. A labeler who
    changes it makes a new version here; the earlier ones move to
    `ranking_revisions` (so exports read the current version, and nothing is lost)."""

    __tablename__ = "rankings"
    __table_args__ = (UniqueConstraint("assignment_id", "criterion"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"))
    criterion: Mapped[str] = mapped_column(String(100))
    groups: Mapped[list[Any]]
    unrankable: Mapped[bool] = mapped_column(Boolean, default=False)
    flagged_unsafe: Mapped[bool] = mapped_column(Boolean, default=False)
    rationale: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)  # this version's
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # 1, 2, ...

    assignment: Mapped[Assignment] = relationship(back_populates="rankings")
    revisions: Mapped[list[RankingRevision]] = relationship(
        back_populates="ranking", order_by="RankingRevision.version"
    )


class RankingRevision(Base):
    """An earlier version of a ranking, kept when its labeler replaced it."""

    __tablename__ = "ranking_revisions"
    __table_args__ = (UniqueConstraint("ranking_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ranking_id: Mapped[int] = mapped_column(ForeignKey("rankings.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    groups: Mapped[list[Any]]
    unrankable: Mapped[bool] = mapped_column(Boolean)
    flagged_unsafe: Mapped[bool] = mapped_column(Boolean)
    rationale: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)  # when this version was made
    replaced_at: Mapped[dt.datetime] = mapped_column(DateTime)

    ranking: Mapped[RankingRow] = relationship(back_populates="revisions")


class WebSession(Base):
    """A browser sign-in: the cookie holds a random id, the table its SHA-256."""

    __tablename__ = "sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    labeler_id: Mapped[int] = mapped_column(
        ForeignKey("labelers.id", ondelete="CASCADE"), index=True
    )
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)

    labeler: Mapped[Labeler] = relationship()
