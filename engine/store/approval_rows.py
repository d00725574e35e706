"""Approvals inbox reads: the approval stages waiting for a decision, across runs.

One range of the ``(status, waiting_since)`` index, oldest first, paged by a keyset cursor
(``waiting_since`` and the record id), so a page costs the same however deep it is; the
context a reviewer decides on (the run's ``trigger.*`` and latest ``decision.*`` annotations)
comes in one more query for the whole page.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from engine.core.records import RunStatus
from engine.errors import InvalidInputError
from engine.store.models import ANNOTATIONS, RUNS, STAGES

__all__ = ["CONTEXT_PREFIXES", "PendingFilters", "PendingRow", "decode_cursor", "pending_rows"]

CONTEXT_PREFIXES = ("trigger.", "decision.")
"""Annotation keys shown with a pending approval: why the run started, what it decided."""


@dataclass(frozen=True)
class PendingFilters:
    """What ``kernel.approvals.pending`` narrows the inbox to."""

    workflow_id: str | None = None
    requested_from: str | None = None
    waiting_before: datetime | None = None
    """Only stages waiting since before this moment (``waiting_longer_than``)."""
    after: tuple[datetime, str] | None = None
    """The cursor: the last (``waiting_since``, record id) of the previous page."""
    limit: int = 100


@dataclass(frozen=True)
class PendingRow:
    """One waiting approval stage and its run's context."""

    record_id: str
    workflow_run_id: str
    workflow_id: str
    stage_id: str
    stage_name: str
    requested_from: str | None
    waiting_since: datetime
    max_wait_until: datetime | None
    context: dict[str, Any]


def encode_cursor(waiting_since: datetime, record_id: str) -> str:
    """An opaque cursor after the given row."""
    raw = f"{waiting_since.isoformat()}|{record_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (``waiting_since``, record id) a cursor names; InvalidInputError if malformed."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        moment, _, record_id = base64.urlsafe_b64decode(padded).decode().partition("|")
        when = datetime.fromisoformat(moment)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInputError(f"invalid approvals cursor {cursor!r}") from None
    if not record_id or when.tzinfo is None:
        raise InvalidInputError(f"invalid approvals cursor {cursor!r}")
    return when, record_id


def pending_rows(session: Session, filters: PendingFilters) -> list[PendingRow]:
    """Up to ``filters.limit`` waiting approvals, oldest first, with their runs' context."""
    query = (
        select(
            STAGES.c.id,
            STAGES.c.workflow_run_id,
            RUNS.c.workflow_id,
            STAGES.c.stage_id,
            STAGES.c.stage_name,
            STAGES.c.waiting_for,
            STAGES.c.waiting_since,
            STAGES.c.max_wait_until,
        )
        .join(RUNS, RUNS.c.id == STAGES.c.workflow_run_id)
        .where(STAGES.c.status == RunStatus.SUSPENDED, STAGES.c.waiting_since.is_not(None))
        .order_by(STAGES.c.waiting_since, STAGES.c.id)
        .limit(filters.limit)
    )
    if filters.workflow_id is not None:
        query = query.where(RUNS.c.workflow_id == filters.workflow_id)
    if filters.requested_from is not None:
        query = query.where(STAGES.c.waiting_for == filters.requested_from)
    if filters.waiting_before is not None:
        query = query.where(STAGES.c.waiting_since <= filters.waiting_before)
    if filters.after is not None:
        since, record_id = filters.after
        query = query.where(
            or_(
                STAGES.c.waiting_since > since,
                and_(STAGES.c.waiting_since == since, STAGES.c.id > record_id),
            )
        )
    rows = session.execute(query).all()
    context = _context(session, sorted({row.workflow_run_id for row in rows}))
    return [
        PendingRow(
            record_id=row.id,
            workflow_run_id=row.workflow_run_id,
            workflow_id=row.workflow_id,
            stage_id=row.stage_id,
            stage_name=row.stage_name,
            requested_from=row.waiting_for,
            waiting_since=row.waiting_since,
            max_wait_until=row.max_wait_until,
            context=context.get(row.workflow_run_id, {}),
        )
        for row in rows
    ]


def _context(session: Session, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per run: the latest value of each ``trigger.*`` and ``decision.*`` key."""
    if not run_ids:
        return {}
    rows = session.execute(
        select(ANNOTATIONS.c.workflow_run_id, ANNOTATIONS.c.key, ANNOTATIONS.c.value)
        .where(
            ANNOTATIONS.c.workflow_run_id.in_(run_ids),
            or_(*(ANNOTATIONS.c.key.startswith(prefix) for prefix in CONTEXT_PREFIXES)),
        )
        .order_by(ANNOTATIONS.c.created_at, ANNOTATIONS.c.id)
    )
    context: dict[str, dict[str, Any]] = {}
    for row in rows:  # oldest first: a later value of a key replaces an earlier one
        context.setdefault(row.workflow_run_id, {})[row.key] = row.value
    return context
