"""A run's logs and outbox events one bounded page at a time (keyset cursors).

What the HTTP API's ``/logs`` and ``/events`` and the viewer's log section read: a run with
thousands of log lines is served in pages of at most :data:`MAX_PAGE_SIZE`, each query an index
range scan from where the previous page ended.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_, select

from engine.core.annotations import text_problem
from engine.core.records import LogRecord, OutboxEventRecord
from engine.errors import AnnotationError, RunNotFoundError
from engine.store.annotation_rows import decode_cursor, encode_cursor
from engine.store.models import OutboxEvent, WorkflowLog, WorkflowRun, log_record
from engine.store.sql_store import SqlStore

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "InvalidPageError",
    "Page",
    "check_limit",
    "list_events_page",
    "list_logs_page",
]

DEFAULT_PAGE_SIZE = 200
"""Rows per page when the caller names no limit."""
MAX_PAGE_SIZE = 1000
"""The most rows one page holds."""

T = TypeVar("T")


class InvalidPageError(ValueError):
    """A limit out of range or a cursor that was not handed out (or was altered)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field
        """``limit`` or ``cursor``."""


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page, oldest first; pass ``next_cursor`` back for the next (``None``: the last)."""

    items: list[T]
    next_cursor: str | None


def check_limit(limit: int, maximum: int = MAX_PAGE_SIZE) -> int:
    """``limit`` if it is between 1 and ``maximum``.

    Raises:
        InvalidPageError: it is not.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise InvalidPageError(f"limit must be between 1 and {maximum}, got {limit}", field="limit")
    return limit


def _check_id(run_id: str) -> None:
    """Ids no backend can compare (NUL, lone surrogates) name no run: answered as unknown."""
    if not isinstance(run_id, str) or text_problem(run_id) is not None:
        raise RunNotFoundError(f"Run {run_id!r} not found", workflow_run_id=None)


async def _check_run(store: SqlStore, run_id: str) -> None:
    query = select(WorkflowRun.id).where(WorkflowRun.id == run_id)
    found = await store._read(lambda session: session.scalar(query))
    if found is None:
        raise RunNotFoundError(f"Run {run_id} not found", workflow_run_id=run_id)


async def _page_rows(
    store: SqlStore, run_id: str, query: Select[Any], limit: int
) -> tuple[list[Any], bool]:
    """Up to ``limit`` rows of the run's ordered ``query``, and whether more follow.

    An empty page is checked to belong to a run that exists (else RunNotFoundError).
    """
    rows = list(await store._read(lambda session: session.scalars(query.limit(limit + 1)).all()))
    if not rows:
        await _check_run(store, run_id)
    return rows[:limit], len(rows) > limit


async def list_logs_page(
    store: SqlStore, run_id: str, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
) -> Page[LogRecord]:
    """One page of the run's log lines, oldest first (then by id).

    Raises:
        InvalidPageError: a limit out of range or an invalid cursor.
        RunNotFoundError: no such run.
    """
    check_limit(limit)
    _check_id(run_id)
    log = WorkflowLog
    query = select(log).where(log.workflow_run_id == run_id)
    if cursor is not None:
        try:
            after_at, after_id = decode_cursor(cursor)
        except AnnotationError:
            raise InvalidPageError("invalid cursor", field="cursor") from None
        query = query.where(
            or_(log.created_at > after_at, and_(log.created_at == after_at, log.id > after_id))
        )
    rows, more = await _page_rows(store, run_id, query.order_by(log.created_at, log.id), limit)
    items = [log_record(r) for r in rows]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
    return Page(items=items, next_cursor=next_cursor)


def _encode_sequence(sequence: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after_sequence": sequence}).encode()).decode()


def _decode_sequence(cursor: str) -> int:
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode()))["after_sequence"]
    except (ValueError, TypeError, KeyError):
        raise InvalidPageError("invalid cursor", field="cursor") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise InvalidPageError("invalid cursor", field="cursor")
    return value


async def list_events_page(
    store: SqlStore, run_id: str, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
) -> Page[OutboxEventRecord]:
    """One page of the run's outbox events in sequence order, published or not.

    Raises:
        InvalidPageError: a limit out of range or an invalid cursor.
        RunNotFoundError: no such run.
    """
    check_limit(limit)
    _check_id(run_id)
    event = OutboxEvent
    query = select(event).where(event.workflow_run_id == run_id)
    if cursor is not None:
        query = query.where(event.sequence > _decode_sequence(cursor))
    rows, more = await _page_rows(store, run_id, query.order_by(event.sequence), limit)
    next_cursor = _encode_sequence(rows[-1].sequence) if more else None
    return Page(items=[OutboxEventRecord.model_validate(r) for r in rows], next_cursor=next_cursor)
