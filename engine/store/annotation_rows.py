"""Writing and reading annotation rows: dedupe on insert, list with filters, cross-run query."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from engine.core.annotations import AnnotationDraft, text_problem, typed_columns
from engine.core.ids import new_id
from engine.core.records import Annotation
from engine.errors import AnnotationError
from engine.store.chain import Link, append_links
from engine.store.contract import (
    AnnotationFilters,
    CrossRunFilters,
    RowContext,
)
from engine.store.models import ANNOTATIONS, WorkflowAnnotation, WorkflowRun
from engine.store.sql import insert_ignore

__all__ = [
    "AnnotationFilters",
    "LEGACY_PREFIX",
    "count_runs",
    "count_runs_query",
    "draft_rows",
    "insert_annotations",
    "insert_drafts",
    "list_annotations",
    "query_annotations",
]

LEGACY_PREFIX = "legacy.metadata."
MAX_QUERY_LIMIT = 1000


def insert_annotations(
    session: Session,
    drafts: Sequence[AnnotationDraft],
    where: RowContext,
    now: datetime,
) -> list[Annotation]:
    """Insert one row per draft, skipping (run, key, idempotency key) duplicates.

    Returns the rows actually inserted, in draft order; deduplicated drafts are left out so
    that callers emit ``annotation:created`` only for what was stored.
    """
    return [Annotation.model_validate(row) for _, row in insert_drafts(session, drafts, where, now)]


def draft_rows(
    drafts: Sequence[AnnotationDraft], where: RowContext, now: datetime
) -> list[dict[str, Any]]:
    """The rows (column values, fresh ids) that ``drafts`` become at ``where``."""
    rows: list[dict[str, Any]] = []
    for draft in drafts:
        text, number, flag = typed_columns(draft.value)
        rows.append(
            {
                "id": new_id(),
                "created_at": now,
                "workflow_run_id": where.run_id,
                "workflow_stage_record_id": where.stage_record_id,
                "attempt": where.attempt,
                "scope": where.scope,
                "scope_id": where.scope_id,
                "actor_kind": draft.actor.kind if draft.actor else None,
                "actor_id": draft.actor.id if draft.actor else None,
                "actor_version": draft.actor.version if draft.actor else None,
                "on_behalf_of_kind": draft.on_behalf_of.kind if draft.on_behalf_of else None,
                "on_behalf_of_id": draft.on_behalf_of.id if draft.on_behalf_of else None,
                "on_behalf_of_version": (
                    draft.on_behalf_of.version if draft.on_behalf_of else None
                ),
                "key": draft.key,
                "value": draft.value,
                "value_text": text,
                "value_number": number,
                "value_bool": flag,
                "payload": draft.payload,
                "idempotency_key": draft.idempotency_key,
            }
        )
    return rows


def insert_drafts(
    session: Session,
    drafts: Sequence[AnnotationDraft],
    where: RowContext,
    now: datetime,
    chain: Sequence[Link] = (),
) -> list[tuple[AnnotationDraft, dict[str, Any]]]:
    """Like :func:`insert_annotations`, pairing each inserted row with its draft.

    The row is its column values; the draft's ``emit_event`` says whether that row, and only that
    row, gets an event.

    The inserted rows get their links in the run's record chain, after ``chain`` (the links of
    what the caller wrote before them in this transaction), in one append.
    """
    pairs = _insert_drafts(session, drafts, where, now)
    append_links(session, where.run_id, chain, [row for _, row in pairs])
    return pairs


def _insert_drafts(
    session: Session,
    drafts: Sequence[AnnotationDraft],
    where: RowContext,
    now: datetime,
) -> list[tuple[AnnotationDraft, dict[str, Any]]]:
    if not drafts:
        return []
    rows = draft_rows(drafts, where, now)
    table = ANNOTATIONS
    # One multi-row INSERT … ON CONFLICT DO NOTHING RETURNING id for the whole batch
    # (executemany, sent as one statement by SQLAlchemy's insertmanyvalues; one statement per
    # row cost ~1 ms each). A (key, idempotency key) pair repeated within the batch is
    # dropped here first, keeping the first, as the unique constraint would have.
    seen: set[tuple[str, str]] = set()
    batch: list[dict[str, Any]] = []
    for row in rows:
        if row["idempotency_key"] is not None:
            pair = (row["key"], row["idempotency_key"])
            if pair in seen:
                continue
            seen.add(pair)
        batch.append(row)
    if all(row["idempotency_key"] is None for row in batch):
        # Nothing to deduplicate (ids are new): a plain batched insert, no RETURNING to read.
        session.execute(table.insert(), batch)
        return list(zip(drafts, rows, strict=True))
    result = session.execute(insert_ignore(session, table).returning(table.c.id), batch)
    inserted = set(result.scalars().all())
    return [(draft, row) for draft, row in zip(drafts, rows, strict=True) if row["id"] in inserted]


def prefix_upper_bound(prefix: str) -> str | None:
    r"""The smallest string greater than every string starting with ``prefix``.

    ``key >= prefix AND key < bound`` is a literal, case-sensitive prefix match that needs no
    LIKE escaping (``%``, ``_`` and ``\`` are ordinary characters) and is an index range scan
    on both backends (byte-order collation on PostgreSQL, BINARY on SQLite).
    """
    chars = list(prefix)
    while chars:
        last = ord(chars[-1])
        if last < 0x10FFFF:
            step = 0xE000 if last == 0xD7FF else last + 1  # skip the surrogate range
            chars[-1] = chr(step)
            return "".join(chars)
        chars.pop()
    return None


def _prefix_clause(prefix: str) -> Any:
    bound = prefix_upper_bound(prefix)
    clause = WorkflowAnnotation.key >= prefix
    return and_(clause, WorkflowAnnotation.key < bound) if bound is not None else clause


def _stored_query(run_id: str, filters: AnnotationFilters) -> Select[WorkflowAnnotation]:
    col = WorkflowAnnotation
    query = select(col).where(col.workflow_run_id == run_id)
    if filters.key is not None:
        query = query.where(col.key == filters.key)
    elif filters.key_prefix:
        query = query.where(_prefix_clause(filters.key_prefix))
    if filters.scope is not None:
        query = query.where(col.scope == filters.scope)
    if filters.scope_id is not None:
        query = query.where(col.scope_id == filters.scope_id)
    if filters.actor_id is not None:
        query = query.where(col.actor_id == filters.actor_id)
    if filters.actor_kind is not None:
        query = query.where(col.actor_kind == filters.actor_kind)
    if filters.attempt is not None:
        query = query.where(col.attempt == filters.attempt)
    if filters.since is not None:
        query = query.where(col.created_at >= filters.since)
    if filters.until is not None:
        query = query.where(col.created_at <= filters.until)
    if filters.after is not None:
        at, row_id = filters.after
        query = query.where(or_(col.created_at > at, and_(col.created_at == at, col.id > row_id)))
    return query.order_by(col.created_at, col.id).limit(filters.limit)


def _legacy_possible(filters: AnnotationFilters) -> bool:
    """Whether synthesized ``legacy.metadata.*`` rows could pass these filters."""
    if filters.scope is not None and filters.scope != "run":
        return False
    if filters.scope_id is not None or filters.actor_id is not None:
        return False
    if filters.actor_kind is not None or (filters.attempt not in (None, 0)):
        return False
    if filters.key is not None:
        return filters.key.startswith(LEGACY_PREFIX)
    if filters.key_prefix:
        prefix = filters.key_prefix
        return LEGACY_PREFIX.startswith(prefix) or prefix.startswith(LEGACY_PREFIX)
    return True


class RunHead(Protocol):
    """What listing a run's annotations reads of the run (not its input, output or config)."""

    id: str
    created_at: datetime
    metadata_: dict[str, Any] | None


