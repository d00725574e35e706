"""Faults inside the one-statement commit, PostgreSQL's production path for sequential stages.

A sequential stage that neither completes its run nor suspends (``prep`` of the ``crashy``
workflow) commits on PostgreSQL in one autocommitted statement
(:mod:`engine.store.one_statement`): there is no open transaction to hold, so the tests catch
the statement itself while it runs. The statement's run-status guard locks the run's row; the
test holds that lock (``SELECT … FOR UPDATE`` on an admin connection) before it lets ``prep``
return, so the commit statement waits inside PostgreSQL (``pg_stat_activity`` shows it, a
``WITH`` query waiting on a lock: the one-statement path, not the general transaction). Then:

- ``crash-lands``: the worker is SIGKILLed; the lock is released, and the orphaned statement
  completes and commits with nobody to hear of it. The spare worker's redelivered activity
  finds the stage COMPLETED and must not run its code again.
- ``crash-lost``: the worker is SIGKILLed and its orphaned backends are terminated before the
  lock is released: nothing of the commit lands (checked in SQL), and the spare worker runs
  the stage again (attempt 2).
- ``connection-kill``: the worker lives, its waiting backends are terminated: the statement
  fails, the activity retries its commit (the same outcome: the stage's code does not run
  again) on a fresh connection.

Every run then completes with each stage's rows exactly once (counted in SQL per run) and
exact table totals. The general commit transaction is interrupted the same two ways in
``test_worker_crash.py`` (``in_commit``) and ``test_database_faults.py`` (targeted kills).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from temporalio.client import Client

from engine import Kernel, RunCreate
from engine.store import SqlStore
from tests.reliability.support import (
    FastEnv,
    WorkerProcess,
    pg_admin_url,
    table_counts,
    wait_for_files,
)
from tests.reliability.workloads import (
    CRASH_STAGES,
    assert_exactly_once,
    crash_workflow,
    release_path,
)

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.parametrize("store", ["postgresql"], indirect=True),
]

RUNS = 3
WAIT = timedelta(seconds=90)


async def waiting_statements(url: str, application_name: str) -> list[str]:
    """Queries of the worker's backends that wait on a lock."""
    async with await psycopg.AsyncConnection.connect(pg_admin_url(url), autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND wait_event_type = 'Lock'",
            (application_name,),
        )
        return [str(row[0]) for row in await cursor.fetchall()]


