"""Races: cancel against a stage's commit, and concurrent creates and attaches with one key.

- ``RunCancel`` is fired at a running stage's commit many times, at varied offsets around the
  moment the commit starts. Whichever takes the run's row lock first wins; after a cancel that
  returned ``cancelled=True`` nothing of a later commit may exist for that run: no output, stage
  annotation or ``stage:completed`` / ``workflow:completed`` event after ``workflow:cancelled``.
- 20 concurrent ``RunCreate`` with one idempotency key (tasks of one process, and tasks of two
  processes): one run, one Temporal workflow.
- 20 concurrent ``attach`` with one idempotency key: one row per attribute, one event.

On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus

from engine import (
    Actor,
    Kernel,
    RunCancel,
    RunCreate,
    RunStatus,
    StageContext,
    create_worker,
    define_stage,
    define_workflow,
)
from engine.core.payloads import CommitResult, StageCommit
from engine.runtime.kernel import temporal_workflow_id
from engine.store import SqlStore
from engine.store.contract import AnnotationFilters, NewRun
from tests.helpers import workflow_closed
from tests.reliability.support import ROOT, FastEnv, table_counts, wait_for_files
from tests.reliability.workloads import assert_exactly_once, crash_workflow

WAIT = timedelta(seconds=60)

# A cancel that reaches a local activity (the commit) just after it finished makes temporalio
# warn "Cannot find activity to cancel" (benign: there is nothing left to cancel); under this
# suite's warnings-as-errors the in-process worker would die of it.
BENIGN_CANCEL_WARNING = pytest.mark.filterwarnings(
    "ignore:Cannot find activity to cancel:UserWarning"
)

# -- cancel racing a commit -------------------------------------------------------------------


class Racer:
    """Per-run signals between the stage, the commit and the test."""

    def __init__(self) -> None:
        self.entered: dict[str, asyncio.Event] = {}
        self.release: dict[str, asyncio.Event] = {}
        self.committing: dict[str, asyncio.Event] = {}

    def of(self, run_id: str) -> tuple[asyncio.Event, asyncio.Event, asyncio.Event]:
        for table in (self.entered, self.release, self.committing):
            table.setdefault(run_id, asyncio.Event())
        return self.entered[run_id], self.release[run_id], self.committing[run_id]


def race_workflow(racer: Racer) -> Any:
    @define_stage(id="racer", input=None)
    async def race(ctx: StageContext[None, None]) -> Any:
        entered, release, _ = racer.of(ctx.workflow_run_id)
        entered.set()
        await release.wait()
        ctx.log("INFO", "racing")
        ctx.annotate("race.outcome", "committed", emit_event=True)
        ctx.annotate("race.score", 1.0)
        ctx.report_progress(1.0, "done")
        return {"raced": True}

    @define_stage(id="tail", input=None)
    async def tail(ctx: StageContext[None, None]) -> Any:
        ctx.annotate("race.tail", True, emit_event=True)
        return {"tail": True}

    return define_workflow(id="race").pipe(race).pipe(tail).build()


async def check_cancelled_run(store: SqlStore, run_id: str) -> str:
    """The invariants of a run whose cancel returned True; returns who won the racer's commit."""
    run = await store.get_run(run_id)
    assert run.status == RunStatus.CANCELLED, run
    assert run.output is None
    events = await store.list_outbox_events(run_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    types = [e.event_type for e in events]
    assert types.count("workflow:cancelled") == 1
    cancel_at = types.index("workflow:cancelled")
    # Nothing was committed after the cancel.
    assert types[cancel_at + 1 :] == [], types
    assert "workflow:completed" not in types
    stages = {s.stage_id: s for s in await store.list_stages(run_id)}
    annotations = {
        (a.scope_id, a.key)
        for a in await store.list_annotations(run_id, AnnotationFilters())
        if a.scope == "stage"
    }
    winner = "cancel"
    for stage_id, record in stages.items():
        completed = [
            i
            for i, e in enumerate(events)
            if e.event_type == "stage:completed" and e.payload.get("stage_id") == stage_id
        ]
        mine = {key for scope_id, key in annotations if scope_id == stage_id}
        if record.status == RunStatus.COMPLETED:
            # Committed before the cancel: the whole outcome, events ahead of the cancel.
            assert len(completed) == 1 and completed[0] < cancel_at, (stage_id, types)
            assert record.output_data is not None
            assert mine == EXPECTED_KEYS[stage_id]
            if stage_id == "racer":
                winner = "commit"
        else:
            # Refused: not a trace of its outcome.
            assert record.status == RunStatus.CANCELLED, record
            assert record.output_data is None, record
            assert completed == [], types
            assert mine == set(), mine
    created = [e.payload["key"] for e in events if e.event_type == "annotation:created"]
    committed = [s for s in ("racer", "tail") if s in stages and stages[s].status == "COMPLETED"]
    assert created == [EMITTED[stage_id] for stage_id in committed]
    return winner


EXPECTED_KEYS = {"racer": {"race.outcome", "race.score"}, "tail": {"race.tail"}}
EMITTED = {"racer": "race.outcome", "tail": "race.tail"}


async def cancel_races(
    env: Any, store: SqlStore, *, races: int, batch: int, seed: int
) -> Counter[str]:
    racer = Racer()
    workflow = race_workflow(racer)
    worker_store = SqlStore(store.url)
    original = worker_store.commit_stage

    async def commit_stage(commit: StageCommit) -> CommitResult:
        if commit.stage.stage_id == "racer":
            racer.of(commit.run_id)[2].set()
        return await original(commit)

    worker_store.commit_stage = commit_stage  # type: ignore[method-assign]
    task_queue = f"tq-race-{uuid.uuid4()}"
    worker_kernel = Kernel(
        client=env.client, store=worker_store, workflows=[workflow], task_queue=task_queue
    )
    kernel = Kernel(client=env.client, store=store, workflows=[workflow], task_queue=task_queue)
    rng = random.Random(seed)
    tally: Counter[str] = Counter()

    async def race_one(run_id: str, anchor: str, offset: float) -> None:
        _, release, committing = racer.of(run_id)
        release.set()
        if anchor == "commit":
            await committing.wait()
        await asyncio.sleep(offset)  # the varied offset of the race, not a wait
        cancelled = (await kernel.dispatch(RunCancel(workflow_run_id=run_id))).cancelled
        await workflow_closed(kernel.client, run_id)
        if cancelled:
            tally[f"cancelled, {await check_cancelled_run(store, run_id)} won"] += 1
        else:
            run = await store.get_run(run_id)
            assert run.status == RunStatus.COMPLETED, run
            events = [e.event_type for e in await store.list_outbox_events(run_id)]
            assert "workflow:cancelled" not in events
            assert events.count("workflow:completed") == 1
            tally["completed first"] += 1

    try:
        async with create_worker(worker_kernel):
            done = 0
            while done < races:
                size = min(batch, races - done)
                run_ids = [
                    (await kernel.dispatch(RunCreate(workflow_id="race", input={}))).workflow_run_id
                    for _ in range(size)
                ]
                await asyncio.wait_for(
                    asyncio.gather(*(racer.of(r)[0].wait() for r in run_ids)), timeout=60
                )
                plans = []
                for run_id in run_ids:
                    # Around the stage's end (the commit starts some ms after the release), or
                    # at and just after the commit's start.
                    if rng.random() < 0.3:
                        plans.append((run_id, "release", rng.uniform(0, 0.03)))
                    else:
                        plans.append((run_id, "commit", rng.choice([0, 0, rng.uniform(0, 0.02)])))
                await asyncio.gather(*(race_one(*plan) for plan in plans))
                done += size
    finally:
        await worker_store.dispose()
    assert sum(tally.values()) == races
    return tally


@BENIGN_CANCEL_WARNING
async def test_cancel_racing_commit(fast_env: FastEnv, store: SqlStore) -> None:
    tally = await cancel_races(fast_env, store, races=20, batch=20, seed=7)
    print(f"cancel vs commit on {store.engine.dialect.name}: {dict(tally)}")


@pytest.mark.reliability
@BENIGN_CANCEL_WARNING
async def test_cancel_racing_commit_repeated(fast_env: FastEnv, store: SqlStore) -> None:
    tally = await cancel_races(fast_env, store, races=200, batch=25, seed=11)
    print(f"cancel vs commit on {store.engine.dialect.name}: {dict(tally)}")
    # Over 200 races both sides must have won some: the race was real.
    assert tally["cancelled, cancel won"] > 0
    assert tally["cancelled, commit won"] + tally["completed first"] > 0


# -- one idempotency key, many creators -------------------------------------------------------


async def test_concurrent_creates_with_one_key(env: Any, store: SqlStore, tmp_path: Path) -> None:
    """20 tasks of this process, then 2 processes × 10 tasks: one run each time."""
    task_queue = f"tq-create-{uuid.uuid4()}"
    workflow = crash_workflow()
    kernel = Kernel(client=env.client, store=store, workflows=[workflow], task_queue=task_queue)
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WFE_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "WFE_DATABASE_URL": store.url,
        "WFE_TASK_QUEUE": task_queue,
    }
    # The processes start first: they take seconds to import and connect.
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("create_main.py")),
            str(tmp_path),
            f"creator-{n}",
            "two-processes",
            "10",
            env=environment,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for n in range(2)
    ]
    try:
        async with create_worker(kernel):
            command = RunCreate(
                workflow_id="crashy",
                input={"dir": str(tmp_path), "mode": "free"},
                idempotency_key="twenty-tasks",
            )
            results = await asyncio.gather(*(kernel.dispatch(command) for _ in range(20)))
            (in_process,) = {r.workflow_run_id for r in results}

            await wait_for_files([tmp_path / f"creator-{n}.ready" for n in range(2)])
            (tmp_path / "go").touch()
            outputs = [await asyncio.wait_for(p.communicate(), timeout=60) for p in processes]
            for process, (_, err) in zip(processes, outputs, strict=True):
                assert process.returncode == 0, err.decode()
            ids = {run_id for out, _ in outputs for run_id in json.loads(out)}
            assert len(ids) == 1, ids
            (across_processes,) = ids
            assert across_processes != in_process
            for run_id in (in_process, across_processes):
                run = await kernel.wait_for_run(run_id, timeout=WAIT)
                assert run.status == RunStatus.COMPLETED, run
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    counts = await table_counts(store)
    assert counts["workflow_runs"] == 2
    for run_id in (in_process, across_processes):
        await assert_exactly_once(store, run_id)  # one workflow:created, one start each
    # One Temporal workflow per run: a second start would have been rejected, not duplicated.
    for run_id in (in_process, across_processes):
        query = f'WorkflowId STARTS_WITH "{temporal_workflow_id(run_id)}"'
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # visibility lags behind the execution: wait for it, never accept none
            found = [w async for w in env.client.list_workflows(query)]
            assert len(found) <= 1, found
            if found or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert len(found) == 1, f"run {run_id}: its workflow never showed in visibility"
        handle = env.client.get_workflow_handle(temporal_workflow_id(run_id))
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED


