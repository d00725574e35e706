"""The outbox relay: order, retries, dead letters, replay, several relays, the relay loop.

B44–B48 of ENGINE-SEMANTICS.md, on SQLite and PostgreSQL (``store``). Events are written with
the store's own ``append_events`` on runs made by ``create_run`` (no workflow needed), except
in the first test, where a real run through Temporal writes them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from engine import (
    Kernel,
    OutboxEventRecord,
    OutboxFlush,
    OutboxFlushResult,
    PluginReplayDLQ,
    RunCreate,
    RunStatus,
    define_plugin,
)
from engine.runtime.outbox import run_outbox_relay
from engine.store import SqlStore
from engine.store.models import OutboxEvent, utcnow
from engine.store.sql import append_events, lock_run
from tests.helpers import run_with_events, running_kernel, triage_workflow


class RecordingSink:
    """Records deliveries; fails the events ``failing`` names (by (run, sequence))."""

    def __init__(self, *, max_retries: int | None = None, delay: float = 0.0) -> None:
        if max_retries is not None:
            self.max_retries = max_retries
        self.failing: set[tuple[str, int]] = set()
        self.delivered: list[tuple[str, int]] = []
        self.attempts: Counter[str] = Counter()
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.rendezvous: asyncio.Event | None = None
        """When set up: the first delivery waits (up to 10 s) until another one is under way."""

    async def publish(self, event: OutboxEventRecord) -> None:
        self.attempts[event.id] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.rendezvous is not None and not self.rendezvous.is_set():
                if self.in_flight >= 2:
                    self.rendezvous.set()
                else:
                    await asyncio.wait_for(self.rendezvous.wait(), timeout=10)
            if self.delay:
                await asyncio.sleep(self.delay)  # a slow sink, so that relays interleave
            if (event.workflow_run_id, event.sequence) in self.failing:
                raise RuntimeError(f"sink down for #{event.sequence}")
            self.delivered.append((event.workflow_run_id, event.sequence))
        finally:
            self.in_flight -= 1


async def make_run(store: SqlStore, events: int) -> str:
    """A PENDING run with ``events`` outbox events (``workflow:created`` + stage events)."""
    return await run_with_events(
        store, [("stage:started", {"stage_id": f"s{i}"}) for i in range(2, events + 1)]
    )


async def pending_count(store: SqlStore) -> int:
    async with store.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(OutboxEvent)
            .where(OutboxEvent.published_at.is_(None), OutboxEvent.dlq_at.is_(None))
        )
    return int(count or 0)


def kernel_for(env: Any, store: SqlStore, **options: Any) -> Kernel:
    """A kernel for commands that only touch the side-store (no worker)."""
    return Kernel(client=env.client, store=store, task_queue=f"tq-{uuid.uuid4()}", **options)


async def test_run_events_are_sequenced_flushed_in_order_and_filtered_for_plugins(env, store):
    """B44 (real commits), B45 (flush order, published_at, never again), B48 (plugins)."""
    seen: dict[str, list[str]] = defaultdict(list)

    def recorder(plugin_id: str):
        async def handle(event: OutboxEventRecord) -> None:
            seen[plugin_id].append(event.event_type)

        return handle

    plugins = [
        define_plugin(
            id="stages", name="Stages", on=["stage:completed"], handle=recorder("stages")
        ),
        define_plugin(
            id="lifecycle",
            name="Lifecycle",
            on=["workflow:created", "workflow:completed"],
            handle=recorder("lifecycle"),
        ),
    ]
    async with running_kernel(env, store, triage_workflow(), plugins=plugins) as kernel:
        runs = []
        for text in ("urgent: printer", "coffee"):
            created = await kernel.dispatch(
                RunCreate(workflow_id="ticket-triage", input={"text": text})
            )
            runs.append(created.workflow_run_id)
        for run_id in runs:
            run = await kernel.wait_for_run(run_id, timeout=timedelta(seconds=20))
            assert run.status == RunStatus.COMPLETED

        for run_id in runs:
            events = await kernel.list_outbox_events(run_id)
            # B44: 1..n without gaps, in commit order.
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            types = [e.event_type for e in events]
            assert types[:3] == ["workflow:created", "workflow:started", "stage:started"]
            assert types[-1] == "workflow:completed"
            # Per stage: started, then (progress, completed) from one commit, in that order.
            for stage_id in ("classify", "notify", "enrich", "route"):
                of_stage = [e.event_type for e in events if e.payload.get("stage_id") == stage_id]
                assert of_stage[0] == "stage:started" and of_stage[-1] == "stage:completed"
            assert types.index("stage:progress") < types.index("stage:completed")
            assert types.count("stage:completed") == 4
            assert all(e.published_at is None for e in events)

        total = 0
        for run_id in runs:
            total += len(await kernel.list_outbox_events(run_id))
        published = await kernel.dispatch(OutboxFlush(max_events=1000))
        assert published == OutboxFlushResult(published=total)
        assert (await kernel.dispatch({"type": "outbox.flush"})).published == 0  # B45

        for run_id in runs:
            events = await kernel.list_outbox_events(run_id)
            assert all(e.published_at is not None and e.retry_count == 0 for e in events)
        # B48: each plugin saw only its types, once each, per run in sequence order.
        assert seen["stages"] == ["stage:completed"] * 8
        assert seen["lifecycle"] == ["workflow:created", "workflow:completed"] * 2


async def test_flush_publishes_in_run_sequence_order_and_never_republishes(env, store):
    """B45 on both backends, through ``kernel.dispatch``, in batches."""
    runs = sorted([await make_run(store, 4) for _ in range(3)])
    sink = RecordingSink()
    kernel = kernel_for(env, store, event_sink=sink)

    assert (await kernel.dispatch(OutboxFlush(max_events=5))).published == 5
    assert sink.delivered == [(runs[0], s) for s in (1, 2, 3, 4)] + [(runs[1], 1)]
    assert (await kernel.dispatch({"type": "outbox.flush", "maxEvents": 100})).published == 7
    assert (await kernel.dispatch(OutboxFlush())).published == 0

    expected = [(run_id, s) for run_id in runs for s in (1, 2, 3, 4)]
    assert sink.delivered == expected
    assert set(sink.attempts.values()) == {1}
    for run_id in runs:
        events = await kernel.list_outbox_events(run_id)
        assert all(e.published_at is not None and e.dlq_at is None for e in events)

    # New events of a published run go out next, and only they.
    async with store.transaction() as session:
        await session.run_sync(lock_run, runs[1])
        await session.run_sync(
            append_events, runs[1], [("workflow:cancelled", {})], causation_id="c", now=utcnow()
        )
    assert (await kernel.dispatch(OutboxFlush())).published == 1
    assert sink.delivered[-1] == (runs[1], 5)

    # Without a sink, events are marked published.
    quiet = kernel_for(env, store)
    await make_run(store, 2)
    assert (await quiet.dispatch(OutboxFlush())).published == 2
    assert await pending_count(store) == 0


async def test_failures_retry_then_dead_letter_and_hold_back_only_their_run(env, store):
    """B46, and the per-run blocking the original lacked."""
    blocked_run, other_run = await make_run(store, 3), await make_run(store, 2)
    sink = RecordingSink()
    sink.failing.add((blocked_run, 2))
    kernel = kernel_for(env, store, event_sink=sink)

    for attempt in (1, 2, 3):
        result = await kernel.dispatch(OutboxFlush())
        assert result.published == (3 if attempt == 1 else 0)  # blocked #1 + other #1, #2
        events = await kernel.list_outbox_events(blocked_run)
        assert [e.retry_count for e in events] == [0, attempt, 0]
        assert events[0].published_at is not None
        assert events[1].published_at is None
        # #3 waits behind #2 while #2 is retried; the other run went on.
        assert events[2].published_at is None
        assert (blocked_run, 3) not in sink.delivered
        assert (events[1].dlq_at is not None) == (attempt == 3)
    assert [e.published_at is not None for e in await kernel.list_outbox_events(other_run)] == [
        True,
        True,
    ]
    assert sink.attempts[events[1].id] == 3

    # Dead-lettered: skipped, and it no longer holds the run back.
    assert (await kernel.dispatch(OutboxFlush())).published == 1
    assert sink.delivered[-1] == (blocked_run, 3)
    assert sink.attempts[events[1].id] == 3
    assert (await kernel.dispatch(OutboxFlush())).published == 0


async def test_replay_dlq_puts_dead_letters_back_for_the_next_flush(env, store):
    """B47, with the sink's own ``max_retries``."""
    run_id = await make_run(store, 2)
    sink = RecordingSink(max_retries=1)
    sink.failing.add((run_id, 1))
    kernel = kernel_for(env, store, event_sink=sink)

    assert (await kernel.dispatch(OutboxFlush())).published == 0
    first = (await kernel.list_outbox_events(run_id))[0]
    assert first.retry_count == 1 and first.dlq_at is not None
    assert (await kernel.dispatch(OutboxFlush())).published == 1  # #2; #1 is dead-lettered
    assert (await kernel.dispatch(OutboxFlush())).published == 0

    sink.failing.clear()
    replayed = await kernel.dispatch(PluginReplayDLQ(max_events=10))
    assert replayed.replayed == 1
    first = (await kernel.list_outbox_events(run_id))[0]
    assert first.retry_count == 0 and first.dlq_at is None and first.published_at is None
    assert (await kernel.dispatch({"type": "plugin.replayDLQ", "maxEvents": 5})).replayed == 0

    assert (await kernel.dispatch(OutboxFlush())).published == 1
    assert sink.delivered == [(run_id, 2), (run_id, 1)]
    first = (await kernel.list_outbox_events(run_id))[0]
    assert first.published_at is not None and first.dlq_at is None


