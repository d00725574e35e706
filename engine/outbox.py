"""Publishing the outbox: at-least-once, in per-run sequence order, with dead-lettering.

Every change the engine commits writes its events to ``outbox_events`` in the same transaction
(per run, sequences 1, 2, 3… in commit order). :class:`OutboxRelay` hands the unpublished ones
to an :class:`EventSink` (``OutboxFlush`` through ``Kernel.dispatch``; :func:`run_outbox_relay`
in a worker):

* **Order** — events go out in (run, sequence) order. An event whose delivery fails holds back
  the later events of its run until it is delivered or dead-lettered; other runs go on.
* **At least once** — ``published_at`` is set after the sink returned, so a crash in between
  publishes the event again: sinks must tolerate duplicates (events carry a stable ``id``).
* **Retries** — a failure bumps ``retry_count``; at the sink's ``max_retries`` (default 3) the
  event gets ``dlq_at`` and is skipped until ``PluginReplayDLQ`` puts it back.
* **Several relays** — on PostgreSQL a relay claims whole runs: it locks (``FOR UPDATE SKIP
  LOCKED``) the earliest pending event of each run it takes, then only the following events of
  the runs whose earliest event it holds, and publishes while the claim transaction is open.
  Two relays thus never publish the same event at once, and never event n+1 of a run while
  the other still holds event n. SQLite has no row locks: the relays of one process take
  turns, and a SQLite database should have one relaying process (the single-machine setup it
  is meant for).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, runtime_checkable

from sqlalchemy import and_, case, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from engine.commands import OutboxFlush, OutboxFlushResult
from engine.records import OutboxEventRecord
from engine.store import SqlStore
from engine.store.models import OutboxEvent, utcnow

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "EventSink",
    "OutboxDispatcher",
    "OutboxRelay",
    "run_outbox_relay",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_RETRIES = 3
"""Failed deliveries after which an event is dead-lettered, unless the sink says otherwise."""


@runtime_checkable
class EventSink(Protocol):
    """Where published events go (a plugin runner, a webhook, a log).

    A sink may have a ``max_retries`` attribute: failed deliveries before an event is
    dead-lettered (default :data:`DEFAULT_MAX_RETRIES`).
    """

    async def publish(self, event: OutboxEventRecord) -> None:
        """Deliver one event; raise to have it retried (and, after ``max_retries``, DLQ'd)."""
        ...


@dataclass(frozen=True)
class _Delivery:
    event_id: str
    error: Exception | None


_PENDING = and_(OutboxEvent.published_at.is_(None), OutboxEvent.dlq_at.is_(None))

# The relays of one process take turns on a SQLite database (keyed by event loop and URL:
# an asyncio.Lock belongs to one loop).
_sqlite_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _sqlite_turn(url: str) -> asyncio.Lock:
    locks = _sqlite_turns.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(url, asyncio.Lock())


async def _pending_events(session: AsyncSession, max_events: int) -> list[OutboxEvent]:
    """The first ``max_events`` pending events in (run, sequence) order (SQLite: no locks)."""
    rows = await session.scalars(
        select(OutboxEvent)
        .where(_PENDING)
        .order_by(OutboxEvent.workflow_run_id, OutboxEvent.sequence)
        .limit(max_events)
    )
    return list(rows.all())


async def _claim_events(session: AsyncSession, max_events: int) -> list[OutboxEvent]:
    """Lock and return up to ``max_events`` pending events of runs no other relay holds.

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
        candidates = (await session.execute(candidates_query)).all()
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
        held = await session.execute(
            select(OutboxEvent.workflow_run_id, OutboxEvent.id)
            .where(_PENDING, tuple_(OutboxEvent.workflow_run_id, OutboxEvent.sequence).in_(chosen))
            .with_for_update(skip_locked=True)
        )
        heads = {run_id: event_id for run_id, event_id in held.all()}
        if heads:
            claimed.extend(await _events_after_heads(session, heads, budget))
    return claimed


async def _events_after_heads(
    session: AsyncSession, heads: dict[str, str], budget: int
) -> list[OutboxEvent]:
    """Lock the held runs' pending events; keep, per run, the unbroken series from its head.

    A series breaks at an event this transaction could not lock, or if the run's first pending
    event is not the head it holds (a dead letter replayed meanwhile): another relay may hold
    that one, and publishing past it would break the run's order.
    """
    runs = list(heads)
    locked = await session.scalars(
        select(OutboxEvent)
        .where(_PENDING, OutboxEvent.workflow_run_id.in_(runs))
        .order_by(OutboxEvent.workflow_run_id, OutboxEvent.sequence)
        .limit(budget)
        .with_for_update(skip_locked=True)
    )
    mine = {row.id: row for row in locked.all()}
    pending = await session.execute(
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


class OutboxRelay:
    """Publishes unpublished outbox events to a sink (see the module docstring).

    Args:
        store: The side-store holding the outbox.
        sink: Where events go; ``None`` marks them published without sending them anywhere.
        max_retries: Failed deliveries before dead-lettering, when the sink has no
            ``max_retries`` attribute.
    """

    def __init__(
        self, store: SqlStore, sink: EventSink | None, max_retries: int = DEFAULT_MAX_RETRIES
    ) -> None:
        self._store = store
        self._sink = sink
        self.max_retries: int = getattr(sink, "max_retries", max_retries)
        """Failed deliveries after which an event is dead-lettered."""

    async def flush(self, max_events: int = 100) -> int:
        """Publish up to ``max_events`` events; returns how many were published."""
        if self._store.is_sqlite:
            async with _sqlite_turn(self._store.url):
                async with self._store.sessions() as session:
                    events = [
                        OutboxEventRecord.model_validate(row)
                        for row in await _pending_events(session, max_events)
                    ]
                # No transaction while the sink works: one would hold SQLite's write lock and
                # stall every stage commit behind a slow sink.
                deliveries = await self._publish(events)
                async with self._store.transaction() as session:
                    return await self._settle(session, deliveries)
        async with self._store.transaction() as session:
            events = [
                OutboxEventRecord.model_validate(row)
                for row in await _claim_events(session, max_events)
            ]
            # Publishing inside the claim transaction: the row locks are the claim, and they
            # go away by themselves if this process dies.
            deliveries = await self._publish(events)
            return await self._settle(session, deliveries)

    async def _publish(self, events: Sequence[OutboxEventRecord]) -> list[_Delivery]:
        blocked: set[str] = set()
        deliveries = []
        for event in events:
            if event.workflow_run_id in blocked:
                continue  # per-run order: wait for the failed earlier event
            try:
                if self._sink is not None:
                    await self._sink.publish(event)
            except Exception as exc:
                blocked.add(event.workflow_run_id)
                deliveries.append(_Delivery(event.id, exc))
                log.warning(
                    "outbox event %s (%s, run %s #%d) failed on attempt %d of %d: %s",
                    event.id,
                    event.event_type,
                    event.workflow_run_id,
                    event.sequence,
                    event.retry_count + 1,
                    self.max_retries,
                    exc,
                )
                continue
            deliveries.append(_Delivery(event.id, None))
        return deliveries

    async def _settle(self, session: AsyncSession, deliveries: Sequence[_Delivery]) -> int:
        """Stamp the delivered events, count the failures; returns how many were published."""
        now = utcnow()
        published = [d.event_id for d in deliveries if d.error is None]
        failed = [d.event_id for d in deliveries if d.error is not None]
        if published:
            await session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_(published), OutboxEvent.published_at.is_(None))
                .values(published_at=now)
            )
        if failed:
            await session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_(failed), _PENDING)
                .values(
                    retry_count=OutboxEvent.retry_count + 1,
                    dlq_at=case((OutboxEvent.retry_count + 1 >= self.max_retries, now), else_=None),
                )
            )
        return len(published)

    async def replay_dlq(self, max_events: int = 100) -> int:
        """Put up to ``max_events`` dead-lettered events back; returns how many.

        They get ``dlq_at = None`` and ``retry_count = 0``, and go out with the next flush
        (before the later events of their run that are still pending).
        """
        async with self._store.transaction() as session:
            query = (
                select(OutboxEvent.id)
                .where(OutboxEvent.dlq_at.is_not(None))
                .order_by(OutboxEvent.workflow_run_id, OutboxEvent.sequence)
                .limit(max_events)
            )
            if not self._store.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            ids = list((await session.scalars(query)).all())
            if ids:
                await session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.id.in_(ids))
                    .values(dlq_at=None, retry_count=0)
                )
            return len(ids)


class OutboxDispatcher(Protocol):
    """What the relay loop needs of a kernel: ``dispatch(OutboxFlush(...))`` (a protocol, so
    that this module, below the kernel, does not import it)."""

    async def dispatch(self, command: OutboxFlush) -> OutboxFlushResult:
        """Run one flush of the outbox."""
        ...


async def run_outbox_relay(
    kernel: OutboxDispatcher,
    *,
    interval: timedelta = timedelta(seconds=1),
    max_events: int = 100,
    stop: asyncio.Event,
) -> int:
    """Flush the kernel's outbox to its event sink until ``stop`` is set (what workers run).

    Flushes again at once while a flush fills its batch; otherwise waits ``interval`` (or
    until ``stop``). A failing flush (say, the database restarting) is logged and retried after
    ``interval``; it never ends the loop. There is no last flush after ``stop``.

    Args:
        kernel: Whose store and ``event_sink`` to use (``OutboxFlush`` through ``dispatch``).
        interval: Pause between flushes when the outbox is drained or a flush failed.
        max_events: Batch size of each flush.
        stop: Set it to end the loop (the current flush finishes first).

    Returns:
        How many events this loop published.
    """
    total = 0
    while not stop.is_set():
        busy = False
        try:
            result = await kernel.dispatch(OutboxFlush(max_events=max_events))
            total += result.published
            busy = result.published >= max_events
        except Exception as exc:
            log.warning("outbox relay: flush failed, retrying in %s: %s", interval, exc)
        if busy:
            await asyncio.sleep(0)
            continue
        try:
            await asyncio.wait_for(stop.wait(), interval.total_seconds())
        except TimeoutError:
            pass
    return total