def run_head(session: Session, run_id: str) -> RunHead | None:
    """The run's id, creation time and legacy metadata, or ``None`` if there is no such run."""
    query = select(WorkflowRun.id, WorkflowRun.created_at, WorkflowRun.metadata_).where(
        WorkflowRun.id == run_id
    )
    return session.execute(query).first()


def _legacy_rows(session: Session, run: RunHead, filters: AnnotationFilters) -> list[Annotation]:
    metadata = run.metadata_
    if not isinstance(metadata, dict) or not metadata:
        return []
    any_stored = session.scalar(
        select(WorkflowAnnotation.id)
        .where(
            WorkflowAnnotation.workflow_run_id == run.id,
            _prefix_clause(LEGACY_PREFIX),
        )
        .limit(1)
    )
    if any_stored is not None:
        return []  # migrated (all or nothing): the stored rows win
    if filters.since is not None and run.created_at < filters.since:
        return []
    if filters.until is not None and run.created_at > filters.until:
        return []
    rows = []
    for name, value in metadata.items():
        key = LEGACY_PREFIX + name
        if filters.key is not None and key != filters.key:
            continue
        if filters.key_prefix and not key.startswith(filters.key_prefix):
            continue
        rows.append(
            Annotation(
                id=f"synthesized:{run.id}:{name}",
                created_at=run.created_at,
                workflow_run_id=run.id,
                scope="run",
                key=key,
                value=value,
            )
        )
    return rows