async def test_concurrent_relays_publish_each_event_once_in_run_order(env, store):
    """Two relays, each with its own connection pool, flushing small batches at once."""
    runs = [await make_run(store, 5) for _ in range(12)]
    sink = RecordingSink(delay=0.002)
    if not store.is_sqlite:
        # Row locks, not turns: while one relay is publishing, the other publishes too.
        sink.rendezvous = asyncio.Event()
    other_store = SqlStore(store.url)
    try:
        kernels = [
            kernel_for(env, store, event_sink=sink),
            kernel_for(env, other_store, event_sink=sink),
        ]
        published: list[int] = [0, 0]

        async def relay(index: int) -> None:
            while await pending_count(store):
                result = await kernels[index].dispatch(OutboxFlush(max_events=4))
                published[index] += result.published
                await asyncio.sleep(0)

        await asyncio.wait_for(asyncio.gather(relay(0), relay(1)), timeout=60)
    finally:
        await other_store.dispose()

    assert sum(published) == len(sink.delivered) == 60
    assert len(sink.attempts) == 60 and set(sink.attempts.values()) == {1}
    by_run: dict[str, list[int]] = defaultdict(list)
    for run_id, sequence in sink.delivered:
        by_run[run_id].append(sequence)
    assert by_run == {run_id: [1, 2, 3, 4, 5] for run_id in runs}
    if not store.is_sqlite:
        assert min(published) > 0
        assert sink.max_in_flight == 2
    assert await pending_count(store) == 0


