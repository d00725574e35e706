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
from datetime import timedelta
from typing import Protocol, runtime_checkable

from engine.commands import OutboxFlush, OutboxFlushResult
from engine.core.records import OutboxEventRecord
from engine.store import SqlStore

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


# The relays of one process take turns on a SQLite database (keyed by event loop and URL:
# an asyncio.Lock belongs to one loop).
_sqlite_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _sqlite_turn(url: str) -> asyncio.Lock:
    locks = _sqlite_turns.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(url, asyncio.Lock())


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
                return await self._store.relay_outbox(
                    max_events, self._publish, max_retries=self.max_retries
                )
        return await self._store.relay_outbox(
            max_events, self._publish, max_retries=self.max_retries
        )

    async def _publish(self, events: Sequence[OutboxEventRecord]) -> tuple[list[str], list[str]]:
        """Hand ``events`` to the sink in order: (published ids, failed ids).

        A failed event holds back the later events of its run (they are neither).
        """
        blocked: set[str] = set()
        published: list[str] = []
        failed: list[str] = []
        for event in events:
            if event.workflow_run_id in blocked:
                continue  # per-run order: wait for the failed earlier event
            try:
                if self._sink is not None:
                    await self._sink.publish(event)
            except Exception as exc:
                blocked.add(event.workflow_run_id)
                failed.append(event.id)
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
            published.append(event.id)
        return published, failed

    async def replay_dlq(self, max_events: int = 100) -> int:
        """Put up to ``max_events`` dead-lettered events back; returns how many.

        They get ``dlq_at = None`` and ``retry_count = 0``, and go out with the next flush
        (before the later events of their run that are still pending).
        """
        return await self._store.replay_dead_letters(max_events)


class OutboxDispatcher(Protocol):
    """What the relay loop needs of a kernel: ``dispatch(OutboxFlush(...))``.

    A protocol, so that this module, below the kernel, does not import it.
    """

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
