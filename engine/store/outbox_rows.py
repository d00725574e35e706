"""The outbox relay's reads and writes: pending events, claims, delivery marks, dead letters.

What the relay does with them (order, retries, the sink) is :mod:`engine.runtime.outbox`; this
module is its SQL, run on the store's threads like every other write (see :class:`SqlStore`).

On PostgreSQL a relay claims whole runs: it locks (``FOR UPDATE SKIP LOCKED``) the earliest
pending event of each run it takes, then only the following events of the runs whose earliest
event it holds, and publishes while the claim transaction is open. Two relays thus never
publish the same event at once, and never event n+1 of a run while the other still holds
event n. SQLite has no row locks: it reads the pending events without a transaction open while
the sink works (one would hold the write lock and stall every stage commit behind a slow sink).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, case, func, select, tuple_, update
from sqlalchemy.orm import Session

from engine.core.records import OutboxEventRecord
from engine.store.models import OutboxEvent

__all__ = ["claim_events", "mark_deliveries", "pending_events", "replay_dead_letters"]

_PENDING = and_(OutboxEvent.published_at.is_(None), OutboxEvent.dlq_at.is_(None))


def _records(rows: Sequence[OutboxEvent]) -> list[OutboxEventRecord]:
    return [OutboxEventRecord.model_validate(row) for row in rows]


def pending_events(session: Session, max_events: int) -> list[OutboxEventRecord]:
    """The first ``max_events`` pending events in (run, sequence) order, locking nothing."""
    rows = session.scalars(
        select(OutboxEvent)
        .where(_PENDING)
        .order_by(OutboxEvent.workflow_run_id, OutboxEvent.sequence)
        .limit(max_events)
    )
    return _records(list(rows.all()))


def claim_events(session: Session, max_events: int) -> list[OutboxEventRecord]:
    """Lock and return up to ``max_events`` pending events of runs no other relay holds.

    PostgreSQL only; the locks last until the caller's transaction ends.

    Runs are claimed by their head (earliest pending event), taken in run order a chunk at a
    time: just enough runs to fill the batch (by their pending counts), whose heads are
    locked with ``SKIP LOCKED``; runs whose head another relay holds are passed over. Then the
    pending events that follow each held head, as long as they are consecutive and not held
    elsewhere. Nothing here waits for another relay's locks.
    """
    claimed: list[OutboxEvent] = []
    after: str | None = None
    while len(claimed) < max_events:
        budget = max_events - len(claimed)
        candidates_query = (
            select(OutboxEvent.workflow_run_id, func.min(OutboxEvent.sequence), func.count())
            .where(_PENDING)
            .group_by(OutboxEvent.workflow_run_id)
            .order_by(OutboxEvent.workflow_run_id)
            .limit(budget)
        )
        if after is not None:
            candidates_query = candidates_query.where(OutboxEvent.workflow_run_id > after)
        candidates = session.execute(candidates_query).all()
        if not candidates:
            break
        chosen: list[tuple[str, int]] = []
        planned = 0
        for run_id, head, count in candidates:
            chosen.append((run_id, head))
            planned += count
            if planned >= budget:
                break
        after = chosen[-1][0]
        held = session.execute(
            select(OutboxEvent.workflow_run_id, OutboxEvent.id)
            .where(_PENDING, tuple_(OutboxEvent.workflow_run_id, OutboxEvent.sequence).in_(chosen))
            .with_for_update(skip_locked=True)
        )
        heads = {run_id: event_id for run_id, event_id in held.all()}
        if heads:
            claimed.extend(_events_after_heads(session, heads, budget))
    return _records(claimed)


def _events_after_heads(session: Session, heads: dict[str, str], budget: int) -> list[OutboxEvent]:
    """Lock the held runs' pending events; keep, per run, the unbroken series from its head.

    A series breaks at an event this transaction could not lock, or if the run's first pending
    event is not the head it holds (a dead letter replayed meanwhile): another relay may hold
    that one, and publishing past it would break the run's order.
    """
    runs = list(heads)
    locked = session.scalars(
        select(OutboxEvent)
        .where(_PENDING, OutboxEvent.workflow_run_id.in_(runs))
        .order_by(OutboxEvent.workflow_run_id, OutboxEvent.sequence)
        .limit(budget)
        .with_for_update(skip_locked=True)
    )
    mine = {row.id: row for row in locked.all()}
    pending = session.execute(
        select(OutboxEvent.workflow_run_id, OutboxEvent.id)
        .where(_PENDING, OutboxEvent.workflow_run_id.in_(runs))
        .order_by(OutboxEvent.workflow_run_id, OutboxEvent.sequence)
        .limit(2 * budget + len(runs))
    )
    taken: list[OutboxEvent] = []
    current: str | None = None
    unbroken = False
    for run_id, event_id in pending.all():
        if run_id != current:
            current = run_id
            unbroken = event_id == heads[run_id]
        unbroken = unbroken and event_id in mine
        if unbroken and len(taken) < budget:
            taken.append(mine[event_id])
    return taken


def mark_deliveries(
    session: Session,
    published: Sequence[str],
    failed: Sequence[str],
    *,
    max_retries: int,
    now: datetime,
) -> None:
    """Stamp the delivered events; count a failure on the others.

    Those that reached ``max_retries`` are dead-lettered.
    """
    if published:
        session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(published), OutboxEvent.published_at.is_(None))
            .values(published_at=now)
        )
    if failed:
        session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(failed), _PENDING)
            .values(
                retry_count=OutboxEvent.retry_count + 1,
                dlq_at=case((OutboxEvent.retry_count + 1 >= max_retries, now), else_=None),
            )
        )


def replay_dead_letters(session: Session, max_events: int) -> int:
    """Put up to ``max_events`` dead-lettered events back; returns how many.

    They get ``dlq_at = None`` and ``retry_count = 0``, oldest first per run.
    """
    query = (
        select(OutboxEvent.id)
        .where(OutboxEvent.dlq_at.is_not(None))
        .order_by(OutboxEvent.workflow_run_id, OutboxEvent.sequence)
        .limit(max_events)
    )
    if session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update(skip_locked=True)
    ids = list(session.scalars(query).all())
    if ids:
        session.execute(
            update(OutboxEvent).where(OutboxEvent.id.in_(ids)).values(dlq_at=None, retry_count=0)
        )
    return len(ids)
