"""Database faults while runs commit: killed connections, lost acknowledgements, a locked file.

- PostgreSQL: the worker's connections are killed with ``pg_terminate_backend`` from an admin
  connection, both at random moments (a background killer) and, deterministically, inside the
  first commit transaction of every stage (rows written, COMMIT pending). Activities and local
  activities retry; every run completes with each stage's rows exactly once.
- Both backends: a commit that lands but whose acknowledgement is lost (the store call raises
  after its transaction committed) is retried by Temporal and must not write twice; the same
  for a ``RunCreate`` whose caller saw an error and dispatched again with the same key.
- SQLite: another connection holds ``BEGIN IMMEDIATE`` on the file while stages finish; their
  commits wait (or, past ``busy_timeout``, fail and are retried) and never fail the run.

The worker runs in the test process on its own :class:`SqlStore` (its PostgreSQL connections
carry an ``application_name`` so that only they are killed; the test's reads are untouched).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from engine import (
    Actor,
    Kernel,
    RunCreate,
    RunStatus,
    StageContext,
    create_worker,
    define_stage,
    define_workflow,
)
from engine.core.payloads import CommitResult, StageCommit
from engine.store import SqlStore, stage_rows
from tests.reliability.support import pg_admin_url, table_counts, with_application_name
from tests.reliability.workloads import CRASH_STAGES, assert_exactly_once, crash_workflow

WAIT = timedelta(seconds=90)
SQLITE_BUSY_TIMEOUT = 30.0
"""Seconds a SQLite connection of the engine waits for a lock (``PRAGMA busy_timeout``)."""


@asynccontextmanager
async def worker_on_own_store(
    env: Any, store: SqlStore, application_name: str, workflows: list[Any]
) -> AsyncIterator[tuple[Kernel, SqlStore]]:
    """A worker on a separate SqlStore of the same database; yields (client kernel, its store)."""
    worker_store = SqlStore(with_application_name(store.url, application_name))
    task_queue = f"tq-faults-{uuid.uuid4()}"
    worker_kernel = Kernel(
        client=env.client, store=worker_store, workflows=workflows, task_queue=task_queue
    )
    kernel = Kernel(client=env.client, store=store, workflows=workflows, task_queue=task_queue)
    try:
        async with create_worker(worker_kernel):
            yield kernel, worker_store
    finally:
        await worker_store.dispose()


async def terminate(
    url: str, *, application_name: str | None = None, pid: int | None = None
) -> list[str]:
    """``pg_terminate_backend`` from an admin connection; returns the states of those killed.

    Only backends of the test database with that ``application_name`` (or ``pid``) are
    candidates; the filter is materialized first so that PostgreSQL cannot evaluate the
    terminate call on rows the filter would have rejected.
    """
    if application_name is None and pid is None:
        raise ValueError("name the backends to terminate")
    async with await psycopg.AsyncConnection.connect(pg_admin_url(url), autocommit=True) as conn:
        cursor = await conn.execute(
            "WITH victims AS MATERIALIZED ("
            "  SELECT pid, state FROM pg_stat_activity"
            "  WHERE datname = current_database() AND pid <> pg_backend_pid()"
            "  AND (%s::text IS NULL OR application_name = %s)"
            "  AND (%s::int IS NULL OR pid = %s)"
            ") SELECT state FROM victims WHERE pg_terminate_backend(pid, 5000)",
            (application_name, application_name, pid, pid),
        )
        return [str(row[0]) for row in await cursor.fetchall()]


async def kill_one_at_work(url: str, application_name: str, *, within: float) -> int:
    """Terminate one backend of ``application_name`` running a statement or inside a
    transaction, as soon as one is (watching ``pg_stat_activity`` every millisecond or so),
    within ``within`` seconds; returns how many it terminated (0 or 1).

    It reads the state and terminates in one statement, so the backend is caught at work.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with await psycopg.AsyncConnection.connect(pg_admin_url(url), autocommit=True) as conn:
        while loop.time() < deadline:
            cursor = await conn.execute(
                "WITH victims AS MATERIALIZED ("
                "  SELECT pid FROM pg_stat_activity"
                "  WHERE datname = current_database() AND pid <> pg_backend_pid()"
                "  AND application_name = %s AND state <> 'idle' LIMIT 1"
                ") SELECT count(*) FROM victims WHERE pg_terminate_backend(pid, 5000)",
                (application_name,),
            )
            row = await cursor.fetchone()
            if row is not None and row[0]:
                return 1
            await asyncio.sleep(0.001)
    return 0


