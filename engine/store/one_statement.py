"""A stage commit in one statement, on PostgreSQL: the common case in one round trip.

The general commit (:func:`engine.store.stage_rows.commit_stage`) is a transaction of a few
statements, each a round trip, plus ``BEGIN`` and ``COMMIT``: five round trips for a stage
that opens the next one. Every stage of a run waits for its commit, so on PostgreSQL those
round trips were most of the engine's cost per stage over plain Temporal (``bench/``).

Most commits need nothing back from the database but whether the outcome applied: a stage of
a sequential group that completes or fails, opening the next group, with annotations that
carry no idempotency key (their rows are all new). Every row such a commit writes is known
beforehand, so PostgreSQL can write them all in one autocommitted statement: the stage
``UPDATE`` (the same compare-and-set, with the run-status guard under the run's row lock) as
a ``WITH`` query, and each ``INSERT`` selecting its rows ``FROM`` it, so that a commit that
does not apply writes nothing at all. One statement is one transaction, so it is as atomic
as the general commit, with one round trip instead of five.

Anything else goes to the general commit, in its own transaction: a commit of another shape
(:func:`fits`), one that did not apply (a duplicate, a ghost, a cancelled run: the general
commit tells them apart), and one that hit a unique constraint. The last happens when the
next group's records exist already, or when a concurrent writer of the run's events (a
cancel, an external attach) committed between this statement's snapshot and its lock: the
outbox numbers would collide. The statement then wrote nothing, and the general commit,
which reads the sequence after taking the lock, does it right.

SQLite has no data-modifying ``WITH``; it runs the general commit, which costs it little
(no round trips: the database is in the process).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Select, Table, bindparam, cast, select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.expression import CTE

from engine.ids import new_id
from engine.payloads import CommitResult, StageCommit
from engine.store.annotation_rows import RowContext, draft_rows
from engine.store.models import WorkflowAnnotation
from engine.store.runs import annotation_events, stage_rows
from engine.store.sql import EVENTS_PER_STATEMENT, LAST_SEQUENCE, OUTBOX, event_payload
from engine.store.stage_rows import (
    LOGS,
    STAGES,
    decisions,
    new_stage,
    outcome_events,
    outcome_logs,
    outcome_update,
    stage_changes,
    started_event,
)

__all__ = ["commit_in_one_statement", "fits"]

ANNOTATIONS: Table = WorkflowAnnotation.__table__  # type: ignore[assignment]

Rows = list[dict[str, Any]]


def fits(commit: StageCommit) -> bool:
    """Whether every row ``commit`` writes is known before it runs (see the module doc)."""
    outcome = commit.outcome
    return (
        outcome.status in ("completed", "failed")
        and outcome.stage_record_id is not None
        and commit.group_size == 1
        and not commit.after_suspend
        and not (outcome.status == "completed" and commit.completes_run)
        and not outcome.ai_calls
        and all(draft.idempotency_key is None for draft in outcome.annotations)
    )


@dataclass(frozen=True)
class _Rows:
    """One table's part of the statement: how many rows, with which columns."""

    table: str
    prefix: str
    columns: tuple[str, ...]
    count: int


@dataclass(frozen=True)
class _Shape:
    """What the statement's text depends on: the stage columns set, and the rows inserted."""

    changes: tuple[str, ...]
    inserts: tuple[_Rows, ...]