async def test_a_relay_never_publishes_past_an_event_another_relay_holds(env, store):
    """While one relay is stuck publishing event #1 of a run, another skips that whole run."""
    stuck_run, free_run = await make_run(store, 3), await make_run(store, 2)
    entered, release = asyncio.Event(), asyncio.Event()

    class Gate:
        def __init__(self) -> None:
            self.delivered: list[tuple[str, int]] = []

        async def publish(self, event: OutboxEventRecord) -> None:
            if (event.workflow_run_id, event.sequence) == (stuck_run, 1) and not release.is_set():
                entered.set()
                await release.wait()
            self.delivered.append((event.workflow_run_id, event.sequence))

    gate = Gate()
    other_store = SqlStore(store.url)
    try:
        first = kernel_for(env, store, event_sink=gate)
        second = kernel_for(env, other_store, event_sink=gate)
        # The first relay holds event #1 of the stuck run only (a batch of one).
        holder = asyncio.create_task(first.dispatch(OutboxFlush(max_events=1)))
        await asyncio.wait_for(entered.wait(), timeout=10)
        if store.is_sqlite:
            # Relays take turns: the second waits for the first to finish, then goes on.
            follower = asyncio.create_task(second.dispatch(OutboxFlush()))
            release.set()
            assert (await holder).published == 1
            assert (await follower).published == 4
        else:
            # Not #2 of the stuck run (its #1 is held), but the other run's events.
            assert (await second.dispatch(OutboxFlush())).published == 2
            assert gate.delivered == [(free_run, 1), (free_run, 2)]
            release.set()
            assert (await holder).published == 1
            assert (await second.dispatch(OutboxFlush())).published == 2
    finally:
        await other_store.dispose()
    assert [s for r, s in gate.delivered if r == stuck_run] == [1, 2, 3]
    assert await pending_count(store) == 0