async def connections_killed_while_committing(
    env: Any, store: SqlStore, directory: Path, *, runs: int, killing_for: float, seed: int
) -> dict[str, int]:
    application_name = f"rel-faults-{uuid.uuid4().hex[:8]}"
    stats = {"targeted": 0, "background": 0, "in_transaction": 0}
    targeted: set[tuple[str, str]] = set()

    async with worker_on_own_store(env, store, application_name, [crash_workflow()]) as (
        kernel,
        worker_store,
    ):
        original = worker_store.commit_stage

        async def commit_stage(commit: StageCommit) -> CommitResult:
            """Kill this very transaction's connection after its writes, once per stage."""
            key = (commit.run_id, commit.stage.stage_id)
            if key in targeted:
                return await original(commit)
            targeted.add(key)
            try:
                async with worker_store.transaction() as session:
                    await session.run_sync(stage_rows.commit_stage, commit)
                    await session.flush()
                    pid = await session.scalar(text("SELECT pg_backend_pid()"))
                    # (The background killer may have been first: then it is dead already.)
                    await terminate(store.url, pid=pid)
            except DBAPIError:
                stats["targeted"] += 1  # the transaction died with its connection
                raise
            raise AssertionError("a commit on a terminated connection succeeded")

        worker_store.commit_stage = commit_stage  # type: ignore[method-assign]

        run_ids = [
            (
                await kernel.dispatch(
                    RunCreate(workflow_id="crashy", input={"dir": str(directory), "mode": "free"})
                )
            ).workflow_run_id
            for _ in range(runs)
        ]

        async def killer() -> None:
            rng = random.Random(seed)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + killing_for
            while loop.time() < deadline:
                states = await terminate(store.url, application_name=application_name)
                stats["background"] += len(states)
                stats["in_transaction"] += sum(s != "idle" for s in states)
                # Between those, one connection caught at work: a killer that only struck at
                # random moments met busy connections by luck, and a faster commit (a
                # statement of about a millisecond) made that luck rare.
                at_work = await kill_one_at_work(
                    store.url, application_name, within=rng.uniform(0.02, 0.15)
                )
                stats["background"] += at_work
                stats["in_transaction"] += at_work

        killing = asyncio.create_task(killer())
        try:
            for run_id in run_ids:
                run = await kernel.wait_for_run(run_id, timeout=WAIT)
                assert run.status == RunStatus.COMPLETED, run
        finally:
            killing.cancel()
            await asyncio.gather(killing, return_exceptions=True)
    for run_id in run_ids:
        await assert_exactly_once(store, run_id)
    # Every stage's first commit lost its connection inside the transaction, and was retried.
    assert stats["targeted"] == runs * len(CRASH_STAGES)
    assert stats["background"] > 0
    return stats


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
async def test_connections_killed_while_committing(
    env: Any, store: SqlStore, tmp_path: Path
) -> None:
    await connections_killed_while_committing(env, store, tmp_path, runs=4, killing_for=1.5, seed=1)


@pytest.mark.reliability
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
async def test_connections_killed_while_committing_repeated(
    env: Any, store: SqlStore, tmp_path: Path, seed: int
) -> None:
    stats = await connections_killed_while_committing(
        env, store, tmp_path, runs=20, killing_for=4.0, seed=seed
    )
    # The background killer also caught connections at work (a statement running or a
    # transaction open), not only idle ones in the pool.
    assert stats["in_transaction"] > 0, stats


# -- lost acknowledgements --------------------------------------------------------------------

# Which store calls lose their acknowledgement, per run (by idempotency key): spread over runs so
# that the retries (1 s apart: Temporal's default retry policy) overlap.
LOST_ACKS = {
    # A new run is started by its first group's begin and completed by its last commit:
    # start_run and finalize_run serve reruns, restarts and failed runs only.
    "ack-run": {("create_run", None)},
    # Only the first group begins in a transaction of its own (which also starts the run):
    # later groups are opened RUNNING by the commit that completes the group before them.
    "ack-begin": {("begin_stage", "prep")},
    "ack-commit": {("commit_stage", stage_id) for stage_id in CRASH_STAGES},
}