def commit_in_one_statement(connection: Connection, commit: StageCommit) -> CommitResult | None:
    """Apply ``commit`` in one statement on an autocommit ``connection``; ``None`` when it did
    not fit, did not apply, or collided, and wrote nothing: run the general commit then."""
    if not fits(commit):
        return None
    outcome, spec, now = commit.outcome, commit.stage, commit.now
    record_id = outcome.stage_record_id
    assert record_id is not None  # fits() checked it
    changes = stage_changes(commit)
    params: dict[str, Any] = {f"v_{name}": value for name, value in changes.items()}
    params.update(
        w_run_id=commit.run_id,
        w_stage_id=spec.stage_id,
        w_attempt=commit.attempt,
        w_poll_count=commit.poll_count,
        w_record_id=record_id,
        run_id=commit.run_id,
    )
    where = RowContext(
        commit.run_id, "stage", spec.stage_id, stage_record_id=record_id, attempt=commit.attempt
    )
    annotations = draft_rows(outcome.annotations, where, now)
    emitting = {
        row["id"]
        for draft, row in zip(outcome.annotations, annotations, strict=True)
        if draft.emit_event
    }
    events = outcome_events(commit, outcome.duration_ms)
    events.extend(annotation_events(annotations, emitting))
    opening = commit.open_next if outcome.status == "completed" else []
    stages = stage_rows(
        commit.run_id, [new_stage(s) for s in opening], commit.attempt, now, running=True
    )
    events.extend(started_event(s) for s in opening)
    if len(events) > EVENTS_PER_STATEMENT:
        return None
    timestamp = now.isoformat()
    event_rows = [
        {
            "id": new_id(),
            "created_at": now,
            "workflow_run_id": commit.run_id,
            "event_type": event_type,
            "payload": event_payload(commit.run_id, event_type, body, timestamp),
            "causation_id": commit.commit_id,
            "occurred_at": now,
            "retry_count": 0,
        }
        for event_type, body in events
    ]
    logs = outcome_logs(commit, record_id)
    inserts = []
    for table, prefix, rows in (
        (STAGES, "s", stages),
        (ANNOTATIONS, "a", annotations),
        (LOGS, "l", logs),
        (OUTBOX, "e", event_rows),
    ):
        for number, row in enumerate(rows):
            params.update({f"{prefix}{number}_{name}": value for name, value in row.items()})
        if rows:
            inserts.append(_Rows(table.name, prefix, tuple(rows[0]), len(rows)))
    shape = _Shape(tuple(changes), tuple(inserts))
    try:
        applied = connection.execute(_statement(shape), params).first()
    except IntegrityError:
        return None
    if applied is None:
        return None
    return CommitResult(
        committed=True,
        decisions=decisions(annotations, commit.report_keys),
        opened={str(row["stage_id"]): str(row["id"]) for row in stages},
    )


@lru_cache(maxsize=256)
def _statement(shape: _Shape) -> Select[tuple[str]]:
    """The statement for one shape, built once: building costs more than running it."""
    applied = (
        outcome_update(shape.changes, suspended=False)
        .where(STAGES.c.id == bindparam("w_record_id"))
        .cte("applied")
    )
    return select(applied.c.id).add_cte(*(_insert(rows, applied) for rows in shape.inserts))


def _insert(rows: _Rows, applied: CTE) -> CTE:
    """``INSERT`` of bound rows, each selected ``FROM applied``: rows only if the outcome
    applied. Outbox rows are numbered after the run's last sequence, in order."""
    table = _TABLES[rows.table]
    numbered = table is OUTBOX
    selects = []
    for number in range(rows.count):
        # Cast: PostgreSQL types a UNION's column from its first row, and a NULL there says
        # nothing (text), which a later row's boolean or number would then contradict.
        values: list[Any] = [
            cast(
                bindparam(f"{rows.prefix}{number}_{name}", type_=table.c[name].type),
                table.c[name].type,
            ).label(name)
            for name in rows.columns
        ]
        if numbered:
            values.append((LAST_SEQUENCE + number + 1).label("sequence"))
        selects.append(select(*values).select_from(applied))
    source = selects[0] if rows.count == 1 else union_all(*selects)
    columns = [*rows.columns, "sequence"] if numbered else list(rows.columns)
    return table.insert().from_select(columns, source).cte(f"{rows.prefix}_rows")


_TABLES: dict[str, Table] = {t.name: t for t in (STAGES, ANNOTATIONS, LOGS, OUTBOX)}
