"""Temporal itself goes away: the dev server (persisting to a SQLite file) restarts mid-run.

Runs are caught in every state a run can be in when the server stops: a stage's code running
(it outlives the outage, heartbeating), a stage suspended on a durable timer, and stages not
yet scheduled. The server is stopped, left down for a moment and started again on the same
port and database file; the worker and the client reconnect on their own, every run
completes, and each stage's rows are there exactly once.

Two ways down: ``graceful`` (SIGTERM, the server shuts down in order) and ``crash`` (SIGKILL
of its whole process group: nothing is flushed or handed over, whatever the server had not
written to its database file is lost, and what it had is all the restarted server knows).
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from engine import (
    CompletionCheck,
    Kernel,
    RunCreate,
    RunStatus,
    StageContext,
    Suspend,
    create_worker,
    define_async_batch_stage,
    define_stage,
    define_workflow,
)
from engine.cli.devserver import DevServer
from engine.store import SqlStore
from tests.reliability.support import table_counts

pytestmark = pytest.mark.reliability

RUNS = 6
WAIT = timedelta(seconds=90)


def outage_workflow(running: asyncio.Event) -> Any:
    @define_stage(id="start", input=None)
    async def start(ctx: StageContext[None, None]) -> Any:
        return {"started": True}

    @define_stage(id="long", input=None, heartbeat_timeout=timedelta(seconds=10))
    async def long(ctx: StageContext[None, None]) -> Any:
        running.set()
        ctx.annotate("outage.long", True)
        await asyncio.sleep(3)  # spans the outage; the activity heartbeats on its own
        return {"long": True}

    async def submit(ctx: StageContext[None, None]) -> Suspend:
        ctx.annotate("outage.submitted", True)
        return Suspend(state={"n": 0}, poll_interval=timedelta(milliseconds=700))

    async def check(state: Any, ctx: Any) -> CompletionCheck:
        ctx.annotate("outage.checked", ctx.poll_count)
        return CompletionCheck(ready=ctx.poll_count >= 2, output={"polls": ctx.poll_count})

    batch = define_async_batch_stage(id="batch", input=None, execute=submit, check_completion=check)
    return define_workflow(id="outage").pipe(start).pipe(long).pipe(batch).build()


async def go_down(server: DevServer, how: str) -> None:
    if how == "crash":
        assert server.pid is not None
        os.killpg(server.pid, signal.SIGKILL)  # its own process group (start_new_session)
    await server.stop()  # after a SIGKILL: only reaps it and removes its log


@pytest.mark.parametrize("how", ["graceful", "crash"])
async def test_runs_survive_a_temporal_server_restart(
    store: SqlStore, tmp_path: Path, how: str
) -> None:
    database = str(tmp_path / "temporal.db")
    server = DevServer(ui=False, db_filename=database)
    await server.start()
    port = server.config.port
    running = asyncio.Event()
    try:
        client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        kernel = Kernel(
            client=client,
            store=store,
            workflows=[outage_workflow(running)],
            task_queue=f"tq-outage-{uuid.uuid4()}",
        )
        async with create_worker(kernel):
            run_ids = []
            for _ in range(RUNS):
                created = await kernel.dispatch(RunCreate(workflow_id="outage", input={}))
                run_ids.append(created.workflow_run_id)
                await asyncio.sleep(0.4)  # staggered: the runs are at different stages
            await asyncio.wait_for(running.wait(), timeout=30)

            await go_down(server, how)
            await asyncio.sleep(2)  # Temporal is down: pollers, heartbeats and timers wait
            server = DevServer(ui=False, db_filename=database, port=port)
            await server.start()

            for run_id in run_ids:
                run = await kernel.wait_for_run(run_id, timeout=WAIT)
                assert run.status == RunStatus.COMPLETED, run
                assert run.output == {"polls": 2}
    finally:
        await server.stop()

    counts = await table_counts(store)
    assert counts["workflow_runs"] == RUNS  # no run lost, none started twice
    assert counts["workflow_stages"] == 3 * RUNS
    assert counts["workflow_annotations"] == RUNS * (1 + 1 + 3)
    for run_id in run_ids:
        stages = await store.list_stages(run_id)
        assert [(s.stage_id, s.status) for s in stages] == [
            ("start", RunStatus.COMPLETED),
            ("long", RunStatus.COMPLETED),
            ("batch", RunStatus.COMPLETED),
        ]
        keys = [a.key for a in await kernel.annotations.list(run_id)]
        assert keys.count("outage.submitted") == 1
        assert keys.count("outage.checked") == 3  # polls 0 and 1 not ready, 2 ready
        assert keys.count("outage.long") == 1
        events = await store.list_outbox_events(run_id)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        types = [e.event_type for e in events]
        assert types.count("stage:completed") == 3
        assert types.count("workflow:completed") == 1