def lose_acknowledgements(
    target: Any,
    name: str,
    where: Callable[..., tuple[str, str | None]],
    keys: dict[str, str],
    log: list[tuple[str, str, str | None]],
) -> None:
    """Make ``target.<name>`` raise, once per planned call, *after* its transaction committed.

    ``where(*args)`` names the call's (run id or idempotency key, stage id or None).
    """
    original: Callable[..., Awaitable[Any]] = getattr(target, name)

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        subject, stage_id = where(*args, **kwargs)
        key = keys.get(subject, subject)
        if name == "create_run":
            keys[result[0]] = key  # run id -> idempotency key, before the workflow starts
        entry = (name, key, stage_id)
        if (name, stage_id) in LOST_ACKS.get(key, set()) and entry not in log:
            log.append(entry)
            raise OperationalError(
                "<injected>", {}, ConnectionError("connection lost after COMMIT")
            )
        return result

    setattr(target, name, flaky)


async def test_lost_commit_acknowledgements_are_retried_without_duplicates(
    env: Any, store: SqlStore, tmp_path: Path
) -> None:
    injected: list[tuple[str, str, str | None]] = []
    keys: dict[str, str] = {}
    async with worker_on_own_store(env, store, "rel-acks", [crash_workflow()]) as (
        kernel,
        worker_store,
    ):
        # The kernel side too: the caller of a RunCreate whose commit landed sees an error
        # and dispatches again with the same idempotency key.
        lose_acknowledgements(
            kernel.store, "create_run", lambda new, *a: (new.idempotency_key, None), keys, injected
        )
        for name, where in {
            "start_run": lambda run_id, *a, **k: (run_id, None),
            "begin_stage": lambda run_id, spec, *a: (run_id, spec.stage_id),
            "commit_stage": lambda commit: (commit.run_id, commit.stage.stage_id),
            "finalize_run": lambda run_id, **k: (run_id, None),
        }.items():
            lose_acknowledgements(worker_store, name, where, keys, injected)
        try:
            run_ids = []
            for key in LOST_ACKS:
                command = RunCreate(
                    workflow_id="crashy",
                    input={"dir": str(tmp_path), "mode": "free"},
                    idempotency_key=key,
                )
                if ("create_run", None) in LOST_ACKS[key]:
                    with pytest.raises(OperationalError, match="connection lost after COMMIT"):
                        await kernel.dispatch(command)
                run_ids.append((await kernel.dispatch(command)).workflow_run_id)
            for run_id in run_ids:
                run = await kernel.wait_for_run(run_id, timeout=WAIT)
                assert run.status == RunStatus.COMPLETED, run
        finally:
            del kernel.store.create_run  # back to the class's method
    for run_id in run_ids:
        await assert_exactly_once(store, run_id)
    # Every planned acknowledgement was lost once, and the retry of each wrote nothing twice.
    assert sorted(injected, key=str) == sorted(
        [(name, key, stage_id) for key, plan in LOST_ACKS.items() for name, stage_id in plan],
        key=str,
    )
    counts = await table_counts(store)
    assert counts["workflow_runs"] == len(LOST_ACKS)
    assert counts["workflow_stages"] == len(LOST_ACKS) * len(CRASH_STAGES)


# -- SQLite: the file locked by another writer ------------------------------------------------


def lock_workflow(entered: list[str], go: asyncio.Event) -> Any:
    @define_stage(id="held", input=None, start_to_close_timeout=timedelta(seconds=60))
    async def held(ctx: StageContext[None, None]) -> Any:
        entered.append(ctx.workflow_run_id)
        await go.wait()
        ctx.log("INFO", "finishing under a locked database")
        ctx.annotate("rel.lock.outcome", "committed", emit_event=True)
        return {"held": True}

    @define_stage(id="after", input=None)
    async def after(ctx: StageContext[None, None]) -> Any:
        ctx.annotate("rel.lock.after", 1)
        return {"after": True}

    return define_workflow(id="locked").pipe(held).pipe(after).build()


def sqlite_counts(connection: sqlite3.Connection) -> dict[str, int]:
    tables = [
        row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    ]
    return {
        table: connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        for table in tables
    }


