"""PostgreSQL restarts mid-run: a fast restart, and a 10 s outage.

The test starts a private cluster of its own (``pg_cluster.PrivateCluster``: ``initdb`` and
``pg_ctl`` in a temporary folder, its own port), so that it can stop the server without
touching the shared one. A worker (in this process, sharing the test's store, so that the
store's pools see the restart exactly as a worker's and an API's would) runs ``crashy`` runs:
half are held inside their ``work`` stage (heartbeating) across the restart, half run freely
and are caught wherever they are.

Before the restart both of the store's pools hold idle connections, which the restart kills
(``pg_ctl stop -m fast`` disconnects every client with ``AdminShutdown``). The first calls
after the restart, on both pools (kernel reads and run creation on the synchronous engine, an
``OutboxFlush`` and a session on the asynchronous one), must succeed at the first try: the
store drops dead pooled connections by itself. Then every run completes, each stage's rows are
there exactly once, and the table totals are exact.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url

from engine import Kernel, OutboxFlush, RunCreate, create_worker
from engine.store import SqlStore
from tests.reliability.pg_cluster import PrivateCluster
from tests.reliability.support import FastEnv, table_counts
from tests.reliability.workloads import (
    CRASH_STAGES,
    assert_exactly_once,
    crash_workflow,
    release_path,
)

pytestmark = pytest.mark.reliability

HELD_RUNS = 4
FREE_RUNS = 4
WAIT = timedelta(seconds=120)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    server = PrivateCluster()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest_asyncio.fixture
async def cluster_store(cluster: PrivateCluster) -> AsyncIterator[SqlStore]:
    name = f"wfe_r_{uuid.uuid4().hex[:10]}"
    admin = make_url(cluster.url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    store = SqlStore(make_url(cluster.url).set(database=name).render_as_string(False))
    await store.upgrade()
    try:
        yield store
    finally:
        await store.dispose()


async def warm_pools(store: SqlStore, run_ids: list[str]) -> None:
    """Leave several idle connections in both pools (the restart will kill them all)."""

    async def session_query() -> None:
        async with store.sessions() as session:
            await session.execute(text("SELECT pg_sleep(0.05)"))

    def idle(engine: Any) -> int:
        return int(engine.pool.checkedin())

    # The worker's own commits use the same pools, so at any instant they may hold every
    # connection: warm until both pools show idle ones (it once read 0 under a loaded machine).
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        await asyncio.gather(*(store.get_run(run_ids[i % len(run_ids)]) for i in range(6)))
        await asyncio.gather(*(session_query() for _ in range(4)))
        if idle(store.sync_engine) >= 2 and idle(store.engine.sync_engine) >= 2:
            return
        assert asyncio.get_running_loop().time() < deadline, "the pools never had 2 idle"
        await asyncio.sleep(0.1)


async def first_calls_after_restart(kernel: Kernel, run_ids: list[str]) -> None:
    """Each of these must work the first time, on pools whose connections all died."""
    await asyncio.gather(*(kernel.get_run(run_id) for run_id in run_ids))  # sync readers
    await kernel.dispatch(OutboxFlush())  # async pool
    async with kernel.store.sessions() as session:
        assert (await session.execute(text("SELECT 1"))).scalar() == 1
    await asyncio.gather(*(kernel.list_stages(run_id) for run_id in run_ids))
    await kernel.dispatch(OutboxFlush())


@pytest.mark.parametrize("down_seconds", [0, 10], ids=["fast-restart", "outage-10s"])
async def test_runs_survive_a_postgres_restart(
    cluster: PrivateCluster,
    cluster_store: SqlStore,
    fast_env: FastEnv,
    tmp_path: Path,
    down_seconds: float,
) -> None:
    store = cluster_store
    kernel = Kernel(
        client=fast_env.client,
        store=store,
        workflows=[crash_workflow()],
        task_queue=f"tq-pgrestart-{uuid.uuid4()}",
    )
    job = {"dir": str(tmp_path)}
    held: list[str] = []
    free: list[str] = []
    async with create_worker(kernel):
        for _ in range(HELD_RUNS):
            created = await kernel.dispatch(
                RunCreate(workflow_id="crashy", input={**job, "mode": "stage"})
            )
            held.append(created.workflow_run_id)
        deadline = asyncio.get_running_loop().time() + 60
        while not all((tmp_path / f"{r}.work.1.entered").exists() for r in held):
            assert asyncio.get_running_loop().time() < deadline, "held stages never started"
            await asyncio.sleep(0.05)
        for _ in range(FREE_RUNS):
            created = await kernel.dispatch(
                RunCreate(workflow_id="crashy", input={**job, "mode": "free"})
            )
            free.append(created.workflow_run_id)
        run_ids = held + free
        await warm_pools(store, run_ids)

        await cluster.restart(down_seconds=down_seconds)
        await first_calls_after_restart(kernel, run_ids)

        for run_id in held:
            release_path(tmp_path, run_id).touch()
        for run_id in run_ids:
            run = await kernel.wait_for_run(run_id, timeout=WAIT)
            assert run.status == "COMPLETED", run
            await assert_exactly_once(store, run_id)
        # A run created after the restart goes through as well.
        late = await kernel.dispatch(RunCreate(workflow_id="crashy", input=job))
        await kernel.wait_for_run(late.workflow_run_id, timeout=WAIT)
        await assert_exactly_once(store, late.workflow_run_id)
        run_ids.append(late.workflow_run_id)

    counts = await table_counts(store)
    assert counts["workflow_runs"] == len(run_ids)
    assert counts["workflow_stages"] == len(run_ids) * len(CRASH_STAGES)
    assert counts["workflow_annotations"] == len(run_ids) * 6
    assert counts["workflow_logs"] == len(run_ids) * 5


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_pools_recover_by_themselves_after_a_restart(
    cluster: PrivateCluster, cluster_store: SqlStore, mode: str
) -> None:
    """No worker around: every pooled connection of both engines is stale at once, and
    concurrent first calls on each engine all succeed (``immediate``: the server quits
    without a clean shutdown and recovers from its WAL at the next start)."""
    store = cluster_store

    async def async_session() -> int:
        async with store.sessions() as session:
            return int((await session.execute(text("SELECT 1 FROM pg_sleep(0.05)"))).scalar_one())

    async def sync_transaction() -> list[object]:
        return await store.pending_runs(10)

    for _ in range(2):
        await asyncio.gather(*(sync_transaction() for _ in range(8)))
        await asyncio.gather(*(async_session() for _ in range(6)))
        assert store.sync_engine.pool.checkedin() >= 4  # type: ignore[attr-defined]
        assert store.engine.pool.checkedin() >= 4  # type: ignore[attr-defined]
        await cluster.restart(mode=mode)
        assert await asyncio.gather(*(sync_transaction() for _ in range(8))) == [[]] * 8
        assert await asyncio.gather(*(async_session() for _ in range(6))) == [1] * 6
