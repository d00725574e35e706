"""Load: many runs of a five-stage pipeline on several worker processes and PostgreSQL.

Each run is intake → [extract ‖ classify] → score → publish, every stage writing ten
annotations (``workloads.load_workflow``); the workers are separate ``worker_main.py``
processes on one task queue of the reliability dev server. Every run must complete, and the
side-store must hold exactly what was written: five stage rows, fifty annotations and
thirteen outbox events (gap-free) per run, nothing more. ``make test`` runs 40 runs on two
workers; ``make test-reliability`` 500 runs on four, and the duration is recorded in
``tests/artifacts/load.txt``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from engine import Kernel, RunCreate, RunStatus
from engine.store import SqlStore
from engine.store.models import OutboxEvent, WorkflowAnnotation
from tests.reliability.support import FastEnv, WorkerProcess, table_counts, wait_for_files
from tests.reliability.workloads import LOAD_STAGES, load_workflow

pytestmark = pytest.mark.parametrize("store", ["postgresql"], indirect=True)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ANNOTATIONS_PER_RUN = len(LOAD_STAGES) * 10
EVENTS_PER_RUN = 2 + 2 * len(LOAD_STAGES) + 1
"""workflow:created, workflow:started, stage:started and stage:completed per stage,
workflow:completed."""


async def run_load(
    env: FastEnv, store: SqlStore, directory: Path, *, runs: int, workers: int
) -> float:
    task_queue = f"tq-load-{uuid.uuid4()}"
    processes = [
        await WorkerProcess.spawn(
            directory / f"worker-{n}.log",
            database_url=store.url,
            application_name=f"wfe-load-{n}",
            WFE_TEMPORAL_ADDRESS=env.address,
            WFE_TASK_QUEUE=task_queue,
            REL_MARKERS=str(directory),
        )
        for n in range(workers)
    ]
    try:
        await wait_for_files([directory / f"worker-{p.pid}.ready" for p in processes], 120)
        kernel = Kernel(
            client=env.client, store=store, workflows=[load_workflow()], task_queue=task_queue
        )
        started = time.monotonic()
        created = await asyncio.gather(
            *(kernel.dispatch(RunCreate(workflow_id="load", input={})) for _ in range(runs))
        )
        for result in created:
            run = await kernel.wait_for_run(result.workflow_run_id, timeout=timedelta(minutes=5))
            assert run.status == RunStatus.COMPLETED, run
        elapsed = time.monotonic() - started
        for process in processes:
            process.check_alive()
    finally:
        for process in processes:
            await process.kill()

    counts = await table_counts(store)
    assert counts["workflow_runs"] == runs
    assert counts["workflow_stages"] == runs * len(LOAD_STAGES)
    assert counts["workflow_annotations"] == runs * ANNOTATIONS_PER_RUN
    assert counts["outbox_events"] == runs * EVENTS_PER_RUN
    async with store.sessions() as session:
        per_run = (
            await session.execute(
                select(
                    func.count(),
                    func.max(OutboxEvent.sequence),
                    func.count(func.distinct(OutboxEvent.sequence)),
                ).group_by(OutboxEvent.workflow_run_id)
            )
        ).all()
        annotations = (
            await session.execute(
                select(func.count())
                .select_from(WorkflowAnnotation)
                .group_by(WorkflowAnnotation.workflow_run_id)
            )
        ).all()
    assert {tuple(row) for row in per_run} == {(EVENTS_PER_RUN,) * 3}
    assert {row[0] for row in annotations} == {ANNOTATIONS_PER_RUN}
    return elapsed


def record(runs: int, workers: int, elapsed: float) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    line = (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {runs} runs × {len(LOAD_STAGES)} stages "
        f"(10 annotations each) on {workers} worker processes, PostgreSQL: {elapsed:.1f} s "
        f"({runs / elapsed:.1f} runs/s)\n"
    )
    print(line, end="")
    with (ARTIFACTS / "load.txt").open("a") as out:
        out.write(line)


async def test_load_on_worker_processes(fast_env: FastEnv, store: SqlStore, tmp_path: Path):
    elapsed = await run_load(fast_env, store, tmp_path, runs=40, workers=2)
    record(40, 2, elapsed)


@pytest.mark.reliability
async def test_load_500_runs_on_4_worker_processes(
    fast_env: FastEnv, store: SqlStore, tmp_path: Path
) -> None:
    elapsed = await run_load(fast_env, store, tmp_path, runs=500, workers=4)
    record(500, 4, elapsed)