async def sqlite_locked_by_another_writer(
    env: Any, store: SqlStore, *, runs: int, hold_seconds: float
) -> int:
    """Hold the write lock while stages finish; returns how many commit attempts failed."""
    entered: list[str] = []
    go = asyncio.Event()
    workflow = lock_workflow(entered, go)
    path = make_url(store.url).database
    assert path
    past_busy_timeout = hold_seconds > SQLITE_BUSY_TIMEOUT
    failed_commits: list[BaseException] = []
    async with worker_on_own_store(env, store, "rel-lock", [workflow]) as (kernel, worker_store):
        original = worker_store.commit_stage

        async def commit_stage(commit: StageCommit) -> CommitResult:
            try:
                return await original(commit)
            except BaseException as error:  # recorded, then Temporal retries the commit
                failed_commits.append(error)
                raise

        worker_store.commit_stage = commit_stage  # type: ignore[method-assign]
        run_ids = [
            (await kernel.dispatch(RunCreate(workflow_id="locked", input={}))).workflow_run_id
            for _ in range(runs)
        ]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(entered) < runs:
            assert loop.time() < deadline, entered
            await asyncio.sleep(0.01)
        reader = sqlite3.connect(path, isolation_level=None)  # WAL: reads never wait
        before = sqlite_counts(reader)

        writer = sqlite3.connect(path, isolation_level=None, timeout=30)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE workflow_runs SET priority = priority")  # a real pending write
        late = RunCreate(workflow_id="locked", input={}, idempotency_key="late")
        try:
            go.set()
            # Meanwhile a RunCreate and an attach wait for the lock too (not in the event loop).
            late_create = asyncio.create_task(kernel.dispatch(late))
            late_attach = asyncio.create_task(
                kernel.annotations.attach(
                    run_ids[0],
                    attributes={"review.note": "written after the lock"},
                    actor=Actor(kind="user", id="ops"),
                    idempotency_key="late-note",
                )
            )
            await asyncio.sleep(hold_seconds)  # the fault lasts this long
            # Nothing could be written while the other connection held the lock.
            assert sqlite_counts(reader) == before
            assert past_busy_timeout or not (late_create.done() or late_attach.done())
        finally:
            writer.execute("COMMIT")
            writer.close()
            reader.close()
        if past_busy_timeout:
            # The kernel's own calls do not retry: past busy_timeout the caller gets "database
            # is locked" (nothing written) and retries with the same idempotency key.
            for task in (late_create, late_attach):
                with contextlib.suppress(OperationalError):
                    await task
            late_id = (await kernel.dispatch(late)).workflow_run_id
            await kernel.annotations.attach(
                run_ids[0],
                attributes={"review.note": "written after the lock"},
                actor=Actor(kind="user", id="ops"),
                idempotency_key="late-note",
            )
        else:
            late_id = (await late_create).workflow_run_id
            assert len(await late_attach) == 1
        assert len(await kernel.annotations.list(run_ids[0], key="review.note")) == 1
        run_ids.append(late_id)
        for run_id in run_ids:
            run = await kernel.wait_for_run(run_id, timeout=WAIT)
            assert run.status == RunStatus.COMPLETED, (run, await kernel.list_stages(run_id))
    assert (await table_counts(store))["workflow_runs"] == runs + 1
    for run_id in run_ids:
        rows = await kernel.annotations.list(run_id)
        assert sorted(a.key for a in rows if a.scope == "stage") == [
            "rel.lock.after",
            "rel.lock.outcome",
        ]
        events = [e.event_type for e in await store.list_outbox_events(run_id)]
        assert events.count("stage:completed") == 2
        assert events.count("annotation:created") == 1
        assert events.count("workflow:completed") == 1
        assert "stage:failed" not in events and "workflow:failed" not in events
    return len(failed_commits)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
async def test_sqlite_locked_by_another_writer(env: Any, store: SqlStore) -> None:
    """A 2 s lock: commits wait on ``busy_timeout`` and land once it is released."""
    failed = await sqlite_locked_by_another_writer(env, store, runs=4, hold_seconds=2.0)
    assert failed == 0  # they waited; none needed a retry


@pytest.mark.reliability
@pytest.mark.timeout(240)
@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
async def test_sqlite_locked_past_busy_timeout(env: Any, store: SqlStore) -> None:
    """A 35 s lock, past SQLite's 30 s ``busy_timeout`` and the 30 s local-activity timeout:
    the commits fail with "database is locked" or time out, and Temporal retries them."""
    failed = await sqlite_locked_by_another_writer(env, store, runs=4, hold_seconds=35.0)
    assert failed > 0  # they did fail, and were retried