async def terminate_named(url: str, application_name: str) -> int:
    async with await psycopg.AsyncConnection.connect(pg_admin_url(url), autocommit=True) as conn:
        cursor = await conn.execute(
            "WITH victims AS MATERIALIZED (SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s) "
            "SELECT count(*) FROM victims WHERE pg_terminate_backend(pid, 5000)",
            (application_name,),
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


async def until(
    condition_name: str, check: Callable[[], Awaitable[bool]], timeout: float = 30.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise TimeoutError(condition_name)
        await asyncio.sleep(0.05)


async def prep_rows(store: SqlStore, run_id: str) -> tuple[str, int, int]:
    """(prep's status, its log rows, its stage:completed events) straight from SQL."""
    async with await psycopg.AsyncConnection.connect(
        pg_admin_url(store.url), autocommit=True
    ) as conn:
        cursor = await conn.execute(
            "SELECT (SELECT status FROM workflow_stages WHERE workflow_run_id = %(r)s "
            "        AND stage_id = 'prep'),"
            " (SELECT count(*) FROM workflow_logs WHERE workflow_run_id = %(r)s "
            "        AND stage_id = 'prep'),"
            " (SELECT count(*) FROM outbox_events WHERE workflow_run_id = %(r)s "
            "        AND event_type = 'stage:completed' AND payload->>'stage_id' = 'prep')",
            {"r": run_id},
        )
        row = await cursor.fetchone()
        assert row is not None
        return str(row[0]), int(row[1]), int(row[2])


@pytest.mark.parametrize("fault", ["crash-lands", "crash-lost", "connection-kill"])
async def test_fault_inside_the_one_statement_commit(
    fast_env: FastEnv, store: SqlStore, tmp_path: Path, fault: str
) -> None:
    task_queue = f"tq-onestmt-{uuid.uuid4()}"
    names = [f"rel-1stmt-{n}-{uuid.uuid4().hex[:6]}" for n in range(2)]
    common = {
        "WFE_TEMPORAL_ADDRESS": fast_env.address,
        "WFE_TASK_QUEUE": task_queue,
        "REL_MARKERS": str(tmp_path),
    }
    workers = [
        await WorkerProcess.spawn(
            tmp_path / f"worker-{n}.log",
            database_url=store.url,
            application_name=names[n],
            gate=tmp_path / f"worker-{n}.gate",
            **common,
        )
        for n in range(2)
    ]
    doomed, spare = workers
    try:
        await run_fault(fast_env.client, store, tmp_path, task_queue, doomed, spare, fault)
    finally:
        for worker in workers:
            await worker.kill()


async def run_fault(
    client: Client,
    store: SqlStore,
    directory: Path,
    task_queue: str,
    doomed: WorkerProcess,
    spare: WorkerProcess,
    fault: str,
) -> None:
    doomed.open_gate()
    kernel = Kernel(client=client, store=store, workflows=[crash_workflow()], task_queue=task_queue)
    job = {"dir": str(directory), "mode": "prep"}
    run_ids = [
        (await kernel.dispatch(RunCreate(workflow_id="crashy", input=job))).workflow_run_id
        for _ in range(RUNS)
    ]
    try:
        await wait_for_files([directory / f"{r}.prep.1.entered" for r in run_ids])
    except TimeoutError:
        doomed.check_alive()
        raise

    admin = await psycopg.AsyncConnection.connect(pg_admin_url(store.url))
    try:
        # The run rows locked: each prep commit statement will wait for them.
        await admin.execute(
            "SELECT id FROM workflow_runs WHERE id = ANY(%s) FOR UPDATE", (run_ids,)
        )
        for run_id in run_ids:
            release_path(directory, run_id).touch()

        async def all_waiting() -> bool:
            return len(await waiting_statements(store.url, doomed.application_name)) == RUNS

        await until("the prep commits never waited on the run lock", all_waiting)
        for query in await waiting_statements(store.url, doomed.application_name):
            assert query.lstrip().upper().startswith("WITH"), query  # the one-statement path

        if fault in ("crash-lands", "crash-lost"):
            doomed.check_alive()
            await doomed.kill()
            spare.open_gate()
            # The worker is gone; its statements still wait inside PostgreSQL.
            assert len(await waiting_statements(store.url, doomed.application_name)) == RUNS
        if fault in ("crash-lost", "connection-kill"):
            assert await terminate_named(store.url, doomed.application_name) >= RUNS
        await admin.rollback()  # the lock goes: whatever statement still waits, runs
    finally:
        await admin.close()

    async def settled() -> bool:
        return len(await waiting_statements(store.url, doomed.application_name)) == 0

    await until("statements still waiting after the lock went", settled)
    if fault == "crash-lands":
        # The orphaned statements committed, all of a piece, after their worker died.
        async def landed() -> bool:
            rows = [await prep_rows(store, run_id) for run_id in run_ids]
            return rows == [("COMPLETED", 1, 1)] * RUNS

        await until("an orphaned one-statement commit did not land", landed)
    elif fault == "crash-lost":
        for run_id in run_ids:  # killed inside the statement: not a row of it
            assert await prep_rows(store, run_id) == ("RUNNING", 0, 0)

    for run_id in run_ids:
        run = await kernel.wait_for_run(run_id, timeout=WAIT)
        assert run.status == "COMPLETED", (fault, run)
        await assert_exactly_once(store, run_id)
        reran = (directory / f"{run_id}.prep.2.entered").exists()
        if fault == "crash-lost":
            assert reran, "a stage whose commit never landed must run again"
        else:
            assert not reran, "a stage whose commit landed (or was retried) must not run again"
    if fault == "connection-kill":
        doomed.check_alive()

    counts = await table_counts(store)
    assert counts["workflow_runs"] == RUNS
    assert counts["workflow_stages"] == RUNS * len(CRASH_STAGES)
    assert counts["workflow_annotations"] == RUNS * 6
    assert counts["workflow_logs"] == RUNS * 5
