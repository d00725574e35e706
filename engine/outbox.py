"""Publishing the outbox: at-least-once, in per-run sequence order, with dead-lettering."""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from sqlalchemy import select, update

from engine.records import OutboxEventRecord
from engine.store import SqlStore
from engine.store.models import OutboxEvent, utcnow

__all__ = ["EventSink", "OutboxRelay"]

log = logging.getLogger(__name__)
DEFAULT_MAX_RETRIES = 3


@runtime_checkable
class EventSink(Protocol):
    """Where published events go (a plugin runner, a webhook, a log)."""

    async def publish(self, event: OutboxEventRecord) -> None:
        """Deliver one event; raise to have it retried."""
        ...


class OutboxRelay:
    """Publishes unpublished outbox events to a sink.

    Rows are claimed with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several relays never
    publish the same event at once (SQLite serializes writers: run one relay there). A failed
    event holds back the later events of its run until it is published or dead-lettered;
    other runs go on.
    """

    def __init__(
        self, store: SqlStore, sink: EventSink | None, max_retries: int = DEFAULT_MAX_RETRIES
    ) -> None:
        self._store = store
        self._sink = sink
        self._max_retries = getattr(sink, "max_retries", max_retries)

    async def flush(self, max_events: int = 100) -> int:
        """Publish up to ``max_events`` events; returns how many were published."""
        published = 0
        async with self._store.transaction() as session:
            rows = (
                await session.scalars(
                    select(OutboxEvent)
                    .where(OutboxEvent.published_at.is_(None), OutboxEvent.dlq_at.is_(None))
                    .order_by(OutboxEvent.workflow_run_id, OutboxEvent.sequence)
                    .limit(max_events)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            blocked: set[str] = set()
            for row in rows:
                if row.workflow_run_id in blocked:
                    continue
                try:
                    if self._sink is not None:
                        await self._sink.publish(OutboxEventRecord.model_validate(row))
                except Exception as exc:
                    blocked.add(row.workflow_run_id)
                    row.retry_count += 1
                    if row.retry_count >= self._max_retries:
                        row.dlq_at = utcnow()
                    log.warning("outbox event %s failed (%s): %s", row.id, row.retry_count, exc)
                    continue
                row.published_at = utcnow()
                published += 1
        return published

    async def replay_dlq(self, max_events: int = 100) -> int:
        """Put up to ``max_events`` dead-lettered events back; returns how many."""
        async with self._store.transaction() as session:
            ids = (
                await session.scalars(
                    select(OutboxEvent.id)
                    .where(OutboxEvent.dlq_at.is_not(None))
                    .order_by(OutboxEvent.workflow_run_id, OutboxEvent.sequence)
                    .limit(max_events)
                )
            ).all()
            if ids:
                await session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.id.in_(ids))
                    .values(dlq_at=None, retry_count=0)
                )
            return len(ids)
