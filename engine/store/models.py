"""SQLAlchemy ORM models of the side-store: the tables users query beside the Temporal UI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from engine.core import clock
from engine.core.records import LogRecord, RunRecord, RunStatus

__all__ = [
    "AI_CALLS",
    "ANNOTATIONS",
    "CHAIN_LINKS",
    "IDEMPOTENCY_KEYS",
    "LOGS",
    "OUTBOX",
    "RUNS",
    "RUN_COLUMNS",
    "RUN_FIELDS",
    "STAGES",
    "AICall",
    "Base",
    "ChainLink",
    "IdempotencyKey",
    "OutboxEvent",
    "PluginDelivery",
    "WorkflowAnnotation",
    "WorkflowArtifact",
    "WorkflowLog",
    "WorkflowRun",
    "WorkflowStage",
    "run_record",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: pass a timezone-aware value")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONValue = JSON().with_variant(JSONB(), "postgresql")


class JSONText(TypeDecorator[Any]):
    """A JSON value kept as TEXT (SQLite's annotation columns).

    SQLite gives a column declared ``JSON`` NUMERIC affinity, which converts a top-level JSON
    number on storage: ``1.0`` came back as ``1`` and integers past 2**63 as lossy floats.
    Declared TEXT, the JSON text is kept as written and read back exactly.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        # None is the JSON ``null`` (as the JSON type stores it), not SQL NULL.
        return json.dumps(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


# Annotation values are any JSON, top-level numbers included: exact on both backends.
AnnotationJSON = JSON().with_variant(JSONB(), "postgresql").with_variant(JSONText(), "sqlite")
# Byte-order collation on PostgreSQL so that a key prefix is an index range scan, as on SQLite.
AnnotationKey = String(255).with_variant(String(255, collation="C"), "postgresql")


def utcnow() -> datetime:
    """Wall-clock now in UTC, for columns the activities stamp (see :mod:`engine.core.clock`)."""
    return clock.now()


class Base(DeclarativeBase):
    """Declarative base carrying the constraint naming convention Alembic relies on."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONValue,
        Any: JSONValue,
    }


class WorkflowRun(Base):
    """One execution of a workflow for one input."""

    __tablename__ = "workflow_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Indexed: listing runs (the viewer, `wfe run list`) is newest first.
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)
    workflow_id: Mapped[str] = mapped_column(String(255), index=True)
    workflow_name: Mapped[str] = mapped_column(String(255))
    workflow_type: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.PENDING.value, index=True)
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    execution_started_at: Mapped[datetime | None]
    """Start of the last execution when a rerun made one (NULL: ``started_at``)."""
    execution_duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    input: Mapped[Any] = mapped_column(JSONValue)
    output: Mapped[Any | None] = mapped_column(JSONValue)
    config: Mapped[dict[str, Any]] = mapped_column(JSONValue, default=dict)
    total_cost: Mapped[float] = mapped_column(Float, default=0.0)
    total_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONValue)
    temporal_workflow_id: Mapped[str | None] = mapped_column(String(255))
    """Id of the Temporal workflow execution currently driving the run (changes on rerun)."""
    chain_head: Mapped[str | None] = mapped_column(String(64))
    """Hash of the run's last record link (:mod:`engine.store.chain`)."""
    chain_length: Mapped[int] = mapped_column(Integer, default=0)


class WorkflowStage(Base):
    """One stage of one run."""

    __tablename__ = "workflow_stages"
    __table_args__ = (
        # Its leading column serves every read by run and the foreign key's cascade.
        UniqueConstraint("workflow_run_id", "stage_id"),
        # The approvals inbox; only waiting records take an entry. Each index costs every stage
        # commit a write or two, so none is kept that no query uses (migration 0014).
        Index(
            None,
            "status",
            "waiting_since",
            postgresql_where=text("waiting_since IS NOT NULL"),
            sqlite_where=text("waiting_since IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)
    workflow_run_id: Mapped[str] = mapped_column(ForeignKey("workflow_runs.id", ondelete="CASCADE"))
    stage_id: Mapped[str] = mapped_column(String(255))
    stage_name: Mapped[str] = mapped_column(String(255))
    stage_number: Mapped[int] = mapped_column(Integer)
    execution_group: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.PENDING.value)
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    input_data: Mapped[Any | None] = mapped_column(JSONValue)
    resume_data: Mapped[Any | None] = mapped_column(JSONValue)
    output_data: Mapped[Any | None] = mapped_column(JSONValue)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    suspended_state: Mapped[Any | None] = mapped_column(JSONValue)
    next_poll_at: Mapped[datetime | None]
    poll_interval_ms: Mapped[int | None] = mapped_column(BigInteger)
    max_wait_until: Mapped[datetime | None]
    poll_count: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    embedding_info: Mapped[Any | None] = mapped_column(JSONValue)
    error_message: Mapped[str | None] = mapped_column(Text)
    waiting_for: Mapped[str | None] = mapped_column(String(255))
    """Whom a waiting approval stage asked (``requested_from``; ``None``: anyone)."""
    waiting_since: Mapped[datetime | None]
    """When an approval stage began waiting; the approvals inbox orders by it."""
    copied_from: Mapped[str | None] = mapped_column(String(64))
    """In a forked run: the id of the source run's record this one was copied from."""


class WorkflowLog(Base):
    """A log line written by a stage."""

    __tablename__ = "workflow_logs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    workflow_run_id: Mapped[str | None] = mapped_column(
        ForeignKey("workflow_runs.id", ondelete="CASCADE"), index=True
    )
    workflow_stage_id: Mapped[str | None] = mapped_column(
        ForeignKey("workflow_stages.id", ondelete="CASCADE"), index=True
    )
    stage_id: Mapped[str | None] = mapped_column(String(255))
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONValue)


class WorkflowArtifact(Base):
    """A stored blob of a run (stage artifacts and large outputs)."""

    __tablename__ = "workflow_artifacts"
    __table_args__ = (UniqueConstraint("workflow_run_id", "key"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    workflow_run_id: Mapped[str] = mapped_column(
        ForeignKey("workflow_runs.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(String(512))
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[Any] = mapped_column(JSONValue)
    size: Mapped[int] = mapped_column(BigInteger)


class WorkflowAnnotation(Base):
    """One provenance attribute; append-only.

    ``value`` keeps the JSON value as given; ``value_text``, ``value_number`` and
    ``value_bool`` hold it again, typed, so cross-run queries by key and value are index scans.
    """

    __tablename__ = "workflow_annotations"
    __table_args__ = (
        UniqueConstraint("workflow_run_id", "key", "idempotency_key"),
        Index(None, "workflow_run_id", "key"),
        Index(None, "workflow_run_id", "created_at"),
        Index(None, "workflow_run_id", "scope"),
        Index(None, "workflow_run_id", "actor_id"),
        # The run id rides along (PostgreSQL's INCLUDE): count_runs reads only the index.
        # Without it, counting the runs with decision.outcome = "low" over 10M rows fetched
        # every matching row from the heap (556 ms p50 in bench-scale; revision 0013).
        Index(None, "key", "value_text", "created_at", postgresql_include=["workflow_run_id"]),
        Index(None, "key", "value_number", "created_at", postgresql_include=["workflow_run_id"]),
        Index(None, "key", "value_bool", "created_at", postgresql_include=["workflow_run_id"]),
        # A rerun re-links its stages' annotations, and deleting a stage record sets theirs
        # to NULL: both look annotations up by stage record, in the biggest table.
        Index(None, "workflow_stage_record_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    workflow_run_id: Mapped[str] = mapped_column(ForeignKey("workflow_runs.id", ondelete="CASCADE"))
    workflow_stage_record_id: Mapped[str | None] = mapped_column(
        ForeignKey("workflow_stages.id", ondelete="SET NULL")
    )
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    scope: Mapped[str] = mapped_column(String(64))
    scope_id: Mapped[str | None] = mapped_column(String(255))
    actor_kind: Mapped[str | None] = mapped_column(String(64))
    actor_id: Mapped[str | None] = mapped_column(String(255))
    actor_version: Mapped[str | None] = mapped_column(String(255))
    # Who the actor says it acted for (an API caller's body actor): never the writer itself.
    on_behalf_of_kind: Mapped[str | None] = mapped_column(String(64))
    on_behalf_of_id: Mapped[str | None] = mapped_column(String(255))
    on_behalf_of_version: Mapped[str | None] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(AnnotationKey)
    value: Mapped[Any] = mapped_column(AnnotationJSON)
    value_text: Mapped[str | None] = mapped_column(String(1024))
    value_number: Mapped[float | None] = mapped_column(Float)
    value_bool: Mapped[bool | None] = mapped_column(Boolean)
    payload: Mapped[Any | None] = mapped_column(AnnotationJSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    stage_record_ref: Mapped[str | None] = mapped_column(String(64))
    """The stage record that produced the row, kept when a rerun deleted that record."""


class ChainLink(Base):
    """One link of a run's tamper-evident record chain (:mod:`engine.store.chain`).

    ``body`` is the canonical JSON the hash covers when the record it stands for changes
    later (a stage's outcome: its record moves on) or goes (a rerun's deletions); it is NULL
    for a record that never changes (the run's identity, an annotation), whose canonical JSON
    is recomputed from the record itself.
    """

    __tablename__ = "workflow_chain_links"
    # Its rows in the primary key's b-tree on SQLite, not in a rowid table beside it: one
    # b-tree written per link (revision 0012).
    __table_args__ = {"sqlite_with_rowid": False}

    # No foreign key: links go in under the run's row lock, so the run exists; the key
    # only added a check per link (revision 0012).
    workflow_run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    record_id: Mapped[str] = mapped_column(String(64))
    body: Mapped[str | None] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(String(64))


class OutboxEvent(Base):
    """An event written in the same transaction as the change it reports."""

    __tablename__ = "outbox_events"
    __table_args__ = (UniqueConstraint("workflow_run_id", "sequence"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    workflow_run_id: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONValue)
    causation_id: Mapped[str] = mapped_column(String(255))
    occurred_at: Mapped[datetime]
    published_at: Mapped[datetime | None] = mapped_column(index=True)
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    dlq_at: Mapped[datetime | None]


class IdempotencyKey(Base):
    """A claimed idempotency key and the result of the command that claimed it."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("key", "command_type"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    key: Mapped[str] = mapped_column(String(255))
    command_type: Mapped[str] = mapped_column(String(64))
    result: Mapped[Any] = mapped_column(JSONValue)


class AICall(Base):
    """One recorded call to a language model, with its cost."""

    __tablename__ = "ai_calls"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    workflow_run_id: Mapped[str | None] = mapped_column(String(64), index=True)
    stage_id: Mapped[str | None] = mapped_column(String(255))
    topic: Mapped[str] = mapped_column(String(255))
    call_type: Mapped[str] = mapped_column(String(64))
    model_key: Mapped[str] = mapped_column(String(255))
    model_id: Mapped[str] = mapped_column(String(255))
    prompt: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONValue)


class PluginDelivery(Base):
    """One plugin's successful handling of one outbox event.

    A retried event skips the plugins listed here. No foreign key to ``outbox_events``: the
    relay holds the event row locked (PostgreSQL) while plugins record their deliveries from
    another connection, and a key-share lock would wait for it.
    """

    __tablename__ = "plugin_deliveries"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    plugin_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    delivered_at: Mapped[datetime] = mapped_column(default=utcnow)


# The tables as SQLAlchemy Core sees them, for the store's prebuilt statements.
RUNS: Table = WorkflowRun.__table__  # type: ignore[assignment]
STAGES: Table = WorkflowStage.__table__  # type: ignore[assignment]
LOGS: Table = WorkflowLog.__table__  # type: ignore[assignment]
ANNOTATIONS: Table = WorkflowAnnotation.__table__  # type: ignore[assignment]
CHAIN_LINKS: Table = ChainLink.__table__  # type: ignore[assignment]
OUTBOX: Table = OutboxEvent.__table__  # type: ignore[assignment]
IDEMPOTENCY_KEYS: Table = IdempotencyKey.__table__  # type: ignore[assignment]
AI_CALLS: Table = AICall.__table__  # type: ignore[assignment]


def log_record(row: WorkflowLog) -> LogRecord:
    """The public record of a log row (``metadata_`` as ``metadata``, as for runs)."""
    return LogRecord(
        id=row.id,
        created_at=row.created_at,
        workflow_run_id=row.workflow_run_id,
        stage_id=row.stage_id,
        level=row.level,
        message=row.message,
        metadata=row.metadata_,
    )


RUN_FIELDS = tuple(RunRecord.model_fields)
RUN_COLUMNS = tuple(RUNS.c[name] for name in RUN_FIELDS)
"""The columns of a run's record, in :data:`RUN_FIELDS` order (``metadata`` is a column's name)."""


def run_record(row: WorkflowRun | Sequence[Any]) -> RunRecord:
    """The public record of a run (every read of runs returns these).

    From an ORM row, or from the values of :data:`RUN_COLUMNS` (a Core read skips the ORM's
    identity map, which the hottest read, ``get_run`` in every ``wait_for_run``, does not need).
    """
    if isinstance(row, WorkflowRun):
        # The ORM attribute is ``metadata_`` (``metadata`` is SQLAlchemy's own on mapped classes).
        row = [getattr(row, "metadata_" if name == "metadata" else name) for name in RUN_FIELDS]
    return RunRecord.model_validate(dict(zip(RUN_FIELDS, row, strict=True)))
