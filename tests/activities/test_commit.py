"""The stage commit (``SqlStore.commit_stage``, run by the ``wfe.commit_stage`` local activity).

Called directly, as Temporal would call it on retries: one transaction per commit, idempotent
by ``commit_id``, guarded by the run's status. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text

from engine.core.annotations import Actor, AnnotationDraft
from engine.core.records import RunStatus
from engine.store import SqlStore
from engine.store.contract import AnnotationFilters, NewRun, NewStage
from engine.store.models import (
    IdempotencyKey,
    OutboxEvent,
    WorkflowAnnotation,
    WorkflowLog,
    WorkflowRun,
    WorkflowStage,
)
from engine.store.sql import lock_run
from temporal_workflows.payloads import (
    LogDraft,
    ProgressDraft,
    StageCommit,
    StageOutcome,
    StageSpec,
)
from tests.helpers import stage_spec

LEFT, RIGHT, NEXT = stage_spec("left", 1, 1), stage_spec("right", 2, 1), stage_spec("next", 3, 2)


def first_group(config: dict[str, Any]) -> list[NewStage]:
    return [NewStage(s.stage_id, s.name, s.number, s.group, s.config) for s in (LEFT, RIGHT)]


async def started_run(store: SqlStore) -> str:
    """A RUNNING run whose first (two-member) group is open, made through store calls."""
    run_id, created = await store.create_run(
        NewRun(
            workflow_id="wf",
            workflow_name="Workflow",
            input={"x": 1},
            config={"left": {"k": 1}, "right": {"k": 2}, "next": {"k": 3}},
            priority=5,
            metadata=None,
            idempotency_key=f"create-{datetime.now(UTC).timestamp()}",
        ),
        "wfe-run-{run_id}",
    )
    assert created
    started = await store.start_run(run_id, first_group, causation_id=run_id)
    assert started.status == "ok"
    return run_id


def completed_outcome(record_id: str) -> StageOutcome:
    now = datetime.now(UTC)
    return StageOutcome(
        status="completed",
        stage_record_id=record_id,
        output={"answer": 42},
        metrics={"total_cost": 0.5, "total_tokens": 7},
        started_at=now,
        duration_ms=12,
        logs=[LogDraft(at=now, level="INFO", message="thinking", metadata={"step": 1})],
        annotations=[
            AnnotationDraft(key="decision.outcome", value="yes", emit_event=True),
            AnnotationDraft(
                key="decision.confidence",
                value=0.9,
                actor=Actor(kind="agent", id="a-1"),
                idempotency_key="conf-1",
            ),
        ],
        progress=[ProgressDraft(progress=0.5, message="half")],
    )


def commit(run_id: str, stage: StageSpec, commit_id: str, outcome: StageOutcome, **kw: Any) -> Any:
    return StageCommit(
        run_id=run_id,
        stage=stage,
        attempt=0,
        commit_id=commit_id,
        outcome=outcome,
        now=datetime.now(UTC),
        **kw,
    )


async def counts(store: SqlStore, run_id: str) -> dict[str, int]:
    out = {}
    async with store.sessions() as session:
        for model in (WorkflowStage, WorkflowLog, WorkflowAnnotation, OutboxEvent):
            out[model.__tablename__] = int(
                await session.scalar(
                    select(func.count()).select_from(model).where(model.workflow_run_id == run_id)
                )
                or 0
            )
        out["runs"] = int(await session.scalar(select(func.count()).select_from(WorkflowRun)) or 0)
        out["keys"] = int(
            await session.scalar(select(func.count()).select_from(IdempotencyKey)) or 0
        )
    return out


async def test_start_run_opens_every_member_of_the_first_group(store: SqlStore) -> None:
    """B9: RUNNING with started_at, PENDING records per parallel member, workflow:started."""
    run_id = await started_run(store)
    run = await store.get_run(run_id)
    assert run.status == RunStatus.RUNNING and run.started_at is not None
    stages = await store.list_stages(run_id)
    assert [(s.stage_id, s.status, s.execution_group, s.config) for s in stages] == [
        ("left", RunStatus.PENDING, 1, {"k": 1}),
        ("right", RunStatus.PENDING, 1, {"k": 2}),
    ]
    # A repeated start (a retried local activity) changes nothing.
    again = await store.start_run(run_id, first_group, causation_id=run_id)
    assert again.status == "ok"
    assert await store.list_stages(run_id) == stages
    events = await store.list_outbox_events(run_id)
    assert [(e.sequence, e.event_type) for e in events] == [
        (1, "workflow:created"),
        (2, "workflow:started"),
    ]


async def test_duplicated_commit_writes_one_set_of_rows(store: SqlStore) -> None:
    run_id = await started_run(store)
    left_id = (await store.begin_stage(run_id, LEFT, 0)).record_id
    right_id = (await store.begin_stage(run_id, RIGHT, 0)).record_id
    assert left_id is not None and right_id is not None
    # A redelivered activity does not begin a RUNNING stage twice.
    again = await store.begin_stage(run_id, LEFT, 0)
    assert (again.action, again.record_id) == ("run", left_id)
    before = await counts(store, run_id)

    failed = StageOutcome(
        status="failed",
        stage_record_id=right_id,
        error="right broke",
        duration_ms=3,
        logs=[LogDraft(at=datetime.now(UTC), level="WARN", message="about to break")],
        annotations=[AnnotationDraft(key="acme.before", value=True)],
    )
    right_commit = commit(run_id, RIGHT, "wf-run:1", failed)
    # The group's other member failed: completing this one opens nothing.
    assert (await store.commit_stage(right_commit)).committed is True
    left_commit = commit(
        run_id, LEFT, "wf-run:2", completed_outcome(left_id), open_next=[NEXT], group_size=2
    )

    # The same commit, sequentially and then concurrently, as Temporal retries may deliver it.
    assert (await store.commit_stage(right_commit)).committed is True
    results = await asyncio.gather(
        store.commit_stage(left_commit),
        store.commit_stage(left_commit),
        store.commit_stage(left_commit),
    )
    assert [r.committed for r in results] == [True, True, True]
    landed = [r for r in results if r.decisions]
    assert [r.decisions for r in landed] == [
        [("decision.outcome", "yes"), ("decision.confidence", "0.9")]
    ]
    assert (await store.commit_stage(left_commit)).decisions == []

    after = await counts(store, run_id)
    assert after == {
        "workflow_stages": before["workflow_stages"],  # "next" not opened: "right" failed
        "workflow_logs": 3,  # right: WARN + ERROR; left: INFO
        "workflow_annotations": 3,
        "outbox_events": before["outbox_events"] + 4,
        "runs": 1,
        "keys": before["keys"],  # idempotent by the record's state, not by a claimed key
    }
    stages = {s.stage_id: s for s in await store.list_stages(run_id)}
    left = stages["left"]
    assert left.status == RunStatus.COMPLETED
    assert left.output_data == {"answer": 42}
    assert left.metrics == {"total_cost": 0.5, "total_tokens": 7}
    assert left.duration_ms == 12 and left.completed_at is not None
    assert stages["right"].status == RunStatus.FAILED
    assert stages["right"].error_message == "right broke"
    assert "next" not in stages

    logs = await store.list_logs(run_id)
    assert sorted((log.stage_id, log.level, log.message) for log in logs) == [
        ("left", "INFO", "thinking"),
        ("right", "ERROR", "Stage right failed: right broke"),
        ("right", "WARN", "about to break"),
    ]
    events = await store.list_outbox_events(run_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    tail = [(e.event_type, e.payload.get("stage_id"), e.payload.get("key")) for e in events[4:]]
    assert tail == [
        ("stage:failed", "right", None),
        ("stage:progress", "left", None),
        ("stage:completed", "left", None),
        ("annotation:created", None, "decision.outcome"),
    ]
    assert {e.causation_id for e in events[4:5]} == {"wf-run:1"}
    assert {e.causation_id for e in events[5:]} == {"wf-run:2"}
    rows = await store.list_annotations(run_id, AnnotationFilters())
    assert [(a.key, a.scope, a.scope_id, a.workflow_stage_record_id) for a in rows] == [
        ("acme.before", "stage", "right", right_id),
        ("decision.outcome", "stage", "left", left_id),
        ("decision.confidence", "stage", "left", left_id),
    ]


async def test_commit_against_a_cancelled_run_writes_only_logs(store: SqlStore) -> None:
    run_id = await started_run(store)
    left_id = (await store.begin_stage(run_id, LEFT, 0)).record_id
    assert left_id is not None
    assert await store.cancel_run(run_id, "stop", causation_id="cancel-1")
    events_before = await store.list_outbox_events(run_id)
    assert events_before[-1].event_type == "workflow:cancelled"
    # Nothing may begin on a cancelled run.
    assert (await store.begin_stage(run_id, RIGHT, 0)).action == "skip"

    late = commit(run_id, LEFT, "wf-run:1", completed_outcome(left_id), open_next=[NEXT])
    assert (await store.commit_stage(late)).committed is False
    assert (await store.commit_stage(late)).committed is False  # a retry: no second log row

    stages = {s.stage_id: s for s in await store.list_stages(run_id)}
    assert set(stages) == {"left", "right"}
    for record in stages.values():
        assert record.status == RunStatus.CANCELLED
        assert record.output_data is None and record.metrics is None
    assert (await store.get_run(run_id)).status == RunStatus.CANCELLED
    assert await store.list_outbox_events(run_id) == events_before
    logs = await store.list_logs(run_id)
    assert [(log.stage_id, log.level, log.message) for log in logs] == [
        ("left", "INFO", "thinking")
    ]
    current = await counts(store, run_id)
    assert current["workflow_annotations"] == 0
    assert current["workflow_logs"] == 1


async def test_commit_against_a_finished_run_writes_only_logs(store: SqlStore) -> None:
    run_id = await started_run(store)
    left_id = (await store.begin_stage(run_id, LEFT, 0)).record_id
    assert left_id is not None
    assert await store.finalize_run(
        run_id,
        status="FAILED",
        output=None,
        error="elsewhere",
        now=datetime.now(UTC),
        commit_id="wf-run:final",
    )
    events_before = await store.list_outbox_events(run_id)
    result = await store.commit_stage(commit(run_id, LEFT, "wf-run:9", completed_outcome(left_id)))
    assert result.committed is False
    assert await store.list_outbox_events(run_id) == events_before
    (left,) = [s for s in await store.list_stages(run_id) if s.stage_id == "left"]
    assert left.status == RunStatus.RUNNING and left.output_data is None
    assert [log.message for log in await store.list_logs(run_id)] == ["thinking"]
    assert (await counts(store, run_id))["workflow_annotations"] == 0


async def test_a_commit_cancelled_mid_transaction_leaves_the_store_usable(store: SqlStore) -> None:
    """Temporal cancels local activities (worker shutdown, workflow end) at any await.

    A transaction cancelled while a statement runs must give its locks back at once: on SQLite
    a connection closed under a live cursor used to keep the write lock until garbage
    collection, so every later transaction failed with "database is locked" after the 30 s
    busy timeout.
    """
    run_id = await started_run(store)
    loop = asyncio.get_running_loop()
    running = asyncio.Event()

    async def stuck_commit() -> None:
        async with store.transaction() as session:
            assert await session.run_sync(lock_run, run_id) is not None
            if store.is_sqlite:
                raw = await (await session.connection()).get_raw_connection()

                def signal() -> int:  # called by SQLite mid-statement, on its own thread
                    loop.call_soon_threadsafe(running.set)
                    return 1

                await raw.driver_connection.create_function("running", 0, signal)
                slow = (
                    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n "
                    "WHERE x < 300000 AND (x != 1000 OR running())) SELECT count(*) FROM n"
                )
            else:
                slow = "SELECT pg_sleep(30) /* stuck commit */"
            await session.execute(text(slow))

    async def sleeping_on_server() -> bool:
        async with store.sessions() as session:
            found = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state = 'active' AND query LIKE '%stuck commit%' "
                    "AND pid <> pg_backend_pid()"
                )
            )
            return bool(found)

    task = asyncio.create_task(stuck_commit())
    if store.is_sqlite:
        await asyncio.wait_for(running.wait(), 10)
    else:
        deadline = loop.time() + 10
        while not await sleeping_on_server():
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # The run row and (on SQLite) the database are free again: a cancel commits at once.
    assert await asyncio.wait_for(store.cancel_run(run_id, "after", causation_id="c"), 10)
    assert (await store.get_run(run_id)).status == RunStatus.CANCELLED