def list_annotations(
    session: Session, run_id: str, filters: AnnotationFilters
) -> list[Annotation] | None:
    """A run's annotations matching ``filters``, oldest first, with the legacy metadata shim.

    ``None`` when there is no such run.
    """
    stored = [
        Annotation.model_validate(row)
        for row in (session.scalars(_stored_query(run_id, filters))).all()
    ]
    legacy_possible = _legacy_possible(filters)
    if stored and not legacy_possible:
        return stored  # the rows name the run (a foreign key): it exists, nothing to add
    run = run_head(session, run_id)
    if run is None:
        return None
    if not legacy_possible:
        return stored
    legacy = _legacy_rows(session, run, filters)
    if filters.after is not None:
        legacy = [row for row in legacy if (row.created_at, row.id) > filters.after]
    if not legacy:
        return stored
    merged = sorted([*stored, *legacy], key=lambda a: (a.created_at, a.id))
    return merged[: filters.limit]


def value_clause(value: Any) -> Any:
    """Compare an annotation value through its typed, indexed column."""
    col = WorkflowAnnotation
    if isinstance(value, bool):
        return col.value_bool == value
    if isinstance(value, int | float):
        try:
            return col.value_number == float(value)
        except OverflowError:  # stored values this large are not number-indexed either
            raise AnnotationError(
                "annotation values are queried as numbers within float range, got an integer "
                f"of {abs(int(value)).bit_length()} bits"
            ) from None
    if isinstance(value, str):
        return col.value_text == value
    raise AnnotationError(
        f"annotation values are queried as string, number or boolean, got {type(value).__name__}"
    )


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """An opaque keyset cursor naming the last row of a page."""
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Read a cursor back; a tampered one raises :class:`AnnotationError`."""
    try:
        created_at, row_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None or not isinstance(row_id, str) or text_problem(row_id):
            raise ValueError("bad cursor contents")
        return moment, row_id
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"invalid cursor: {exc}") from None


def _cross_run_conditions(filters: CrossRunFilters) -> list[Any]:
    col = WorkflowAnnotation
    conditions: list[Any] = []
    if filters.key is not None:
        conditions.append(col.key == filters.key)
    elif filters.key_prefix:
        conditions.append(_prefix_clause(filters.key_prefix))
    if filters.value is not None:
        conditions.append(value_clause(filters.value))
    if filters.actor_id is not None:
        conditions.append(col.actor_id == filters.actor_id)
    if filters.since is not None:
        conditions.append(col.created_at >= filters.since)
    if filters.until is not None:
        conditions.append(col.created_at <= filters.until)
    if filters.workflow_id is not None:
        conditions.append(
            col.workflow_run_id.in_(
                select(WorkflowRun.id).where(WorkflowRun.workflow_id == filters.workflow_id)
            )
        )
    return conditions


def query_annotations(
    session: Session, filters: CrossRunFilters, *, limit: int, cursor: str | None
) -> tuple[list[Annotation], str | None]:
    """Annotations across runs, oldest first, one keyset page at a time."""
    if limit < 1 or limit > MAX_QUERY_LIMIT:
        raise AnnotationError(f"limit must be between 1 and {MAX_QUERY_LIMIT}, got {limit}")
    col = WorkflowAnnotation
    query = select(col).where(*_cross_run_conditions(filters))
    if cursor is not None:
        after_at, after_id = decode_cursor(cursor)
        query = query.where(
            or_(col.created_at > after_at, and_(col.created_at == after_at, col.id > after_id))
        )
    rows = (session.scalars(query.order_by(col.created_at, col.id).limit(limit))).all()
    page = [Annotation.model_validate(row) for row in rows]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if len(rows) == limit else None
    return page, next_cursor


def count_runs(
    session: Session,
    match: Mapping[str, Any],
    *,
    since: datetime | None,
    until: datetime | None,
    workflow_id: str | None,
) -> int:
    """Count the runs that carry every ``key = value`` pair of ``match`` (in the window).

    Raises:
        AnnotationError: ``match`` is empty.
    """
    query = count_runs_query(match, since=since, until=until, workflow_id=workflow_id)
    return int(session.scalar(query) or 0)


def count_runs_query(
    match: Mapping[str, Any],
    *,
    since: datetime | None,
    until: datetime | None,
    workflow_id: str | None,
) -> Select[tuple[int]]:
    """Build :func:`count_runs`' statement: on PostgreSQL an index-only scan per pair.

    Raises:
        AnnotationError: ``match`` is empty.
    """
    if not match:
        raise AnnotationError("count_runs needs at least one key and value")
    run_sets = []
    for key, value in match.items():
        conditions = _cross_run_conditions(
            CrossRunFilters(key=key, value=value, since=since, until=until, workflow_id=workflow_id)
        )
        # correlate(None): the sets query the same table and must not bind to each other.
        run_sets.append(
            select(WorkflowAnnotation.workflow_run_id).where(*conditions).correlate(None)
        )
    query = run_sets[0]
    for other in run_sets[1:]:
        query = query.where(WorkflowAnnotation.workflow_run_id.in_(other))
    return select(func.count(func.distinct(query.subquery().c.workflow_run_id)))