async def test_relay_loop_flushes_until_stopped(env, store):
    """``run_outbox_relay`` publishes as events arrive and survives failing flushes."""
    sink = RecordingSink()
    kernel = kernel_for(env, store, event_sink=sink)
    stop = asyncio.Event()
    got_all = asyncio.Event()
    original = sink.publish

    async def publish(event: OutboxEventRecord) -> None:
        await original(event)
        if len(sink.delivered) == 6:
            got_all.set()

    sink.publish = publish  # type: ignore[method-assign]
    loop = asyncio.create_task(
        run_outbox_relay(kernel, interval=timedelta(milliseconds=10), max_events=2, stop=stop)
    )
    await make_run(store, 3)
    await make_run(store, 3)
    await asyncio.wait_for(got_all.wait(), timeout=10)
    stop.set()
    assert await asyncio.wait_for(loop, timeout=10) == 6
    assert set(sink.attempts.values()) == {1}


class FlakyKernel:
    """Stands in for a kernel whose database fails once, then has a backlog."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.calls = 0

    async def dispatch(self, command: Any) -> OutboxFlushResult:
        self.calls += 1
        assert isinstance(command, OutboxFlush) and command.max_events == 2
        if self.calls == 1:
            raise OSError("connection refused")
        if self.calls in (2, 3):
            return OutboxFlushResult(published=2)  # a full batch: flush again at once
        self.stop.set()
        return OutboxFlushResult(published=1)


async def test_relay_loop_retries_a_failed_flush_and_drains_a_backlog():
    stop = asyncio.Event()
    kernel = FlakyKernel(stop)
    total = await asyncio.wait_for(
        run_outbox_relay(
            kernel,  # type: ignore[arg-type]
            interval=timedelta(milliseconds=1),
            max_events=2,
            stop=stop,
        ),
        timeout=10,
    )
    assert (kernel.calls, total) == (4, 5)


async def test_appended_events_continue_the_sequence_across_statements(store):
    """B44 for the writer itself: the insert reads the run's last sequence, so a batch longer
    than one statement (``EVENTS_PER_STATEMENT``) and a later batch continue it without gaps,
    payloads and causation intact."""
    from engine.store.sql import EVENTS_PER_STATEMENT

    run_id = await make_run(store, 3)
    batches = [EVENTS_PER_STATEMENT * 2 + 3, 1]
    for size, causation in zip(batches, ("first", "second"), strict=True):
        async with store.transaction() as session:
            await session.run_sync(lock_run, run_id)
            await session.run_sync(
                append_events,
                run_id,
                [("stage:progress", {"stage_id": "s", "n": n}) for n in range(size)],
                causation_id=causation,
                now=utcnow(),
            )
    async with store.sessions() as session:
        rows = (
            await session.execute(
                select(OutboxEvent.sequence, OutboxEvent.payload, OutboxEvent.causation_id)
                .where(OutboxEvent.workflow_run_id == run_id)
                .order_by(OutboxEvent.sequence)
            )
        ).all()
    assert [row.sequence for row in rows] == list(range(1, 3 + sum(batches) + 1))
    appended = rows[3:]
    assert [row.payload["n"] for row in appended] == [*range(batches[0]), 0]
    assert {row.payload["workflow_run_id"] for row in appended} == {run_id}
    assert [row.causation_id for row in appended] == ["first"] * batches[0] + ["second"]
