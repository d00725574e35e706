"""Listing runs with filters (workflow, status, creation time, annotations), newest first.

What the HTTP API's ``GET /api/runs`` and the viewer's runs page read. Annotation filters
compare values exactly as ``kernel.annotations.count_runs`` does (through the typed, indexed
columns), so a listing filtered by ``decision.outcome = "low"`` holds the runs that
``count_runs("decision.outcome", "low")`` counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select

from engine.core.records import RunRecord, RunStatus
from engine.errors import AnnotationError, InvalidCursorError
from engine.store.annotation_rows import decode_cursor, encode_cursor, value_clause
from engine.store.models import WorkflowAnnotation, WorkflowRun, run_record
from engine.store.sql_store import SqlStore

__all__ = [
    "MAX_PAGE_SIZE",
    "InvalidCursorError",
    "RunFilters",
    "RunPage",
    "list_runs",
    "list_workflow_ids",
]

MAX_PAGE_SIZE = 1000
"""Largest page :func:`list_runs` returns."""


@dataclass(frozen=True)
class RunFilters:
    """Which runs to list; every given filter must hold (AND)."""

    workflow_id: str | None = None
    statuses: Sequence[RunStatus] = ()
    """Any of these statuses (empty: any status)."""
    created_after: datetime | None = None
    """Runs created at or after this moment (timezone-aware)."""
    created_before: datetime | None = None
    """Runs created strictly before this moment (timezone-aware)."""
    annotations: Mapping[str, Any] = field(default_factory=dict)
    """Runs carrying an annotation ``key = value`` for every pair (strings, numbers and
    booleans compare by type, as in ``count_runs``)."""


@dataclass(frozen=True)
class RunPage:
    """One page of runs, newest first; pass ``next_cursor`` back for the next page."""

    items: list[RunRecord]
    next_cursor: str | None


async def list_runs(
    store: SqlStore, filters: RunFilters, *, limit: int = 100, cursor: str | None = None
) -> RunPage:
    """One page of the runs matching ``filters``, newest first (then by id, descending).

    Args:
        store: The side-store.
        filters: Which runs.
        limit: Page size, 1 to :data:`MAX_PAGE_SIZE`.
        cursor: ``next_cursor`` of the previous page.

    Raises:
        ValueError: ``limit`` is out of range.
        InvalidCursorError: ``cursor`` was not handed out by this function.
        AnnotationError: an annotation filter value is not a string, number or boolean.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    run = WorkflowRun
    query = select(run)
    if filters.workflow_id is not None:
        query = query.where(run.workflow_id == filters.workflow_id)
    if filters.statuses:
        query = query.where(run.status.in_([str(status) for status in filters.statuses]))
    if filters.created_after is not None:
        query = query.where(run.created_at >= filters.created_after)
    if filters.created_before is not None:
        query = query.where(run.created_at < filters.created_before)
    for key, value in filters.annotations.items():
        carrying = select(WorkflowAnnotation.workflow_run_id).where(
            WorkflowAnnotation.key == key, value_clause(value)
        )
        query = query.where(run.id.in_(carrying))
    if cursor is not None:
        try:
            after_at, after_id = decode_cursor(cursor)
        except AnnotationError:
            raise InvalidCursorError(f"invalid cursor {cursor[:40]!r}") from None
        query = query.where(
            or_(run.created_at < after_at, and_(run.created_at == after_at, run.id < after_id))
        )
    query = query.order_by(run.created_at.desc(), run.id.desc()).limit(limit)
    rows = await store._read(lambda session: session.scalars(query).all())
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if len(rows) == limit else None
    return RunPage(items=[run_record(row) for row in rows], next_cursor=next_cursor)


async def list_workflow_ids(store: SqlStore, *, limit: int = 200) -> list[str]:
    """The distinct workflow ids that have runs, sorted (the viewer's filter offers them)."""
    query = select(WorkflowRun.workflow_id).distinct().order_by(WorkflowRun.workflow_id)
    return list(await store._read(lambda session: session.scalars(query.limit(limit)).all()))
