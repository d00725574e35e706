"""Small SQL building blocks shared by the store modules."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import FromClause, Insert, bindparam, func, literal, select, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from engine.core.ids import new_id
from engine.store import direct
from engine.store.models import OUTBOX, RUNS, WorkflowRun

__all__ = [
    "LAST_SEQUENCE",
    "event_rows",
    "append_events",
    "event_payload",
    "insert_ignore",
    "lock_run",
    "lock_run_status",
]


# The statements every stage commit runs, built once: building a statement (coercions, cache
# key) costs more CPU than SQLite takes to run it.
_RUN_STATUS = select(RUNS.c.status).where(RUNS.c.id == bindparam("run_id"))
_LOCKED_RUN_STATUS = _RUN_STATUS.with_for_update()
LAST_SEQUENCE = (
    select(func.coalesce(func.max(OUTBOX.c.sequence), 0))
    .where(OUTBOX.c.workflow_run_id == bindparam("run_id"))
    .scalar_subquery()
)

EVENTS_PER_STATEMENT = 16
"""Events written by one ``INSERT`` that reads the run's last sequence itself."""


def insert_ignore(session: Session | AsyncSession, table: FromClause) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` for the session's dialect (both support it)."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    return _insert_ignore(dialect, table)


@cache
def _insert_ignore(dialect: str, table: FromClause) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing()  # type: ignore[arg-type]


def lock_run(session: Session, run_id: str) -> WorkflowRun | None:
    """Read the run row under a row lock (``FOR UPDATE``; SQLite already holds the write lock).

    Every write that depends on the run's status takes this lock first, so a cancel and a
    stage commit cannot interleave, and outbox sequences per run are handed out one at a time.
    """
    result = session.execute(select(WorkflowRun).where(WorkflowRun.id == run_id).with_for_update())
    return result.scalar_one_or_none()


def lock_run_status(session: Session, run_id: str, *, lock: bool = True) -> str | None:
    """The run's status read under its row lock (as :func:`lock_run`), loading nothing else.

    Stage writes need only the status; loading the whole row would decode the run's input,
    config and output JSON on every stage. ``lock=False`` reads it without the lock.
    """
    query = _LOCKED_RUN_STATUS if lock else _RUN_STATUS
    rows = direct.execute(session.connection(), query, {"run_id": run_id})
    return rows[0][0] if rows else None


def append_events(
    session: Session,
    run_id: str,
    events: list[tuple[str, dict[str, Any]]],
    *,
    causation_id: str,
    now: datetime,
) -> None:
    """Write outbox events with the run's next gap-free sequence numbers.

    The caller must hold the run's lock (:func:`lock_run`) or have just created the run. The
    insert reads the run's last sequence itself (:func:`_numbered_insert`), which saves a
    round trip per commit. That read is as safe as a separate ``SELECT``: every writer of a
    run's events holds the run's lock until it commits, and a statement begun after this
    transaction took the lock sees everything they wrote.
    """
    connection = session.connection()
    rows = event_rows(run_id, events, causation_id=causation_id, now=now)
    for start in range(0, len(rows), EVENTS_PER_STATEMENT):
        chunk = rows[start : start + EVENTS_PER_STATEMENT]
        params: dict[str, Any] = {"run_id": run_id, "now": now, "causation_id": causation_id}
        for number, row in enumerate(chunk, start=1):
            params[f"id_{number}"] = row["id"]
            params[f"type_{number}"] = row["event_type"]
            params[f"payload_{number}"] = row["payload"]
        direct.execute(connection, _numbered_insert(len(chunk)), params)


def event_rows(
    run_id: str, events: list[tuple[str, dict[str, Any]]], *, causation_id: str, now: datetime
) -> list[dict[str, Any]]:
    """The outbox rows of ``events``: what both write paths insert.

    All columns but ``sequence``, which the inserting statement numbers after the run's last.
    """
    timestamp = now.isoformat()
    return [
        {
            "id": new_id(),
            "created_at": now,
            "workflow_run_id": run_id,
            "event_type": event_type,
            "payload": event_payload(run_id, event_type, body, timestamp),
            "causation_id": causation_id,
            "occurred_at": now,
            "retry_count": 0,
        }
        for event_type, body in events
    ]


def event_payload(
    run_id: str, event_type: str, body: dict[str, Any], timestamp: str
) -> dict[str, Any]:
    """The JSON an outbox event carries: its type, time and run, then its own fields."""
    return {"type": event_type, "timestamp": timestamp, "workflow_run_id": run_id, **body}


@cache
def _numbered_insert(count: int) -> Insert:
    """One ``INSERT … SELECT`` of ``count`` events numbered after the run's last sequence.

    The statement reads that sequence itself: one statement, one snapshot, so the rows get
    ``last + 1 … last + count`` whatever the backend (a second chunk sees the first).

    A ``SELECT … UNION ALL`` rather than a multi-row ``VALUES``: SQLAlchemy caches the
    compiled form of the former, and compiled the latter again on every call (about 2 ms of
    CPU for three events on PostgreSQL).
    """

    def param(name: str, column: str) -> Any:
        return bindparam(name, type_=OUTBOX.c[column].type).label(column)

    rows = [
        select(
            param(f"id_{number}", "id"),
            param("now", "created_at"),
            param("run_id", "workflow_run_id"),
            (LAST_SEQUENCE + number).label("sequence"),
            param(f"type_{number}", "event_type"),
            param(f"payload_{number}", "payload"),
            param("causation_id", "causation_id"),
            param("now", "occurred_at"),
            literal(0, type_=OUTBOX.c.retry_count.type).label("retry_count"),
        )
        for number in range(1, count + 1)
    ]
    source = rows[0] if count == 1 else union_all(*rows)
    names = [str(column.key) for column in rows[0].selected_columns]  # labelled as the columns
    return OUTBOX.insert().from_select(names, source)
