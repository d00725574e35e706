"""Cancel during a running stage that heartbeats, again and again, on the local dev server.

The stage does synchronous work in a thread and calls ``ctx.heartbeat()`` between steps; its
activity has a short heartbeat timeout, so Temporal delivers the cancellation through the
heartbeats. Each cycle cancels at a different step of the stage's work (seeded, anywhere in
its first 70%: the rest outlasts the heartbeat throttle, so the cancel always arrives while the
stage still works), then checks that the stage ended CANCELLED with no output, that nothing it
annotated or reported was stored, that the run's outbox ends with ``workflow:cancelled`` and no
outcome event for the stage, and that the work stopped within 2 s of the cancel (0.8 s of
heartbeat throttling, then a round trip). ``make test`` runs 5 cycles per backend;
``make test-reliability`` 30.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from engine import (
    Kernel,
    RunCancel,
    RunCreate,
    RunStatus,
    StageContext,
    define_stage,
    define_workflow,
)
from engine.store import SqlStore
from tests.helpers import running_kernel

WAIT = timedelta(seconds=30)
STEP_SECONDS = 0.005
STEPS = 800
"""About 4 s of work unless cancelled."""
LAST_CANCEL_STEP = int(STEPS * 0.7)
STOPS_WITHIN = 2.0

BENIGN_CANCEL_RACE = pytest.mark.filterwarnings("ignore:Cannot find activity to cancel:UserWarning")


def heartbeating_workflow(
    entered: dict[str, threading.Event], steps: dict[str, tuple[int, float]]
) -> Any:
    @define_stage(id="first", input=None)
    async def first(ctx: StageContext[None, None]) -> Any:
        return {"first": True}

    @define_stage(id="grind", input=None, heartbeat_timeout=timedelta(seconds=1))
    def grind(ctx: StageContext[None, None]) -> Any:
        ctx.annotate("grind.started", True)
        ctx.report_progress(0.1, "started")
        entered.setdefault(ctx.workflow_run_id, threading.Event()).set()
        for step in range(STEPS):
            time.sleep(STEP_SECONDS)
            steps[ctx.workflow_run_id] = (step, time.monotonic())
            ctx.heartbeat(step)  # raises once the activity is cancelled
        ctx.annotate("grind.finished", True)
        return {"ground": True}

    @define_stage(id="after", input=None)
    async def after(ctx: StageContext[None, None]) -> Any:
        return {}

    return define_workflow(id="grinder").pipe(first).pipe(grind).pipe(after).build()


async def cancel_cycle(
    kernel: Kernel,
    store: SqlStore,
    entered: dict[str, Any],
    steps: dict[str, tuple[int, float]],
    at_step: int,
) -> None:
    run_id = (await kernel.dispatch(RunCreate(workflow_id="grinder", input={}))).workflow_run_id
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT.total_seconds()
    while not (run_id in entered and entered[run_id].is_set()):
        assert loop.time() < deadline, "the stage never started"
        await asyncio.sleep(0.005)
    while steps.get(run_id, (-1, 0.0))[0] < at_step:  # the varied moment of the cancel
        assert loop.time() < deadline, "the stage never got there"
        await asyncio.sleep(0.001)
    cancelled_at = time.monotonic()
    cancelled = await kernel.dispatch(RunCancel(workflow_run_id=run_id, reason="cycle"))
    assert cancelled.cancelled, [
        (s.stage_id, s.status, s.error_message) for s in await store.list_stages(run_id)
    ]
    run = await kernel.wait_for_run(run_id, timeout=WAIT)
    assert run.status == RunStatus.CANCELLED and run.output is None

    stages = {s.stage_id: s for s in await store.list_stages(run_id)}
    assert stages["first"].status == RunStatus.COMPLETED
    grind = stages["grind"]
    assert grind.status == RunStatus.CANCELLED, grind
    assert grind.output_data is None and grind.next_poll_at is None
    assert "after" not in stages
    assert await kernel.annotations.list(run_id, scope_id="grind") == []
    events = await store.list_outbox_events(run_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event_type == "workflow:cancelled"
    grind_events = [e.event_type for e in events if e.payload.get("stage_id") == "grind"]
    assert grind_events == ["stage:started"], grind_events
    # The work itself stops: Temporal answers a heartbeat with the cancellation (heartbeats
    # are sent at most every 0.8 heartbeat timeouts), and the next ctx.heartbeat() raises in
    # the stage's thread, long before its 400 steps are done.
    while True:
        before = steps[run_id]
        await asyncio.sleep(0.1)
        if steps[run_id] == before:
            break
        assert loop.time() < deadline
    last_step, stopped_at = steps[run_id]
    assert last_step < STEPS - 1, "the cancelled stage worked to the end"
    assert stopped_at - cancelled_at <= STOPS_WITHIN, (
        at_step,
        last_step,
        stopped_at - cancelled_at,
    )


async def run_cycles(env: Any, store: SqlStore, cycles: int, seed: int) -> None:
    entered: dict[str, threading.Event] = {}
    steps: dict[str, tuple[int, float]] = {}
    rng = random.Random(seed)
    async with running_kernel(env, store, heartbeating_workflow(entered, steps)) as kernel:
        for _ in range(cycles):
            at_step = rng.randint(0, LAST_CANCEL_STEP)
            await cancel_cycle(kernel, store, entered, steps, at_step)


@BENIGN_CANCEL_RACE
async def test_cancel_during_a_heartbeating_stage(env: Any, store: SqlStore) -> None:
    await run_cycles(env, store, cycles=5, seed=3)


@pytest.mark.reliability
@BENIGN_CANCEL_RACE
async def test_cancel_during_a_heartbeating_stage_30_times(env: Any, store: SqlStore) -> None:
    await run_cycles(env, store, cycles=30, seed=5)
