"""Worker crashes: ``SIGKILL`` a worker process at the dangerous points of a stage.

Each crash cycle runs a hooked worker process (``worker_main.py``) and dispatches runs of the
``crashy`` workflow (prep → [work ‖ side] → finish) whose ``work`` stage is caught:

- ``stage``: inside the stage's user code (it waits, heartbeating, for a release file);
- ``before_commit``: after the stage's code returned, before its commit (at the end of the
  stage activity) writes anything (the worker sleeps there);
- ``in_commit``: inside the commit transaction, every row written and flushed, before COMMIT
  (PostgreSQL shows the worker's backend ``idle in transaction``);
- ``after_commit``: the commit landed, the activity has not returned it to Temporal yet;
- ``free``: runs dispatched just before the kill, caught wherever they happen to be.

The worker is killed with ``SIGKILL`` after a varied delay, a standby worker (started before the
kill, gated by a file so that it polls only afterwards) takes over, and every run must complete
with each stage's rows (stage record, stage annotations, logs, outbox events) present exactly
once, counted in SQL per run. A stage caught before its commit landed (``stage``,
``before_commit``, ``in_commit``) must have re-run its code on the new worker (attempt 2: its
result was durable nowhere, and a rerun rebuilds its buffer); one caught after (``after_commit``)
must not: the redelivered activity finds the stage COMPLETED and returns the stored outcome.

The reliability tests' dev server (``fast_env``) has a 2 s default workflow-task timeout, so
that a workflow task lost with the worker is retried after 2 s rather than 10 s.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from engine import Kernel, RunCreate
from engine.store import SqlStore
from tests.reliability.support import FastEnv, WorkerProcess, pg_backends, wait_for_files
from tests.reliability.workloads import assert_exactly_once, crash_workflow, release_path

pytestmark = pytest.mark.parametrize("store", ["postgresql"], indirect=True)

HELD_MODES = ("stage", "before_commit", "in_commit", "after_commit")
WAIT = timedelta(seconds=60)


class WorkerPool:
    """The worker processes of the module, all on one task queue.

    One worker polls (``current``); one spare is started in advance and waits at its gate, so
    that the worker taking over after a crash has paid its start-up cost already.
    """

    def __init__(self, address: str, directory: Path) -> None:
        self.address = address
        self.directory = directory
        self.task_queue = f"tq-crash-{uuid.uuid4()}"
        self.database_url: str | None = None
        self.current: WorkerProcess | None = None
        self.spare: WorkerProcess | None = None
        self.spawned: list[WorkerProcess] = []

    async def _spawn(self) -> WorkerProcess:
        assert self.database_url is not None
        number = len(self.spawned)
        worker = await WorkerProcess.spawn(
            self.directory / f"worker-{number}.log",
            database_url=self.database_url,
            application_name=f"rel-crash-{number}-{uuid.uuid4().hex[:6]}",
            gate=self.directory / f"worker-{number}.gate",
            WFE_TEMPORAL_ADDRESS=self.address,
            WFE_TASK_QUEUE=self.task_queue,
            REL_MARKERS=str(self.directory),
            REL_HOOKS="1",
        )
        self.spawned.append(worker)
        return worker

    async def polling(self, database_url: str) -> WorkerProcess:
        """The polling worker (the first call starts it)."""
        if self.database_url is None:
            self.database_url = database_url
        assert database_url == self.database_url, "the tests share one database"
        if self.current is None:
            await self._take_spare()
        assert self.current is not None
        self.current.check_alive()
        return self.current

    async def crash(self) -> WorkerProcess:
        """SIGKILL the polling worker; the spare takes over. Returns the killed one."""
        assert self.current is not None
        killed = self.current
        await killed.kill()
        await self._take_spare()
        return killed

    async def _take_spare(self) -> None:
        self.current = self.spare or await self._spawn()
        self.current.open_gate()
        self.spare = await self._spawn()

    async def close(self) -> None:
        for worker in self.spawned:
            await worker.kill()


@pytest_asyncio.fixture(scope="module")
async def pool(
    fast_env: FastEnv, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerPool]:
    workers = WorkerPool(fast_env.address, tmp_path_factory.mktemp("crash"))
    try:
        yield workers
    finally:
        await workers.close()


async def crash_cycle(
    pool: WorkerPool,
    client: Client,
    store: SqlStore,
    rng: random.Random,
    *,
    runs_per_mode: int,
    max_kill_delay: float,
    free_runs: int,
) -> None:
    """Catch runs at each held point, kill the worker, let the spare recover every run."""
    directory = pool.directory
    doomed = await pool.polling(store.url)
    kernel = Kernel(
        client=client, store=store, workflows=[crash_workflow()], task_queue=pool.task_queue
    )
    job = {"dir": str(directory)}
    modes: dict[str, str] = {}
    for mode in HELD_MODES:
        for _ in range(runs_per_mode):
            created = await kernel.dispatch(
                RunCreate(workflow_id="crashy", input={**job, "mode": mode})
            )
            modes[created.workflow_run_id] = mode
    held = {
        "stage": lambda run_id: directory / f"{run_id}.work.1.entered",
        "before_commit": lambda run_id: directory / f"{run_id}.work.before_commit",
        "in_commit": lambda run_id: directory / f"{run_id}.work.in_commit",
        "after_commit": lambda run_id: directory / f"{run_id}.work.after_commit",
    }
    try:
        await wait_for_files([held[mode](run_id) for run_id, mode in modes.items()])
    except TimeoutError:
        doomed.check_alive()
        raise
    if not store.is_sqlite:
        # The held commit transactions are open, their rows written, COMMIT not sent.
        assert (
            await pg_backends(store.url, doomed.application_name, "idle in transaction")
            >= runs_per_mode
        )
    for _ in range(free_runs):
        created = await kernel.dispatch(
            RunCreate(workflow_id="crashy", input={**job, "mode": "free"})
        )
        modes[created.workflow_run_id] = "free"
    await asyncio.sleep(rng.uniform(0, max_kill_delay))  # varies the crash point; not a wait
    doomed.check_alive()
    await pool.crash()

    for run_id, mode in modes.items():
        if mode == "stage":
            release_path(directory, run_id).touch()
    for run_id, mode in modes.items():
        run = await kernel.wait_for_run(run_id, timeout=WAIT)
        assert run.status == "COMPLETED", (mode, run)
        await assert_exactly_once(store, run_id)
        reran = (directory / f"{run_id}.work.2.entered").exists()
        if mode in ("stage", "before_commit", "in_commit"):
            assert reran, "a stage killed before its commit landed must run again"
        elif mode == "after_commit":
            assert not reran, "a stage whose commit landed must not run again"


@pytest.mark.parametrize("repetition", range(2))
async def test_worker_crash_recovers_exactly_once(
    pool: WorkerPool, fast_env: FastEnv, store: SqlStore, repetition: int
) -> None:
    await crash_cycle(
        pool,
        fast_env.client,
        store,
        random.Random(repetition),
        runs_per_mode=2,
        max_kill_delay=0.3,
        free_runs=2,
    )


@pytest.mark.reliability
@pytest.mark.parametrize("repetition", range(20))
async def test_worker_crash_recovers_exactly_once_repeated(
    pool: WorkerPool, fast_env: FastEnv, store: SqlStore, repetition: int
) -> None:
    """20 crashes with varied timing: kill delay, number of runs, runs caught anywhere."""
    rng = random.Random(1000 + repetition)
    await crash_cycle(
        pool,
        fast_env.client,
        store,
        rng,
        runs_per_mode=rng.randint(1, 3),
        max_kill_delay=rng.choice([0.05, 0.5, 1.5]),
        free_runs=rng.randint(2, 6),
    )
