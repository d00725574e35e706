"""Migrating deprecated run ``metadata`` into stored ``legacy.metadata.*`` annotations.

Until a run is migrated, ``kernel.annotations.list`` shows its metadata as virtual rows; once
any ``legacy.metadata.*`` row is stored for a run, the virtual rows disappear (all or
nothing). The migration therefore writes a run's whole set in one transaction, or nothing,
and skips runs that already have a stored ``legacy.metadata.*`` row, so it is safe to re-run
(``wfe annotations migrate-legacy``). The run's ``metadata`` column is left as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.core.annotations import AnnotationDraft, AnnotationLimits, build_drafts
from engine.errors import AnnotationError
from engine.store.annotation_rows import LEGACY_PREFIX, insert_annotations, prefix_upper_bound
from engine.store.contract import RowContext
from engine.store.models import WorkflowAnnotation, WorkflowRun
from engine.store.sql import lock_run

__all__ = ["LEGACY_IDEMPOTENCY_KEY", "legacy_drafts", "migrate_run", "runs_with_metadata"]

log = logging.getLogger(__name__)

LEGACY_IDEMPOTENCY_KEY = "legacy-metadata"
"""Idempotency key of migrated rows: a repeated migration of a run dedupes on it."""

# Legacy values were accepted without size limits: keep them whole. Keys must still fit the
# column, and NUL characters cannot be stored on PostgreSQL.
_LEGACY_LIMITS = AnnotationLimits(max_value_bytes=2**62, max_payload_bytes=2**62)


def legacy_drafts(metadata: dict[str, Any]) -> list[AnnotationDraft]:
    """One draft per top-level metadata key, value kept as is (``None`` included).

    ``None`` values are stored too (as JSON ``null``), so that the stored set is exactly what
    the virtual rows showed.

    Raises:
        AnnotationError: a key too long for the column, or a value that cannot be stored.
    """
    drafts = []
    for name, value in metadata.items():
        key = LEGACY_PREFIX + str(name)
        if value is None:
            build_drafts({key: True}, limits=_LEGACY_LIMITS)  # checks the key alone
            drafts.append(AnnotationDraft(key=key, value=None))
            continue
        drafts.extend(build_drafts({key: value}, limits=_LEGACY_LIMITS))
    return [
        draft.model_copy(update={"idempotency_key": LEGACY_IDEMPOTENCY_KEY}) for draft in drafts
    ]


def runs_with_metadata(
    session: Session, *, after: str | None, limit: int
) -> tuple[list[str], str | None]:
    """One batch of runs, by id: (ids of those whose metadata is a non-empty object, last id).

    The last id (``None`` when no run is left) is where the next batch starts.
    """
    query = select(WorkflowRun.id, WorkflowRun.metadata_).order_by(WorkflowRun.id).limit(limit)
    if after is not None:
        query = query.where(WorkflowRun.id > after)
    rows = (session.execute(query)).all()
    if not rows:
        return [], None
    wanted = [row[0] for row in rows if isinstance(row[1], dict) and row[1]]
    return wanted, rows[-1][0]


def _has_stored_legacy(session: Session, run_id: str) -> bool:
    found = session.scalar(
        select(WorkflowAnnotation.id)
        .where(
            WorkflowAnnotation.workflow_run_id == run_id,
            # A literal, case-sensitive range (LIKE ignores case on SQLite), as the shim reads.
            WorkflowAnnotation.key >= LEGACY_PREFIX,
            WorkflowAnnotation.key < prefix_upper_bound(LEGACY_PREFIX),
        )
        .limit(1)
    )
    return found is not None


def migrate_run(session: Session, run_id: str) -> bool:
    """Store one run's metadata as ``legacy.metadata.*`` rows in the caller's transaction.

    Returns:
        Whether rows were written; False when the run is gone, has no object metadata, was
        migrated already (any stored ``legacy.metadata.*`` row), or holds a key or value
        that cannot be stored (logged; the run keeps showing virtual rows).
    """
    run = lock_run(session, run_id)  # serializes with attach and concurrent migrations
    if run is None or not isinstance(run.metadata_, dict) or not run.metadata_:
        return False
    if _has_stored_legacy(session, run_id):
        return False
    try:
        drafts: Sequence[AnnotationDraft] = legacy_drafts(run.metadata_)
    except AnnotationError as exc:
        log.warning("legacy metadata of run %s not migrated: %s", run_id, exc)
        return False
    inserted = insert_annotations(session, drafts, RowContext(run_id, "run"), run.created_at)
    return bool(inserted)