async def test_concurrent_attach_with_one_key(env: Any, store: SqlStore) -> None:
    run_id, _ = await store.create_run(
        NewRun(
            workflow_id="w",
            workflow_name="w",
            input={},
            config={},
            priority=5,
            metadata=None,
            idempotency_key="attach-run",
        ),
        "wfe-run-{run_id}",
    )
    kernel = Kernel(client=env.client, store=store)  # attach goes to SQL only
    actor = Actor(kind="user", id="alice")

    def attach(key: str | None, value: int) -> Any:
        return kernel.annotations.attach(
            run_id,
            attributes={"review.disposition": "approved", "review.round": value},
            actor=actor,
            idempotency_key=key,
            emit_event=True,
        )

    same = await asyncio.gather(*(attach("one-key", n) for n in range(20)))
    inserted = [rows for rows in same if rows]
    assert len(inserted) == 1 and len(inserted[0]) == 2
    rows = await kernel.annotations.list(run_id)
    assert [(a.key, a.idempotency_key) for a in rows] == [
        ("review.disposition", "one-key"),
        ("review.round", "one-key"),
    ]
    assert rows == inserted[0]

    # 20 distinct keys at once: 20 × 2 rows, and the run's event sequence stays gap-free.
    distinct = await asyncio.gather(*(attach(f"key-{n}", n) for n in range(20)))
    assert all(len(rows) == 2 for rows in distinct)
    assert len(await kernel.annotations.list(run_id)) == 42
    events = await store.list_outbox_events(run_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert Counter(e.event_type for e in events) == {
        "workflow:created": 1,
        "annotation:created": 2 + 40,
    }


@BENIGN_CANCEL_WARNING
@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # about the workflow, not SQL
async def test_cancel_during_commit_closes_the_workflow_promptly(env: Any, store: SqlStore) -> None:
    """A cancel that lands while the stage activity commits closes the workflow at once.

    When the commit was a local activity, the workflow's CancelWorkflowExecution command came
    ahead of that commit's marker; the server rejected the completion and the workflow closed
    only when the workflow task timed out (8-20 s). The commit now ends the stage activity.
    """
    committing = asyncio.Event()
    proceed = asyncio.Event()

    @define_stage(id="only", input=None)
    async def only(ctx: StageContext[None, None]) -> Any:
        return {"done": True}

    workflow = define_workflow(id="cancel-in-commit").pipe(only).build()
    worker_store = SqlStore(store.url)
    commit = worker_store.commit_stage
    cancel = worker_store.cancel_run

    async def held_commit(stage_commit: StageCommit) -> CommitResult:
        committing.set()
        await proceed.wait()
        return await commit(stage_commit)

    async def cancel_then_release(*args: Any, **kwargs: Any) -> bool:
        try:
            return await cancel(*args, **kwargs)
        finally:
            proceed.set()  # the held commit finishes while the workflow ends cancelled

    worker_store.commit_stage = held_commit  # type: ignore[method-assign]
    worker_store.cancel_run = cancel_then_release  # type: ignore[method-assign]
    task_queue = f"tq-race-{uuid.uuid4()}"
    worker_kernel = Kernel(
        client=env.client, store=worker_store, workflows=[workflow], task_queue=task_queue
    )
    kernel = Kernel(client=env.client, store=store, workflows=[workflow], task_queue=task_queue)
    try:
        async with create_worker(worker_kernel):
            run_id = (
                await kernel.dispatch(RunCreate(workflow_id="cancel-in-commit", input={}))
            ).workflow_run_id
            await asyncio.wait_for(committing.wait(), timeout=30)
            assert (await kernel.dispatch(RunCancel(workflow_run_id=run_id))).cancelled
            loop = asyncio.get_running_loop()
            started = loop.time()
            await workflow_closed(kernel.client, run_id)
            closed_after = loop.time() - started
    finally:
        await worker_store.dispose()
    assert (await store.get_run(run_id)).status == RunStatus.CANCELLED
    assert closed_after < 5, closed_after
