"""Writes in one statement (PostgreSQL) against the general transactions.

A sequential stage's commit, a run's first stage beginning and a new run are each one
autocommitted statement on PostgreSQL (:mod:`engine.store.one_statement`), and the general
transaction on SQLite or when they do not fit. Both must write exactly the same rows; a
statement that collides or does not apply must write nothing and leave the work to the
general transaction.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, select, text

from engine.core.annotations import Actor, AnnotationDraft
from engine.core.payloads import LogDraft, ProgressDraft, StageCommit, StageOutcome
from engine.core.records import RunStatus
from engine.store import SqlStore
from engine.store import sql_store as sql_store_module
from engine.store.contract import NewRun, NewStage
from engine.store.models import (
    IdempotencyKey,
    OutboxEvent,
    WorkflowAnnotation,
    WorkflowLog,
    WorkflowRun,
    WorkflowStage,
)
from engine.store.one_statement import ROWS_PER_TABLE
from tests.helpers import stage_spec

FIRST, SECOND = stage_spec("first", 1), stage_spec("second", 2)
BEFORE_COMMIT = 4
"""Events of a run whose first stage began: created, its annotation's, started, stage's."""


def new_run(key: str | None = None, annotation_key: str | None = None) -> NewRun:
    drafts = [
        AnnotationDraft(key="origin.user", value="ada", emit_event=True),
        AnnotationDraft(key="origin.ticket", value=7, idempotency_key=annotation_key),
    ]
    return NewRun(
        workflow_id="wf",
        workflow_name="Workflow",
        input={"x": 1},
        config={"first": {"k": 1}, "second": {"k": 2}},
        priority=5,
        metadata={"legacy": True},
        idempotency_key=key or f"create-{uuid.uuid4()}",
        annotations=[(drafts, True)],
    )


async def running_first_stage(store: SqlStore) -> tuple[str, str]:
    """A RUNNING run whose sequential first stage is RUNNING: (run id, record id)."""
    run_id, _ = await store.create_run(new_run(), "wfe-run-{run_id}")
    group = [NewStage(FIRST.stage_id, FIRST.name, 1, 1, FIRST.config)]
    start = await store.begin_stage(run_id, FIRST, 0, group)
    assert start.action == "run" and start.record_id is not None
    return run_id, start.record_id


def stage_commit(run_id: str, record_id: str, status: str = "completed") -> StageCommit:
    now = datetime.now(UTC)
    return StageCommit(
        run_id=run_id,
        stage=FIRST,
        attempt=0,
        commit_id=f"{run_id}:1",
        outcome=StageOutcome(
            status=status,  # type: ignore[arg-type]
            stage_record_id=record_id,
            output={"answer": 42} if status == "completed" else None,
            error="boom" if status == "failed" else None,
            metrics={"total_cost": 0.5},
            started_at=now,
            duration_ms=12,
            logs=[LogDraft(at=now, level="INFO", message="thinking", metadata={"step": 1})],
            annotations=[
                AnnotationDraft(key="decision.outcome", value="yes", emit_event=True),
                AnnotationDraft(key="quality.score", value=0.9, actor=Actor(kind="agent", id="a")),
                AnnotationDraft(key="flags.reviewed", value=False),
                AnnotationDraft(key="notes.extra", value={"nested": [1, None]}),
            ],
            progress=[ProgressDraft(progress=0.5, message="half")],
        ),
        now=now,
        open_next=[SECOND],
        report_keys=["quality.score"],
    )


def last_stage_commit(run_id: str, record_id: str, **outcome: object) -> StageCommit:
    """A commit of the run's only stage: completing it completes the run."""
    commit = stage_commit(run_id, record_id)
    return commit.model_copy(
        update={
            "open_next": [],
            "completes_run": True,
            "outcome": commit.outcome.model_copy(update=outcome),
        }
    )


@contextmanager
def counted(store: SqlStore) -> Iterator[list[str]]:
    """The SQL statements the store's synchronous engine runs meanwhile."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(store.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(store.sync_engine, "before_cursor_execute", record)


async def written(store: SqlStore, run_id: str) -> dict[str, list[tuple[Any, ...]]]:
    """The run's rows without their ids and clocks, for comparing two commits."""
    async with store.sessions() as session:
        run = await session.execute(
            select(
                WorkflowRun.workflow_id,
                WorkflowRun.workflow_name,
                WorkflowRun.workflow_type,
                WorkflowRun.status,
                WorkflowRun.started_at.is_not(None),
                WorkflowRun.input,
                WorkflowRun.config,
                WorkflowRun.priority,
                WorkflowRun.metadata_,
                WorkflowRun.version,
                WorkflowRun.total_cost,
                WorkflowRun.total_tokens,
                WorkflowRun.temporal_workflow_id,
                WorkflowRun.output,
                WorkflowRun.completed_at.is_not(None),
                WorkflowRun.chain_length,
            ).where(WorkflowRun.id == run_id)
        )
        keys = await session.execute(
            select(IdempotencyKey.command_type, IdempotencyKey.result).where(
                IdempotencyKey.result["workflow_run_id"].as_string() == run_id
            )
        )
        stages = await session.execute(
            select(
                WorkflowStage.stage_id,
                WorkflowStage.status,
                WorkflowStage.output_data,
                WorkflowStage.error_message,
                WorkflowStage.metrics,
                WorkflowStage.duration_ms,
                WorkflowStage.version,
                WorkflowStage.config,
            )
            .where(WorkflowStage.workflow_run_id == run_id)
            .order_by(WorkflowStage.stage_number)
        )
        annotations = await session.execute(
            select(
                WorkflowAnnotation.key,
                WorkflowAnnotation.value,
                WorkflowAnnotation.value_text,
                WorkflowAnnotation.value_number,
                WorkflowAnnotation.value_bool,
                WorkflowAnnotation.scope,
                WorkflowAnnotation.scope_id,
                WorkflowAnnotation.actor_id,
                WorkflowAnnotation.attempt,
                WorkflowAnnotation.workflow_stage_record_id.is_not(None),
            )
            .where(WorkflowAnnotation.workflow_run_id == run_id)
            .order_by(WorkflowAnnotation.key)
        )
        logs = await session.execute(
            select(WorkflowLog.level, WorkflowLog.message, WorkflowLog.stage_id)
            .where(WorkflowLog.workflow_run_id == run_id)
            .order_by(WorkflowLog.level, WorkflowLog.message)
        )
        events = await session.execute(
            select(OutboxEvent.sequence, OutboxEvent.event_type, OutboxEvent.payload)
            .where(OutboxEvent.workflow_run_id == run_id)
            .order_by(OutboxEvent.sequence)
        )
        return {
            "run": [tuple(r) for r in run],
            "keys": [tuple(r) for r in keys],
            "stages": [tuple(r) for r in stages],
            "annotations": [tuple(r) for r in annotations],
            "logs": [tuple(r) for r in logs],
            "events": [
                (seq, kind, {k: v for k, v in payload.items() if k not in ("timestamp",)})
                for seq, kind, payload in events
            ],
        }


def _without_run_ids(rows: dict[str, list[tuple[Any, ...]]], run_id: str) -> Any:
    return repr(rows).replace(run_id, "<run>")


@pytest.mark.parametrize("status", ["completed", "failed"])
async def test_one_statement_writes_what_the_general_commit_writes(
    store: SqlStore, status: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same stage row, annotations, logs, events (and their sequence), and the same result."""
    run_id, record_id = await running_first_stage(store)
    with counted(store) as statements:
        result = await store.commit_stage(stage_commit(run_id, record_id, status))
    assert result.committed and not result.duplicate
    if store.is_sqlite:
        assert len(statements) >= 3
    else:
        assert len(statements) == 1 and statements[0].lstrip().startswith("WITH")

    monkeypatch.setattr(sql_store_module, "fits_one_statement", lambda commit: False)
    general_run, general_record = await running_first_stage(store)
    with counted(store) as statements:
        general = await store.commit_stage(stage_commit(general_run, general_record, status))
    assert len(statements) >= 3

    assert (
        result.decisions
        == general.decisions
        == [
            ("decision.outcome", "yes"),
            ("quality.score", "0.9"),
        ]
    )
    assert (
        set(result.opened)
        == set(general.opened)
        == ({"second"} if status == "completed" else set())
    )
    mine, theirs = await written(store, run_id), await written(store, general_run)
    assert _without_run_ids(mine, run_id) == _without_run_ids(theirs, general_run)
    assert [seq for seq, _, _ in mine["events"]] == list(range(1, len(mine["events"]) + 1))
    kinds = [kind for _, kind, _ in mine["events"]]
    assert kinds[BEFORE_COMMIT:] == (
        ["stage:progress", "stage:completed", "annotation:created", "stage:started"]
        if status == "completed"
        else ["stage:progress", "stage:failed", "annotation:created"]
    )


async def test_a_commit_that_completes_the_run_writes_what_the_general_commit_writes(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last stage's commit: on PostgreSQL a read of the run's totals, then one statement.

    The same run row (status, output, totals, version), events and result as the general
    commit's, and a chain that verifies.
    """
    run_id, record_id = await running_first_stage(store)
    with counted(store) as statements:
        result = await store.commit_stage(last_stage_commit(run_id, record_id))
    assert result.committed and result.completed_run and not result.opened
    if not store.is_sqlite:
        assert len(statements) == 2 and statements[1].lstrip().startswith("WITH")

    monkeypatch.setattr(sql_store_module, "fits_one_statement", lambda commit: False)
    general_run, general_record = await running_first_stage(store)
    general = await store.commit_stage(last_stage_commit(general_run, general_record))
    assert general.completed_run and general.decisions == result.decisions

    mine, theirs = await written(store, run_id), await written(store, general_run)
    durations = []
    for rows in (mine, theirs):
        (run,) = rows["run"]
        assert run[3] == RunStatus.COMPLETED and run[-3] == {"answer": 42} and run[-2]
        sequence, kind, body = rows["events"][-1]
        assert kind == "workflow:completed"
        durations.append(body.pop("duration"))
        assert body["total_cost"] == 0.5 and body["output"] == {"answer": 42}
    assert all(isinstance(ms, int) and ms >= 0 for ms in durations)
    assert _without_run_ids(mine, run_id) == _without_run_ids(theirs, general_run)
    for run in (run_id, general_run):
        found = await store.verify_chain(run)
        assert found.ok, found.first_bad


async def test_a_repeated_commit_writes_nothing_more(store: SqlStore) -> None:
    """A duplicate does not apply, writes nothing in its statement, and is reported as such."""
    run_id, record_id = await running_first_stage(store)
    commit = stage_commit(run_id, record_id)
    assert (await store.commit_stage(commit)).committed
    before = await written(store, run_id)
    again = await store.commit_stage(commit)
    assert again.committed and again.duplicate
    assert await written(store, run_id) == before


async def test_a_commit_against_a_cancelled_run_writes_only_its_logs(store: SqlStore) -> None:
    run_id, record_id = await running_first_stage(store)
    assert await store.cancel_run(run_id, "stop", causation_id="c")
    before = await written(store, run_id)
    result = await store.commit_stage(stage_commit(run_id, record_id))
    assert not result.committed
    after = await written(store, run_id)
    assert after["stages"] == before["stages"] and after["events"] == before["events"]
    assert after["annotations"] == before["annotations"]
    assert ("INFO", "thinking", "first") in after["logs"]


async def test_a_collision_with_an_open_record_falls_back_to_the_general_commit(
    store: SqlStore,
) -> None:
    """The next stage's record exists already: the one statement collides and writes
    nothing; the general commit leaves that record alone and reports nothing opened."""
    run_id, record_id = await running_first_stage(store)
    async with store.sessions() as session, session.begin():
        await session.execute(
            WorkflowStage.__table__.insert().values(
                id="pre-opened",
                created_at=datetime.now(UTC),
                updated_at=datetime.now(UTC),
                version=1,
                workflow_run_id=run_id,
                stage_id="second",
                stage_name="Stage second",
                stage_number=2,
                execution_group=2,
                attempt=0,
                status=RunStatus.PENDING,
                poll_count=0,
            )
        )
    result = await store.commit_stage(stage_commit(run_id, record_id))
    assert result.committed and result.opened == {}
    rows = await written(store, run_id)
    assert [(s[0], s[1]) for s in rows["stages"]] == [
        ("first", RunStatus.COMPLETED),
        ("second", RunStatus.PENDING),
    ]
    assert len(rows["annotations"]) == 2 + 4
    kinds = [kind for _, kind, _ in rows["events"]]
    assert "stage:started" not in kinds[BEFORE_COMMIT:]
    assert [seq for seq, _, _ in rows["events"]] == list(range(1, len(kinds) + 1))


async def test_an_event_written_while_the_commit_waits_for_the_run_lock(store: SqlStore) -> None:
    """Another writer holds the run's lock and adds an event: the commit, whose statement
    began before that event committed, must still number its events after it, gap-free."""
    if store.is_sqlite:
        pytest.skip("SQLite has one writer at a time: nothing can write while a commit waits")
    run_id, record_id = await running_first_stage(store)
    with counted(store) as statements:
        result = await _commit_while_another_writer_adds_an_event(store, run_id, record_id)
    # The statement collided on the outbox sequence, wrote nothing, and the general commit
    # (which reads the sequence after the lock) did the work.
    assert statements[0].lstrip().startswith("WITH") and len(statements) > 1
    assert result.committed and set(result.opened) == {"second"}
    rows = await written(store, run_id)
    assert [seq for seq, _, _ in rows["events"]] == list(range(1, len(rows["events"]) + 1))
    kinds = [kind for _, kind, _ in rows["events"]]
    assert kinds[BEFORE_COMMIT] == "annotation:created" and kinds[-1] == "stage:started"
    assert len(rows["annotations"]) == 2 + 4


async def _commit_while_another_writer_adds_an_event(
    store: SqlStore, run_id: str, record_id: str
) -> Any:
    async with store.engine.connect() as holder:
        transaction = await holder.begin()
        await holder.execute(
            text("SELECT id FROM workflow_runs WHERE id = :id FOR UPDATE"), {"id": run_id}
        )
        commit = asyncio.create_task(store.commit_stage(stage_commit(run_id, record_id)))
        await asyncio.sleep(0.5)  # the commit's statement is waiting for the lock now
        assert not commit.done()
        last = await holder.scalar(
            text("SELECT max(sequence) FROM outbox_events WHERE workflow_run_id = :id"),
            {"id": run_id},
        )
        await holder.execute(
            OutboxEvent.__table__.insert().values(
                id="outside",
                created_at=datetime.now(UTC),
                workflow_run_id=run_id,
                sequence=last + 1,
                event_type="annotation:created",
                payload={"type": "annotation:created"},
                causation_id="outside",
                occurred_at=datetime.now(UTC),
                retry_count=0,
            )
        )
        await transaction.commit()
    return await asyncio.wait_for(commit, 30)


async def test_a_run_and_its_first_stage_each_in_one_statement(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RunCreate's insert and the first stage's begin write what the general ones write."""
    with counted(store) as statements:
        run_id, record_id = await running_first_stage(store)
    if not store.is_sqlite:
        assert len(statements) == 2
        assert all(statement.lstrip().startswith("WITH") for statement in statements)

    monkeypatch.setattr(sql_store_module, "create_in_one_statement", lambda *args: None)
    monkeypatch.setattr(sql_store_module, "begin_in_one_statement", lambda *args: None)
    with counted(store) as statements:
        general_run, general_record = await running_first_stage(store)
    assert len(statements) >= 6

    mine, theirs = await written(store, run_id), await written(store, general_run)
    assert _without_run_ids(mine, run_id) == _without_run_ids(theirs, general_run)
    assert mine["run"][0][3] == RunStatus.RUNNING and mine["keys"] == [
        ("run.create", {"workflow_run_id": run_id})
    ]
    assert [kind for _, kind, _ in mine["events"]] == [
        "workflow:created",
        "annotation:created",
        "workflow:started",
        "stage:started",
    ]
    assert [(s[0], s[1]) for s in mine["stages"]] == [("first", RunStatus.RUNNING)]
    assert {record_id, general_record} == {
        stage.id for run in (run_id, general_run) for stage in await store.list_stages(run)
    }


async def test_a_repeated_create_finds_the_run_that_holds_the_key(store: SqlStore) -> None:
    key = f"same-{uuid.uuid4()}"
    first, created = await store.create_run(new_run(key), "wfe-run-{run_id}")
    assert created
    before = await written(store, first)
    again, created_again = await store.create_run(new_run(key), "wfe-run-{run_id}")
    assert (again, created_again) == (first, False)
    assert await written(store, first) == before


async def test_a_create_with_keyed_annotations_takes_the_general_path(store: SqlStore) -> None:
    """A keyed annotation may exist already: only the general insert can skip it."""
    with counted(store) as statements:
        run_id, created = await store.create_run(
            new_run(annotation_key="ticket-7"), "wfe-run-{run_id}"
        )
    assert created and not any(s.lstrip().startswith("WITH") for s in statements)
    assert len((await written(store, run_id))["annotations"]) == 2


async def test_a_second_member_begins_through_the_general_path(store: SqlStore) -> None:
    """Only the first activity of the first group starts the run; the next finds it RUNNING
    (the statement writes nothing) and begins its own record."""
    run_id, _ = await store.create_run(new_run(), "wfe-run-{run_id}")
    group = [NewStage(s.stage_id, s.name, 1, 1, s.config) for s in (FIRST, SECOND)]
    first = await store.begin_stage(run_id, FIRST, 0, group)
    second = await store.begin_stage(run_id, SECOND, 0, group)
    assert first.action == second.action == "run" and first.record_id != second.record_id
    rows = await written(store, run_id)
    assert [(s[0], s[1]) for s in rows["stages"]] == [
        ("first", RunStatus.RUNNING),
        ("second", RunStatus.RUNNING),
    ]
    kinds = [kind for _, kind, _ in rows["events"]]
    assert kinds[2:] == ["workflow:started", "stage:started", "stage:started"]
    assert [seq for seq, _, _ in rows["events"]] == list(range(1, len(kinds) + 1))


async def test_a_commit_of_many_annotations_takes_the_general_path(store: SqlStore) -> None:
    """One statement takes a bounded number of rows; a stage that writes more is still
    committed whole, by the general commit's batched inserts."""
    run_id, record_id = await running_first_stage(store)
    commit = stage_commit(run_id, record_id)
    many = [AnnotationDraft(key=f"item.{n:03d}", value=n) for n in range(ROWS_PER_TABLE + 1)]
    commit.outcome.annotations = many
    with counted(store) as statements:
        result = await store.commit_stage(commit)
    assert result.committed and set(result.opened) == {"second"}
    assert not any(statement.lstrip().startswith("WITH") for statement in statements)
    rows = await written(store, run_id)
    assert len(rows["annotations"]) == 2 + len(many)


async def test_psycopg_keeps_its_conversion_of_a_one_statement_commit(store: SqlStore) -> None:
    """The commit's statement is over psycopg's default caching limits (4 KB, 50 parameters);
    the store raises them, so a second commit of the same shape converts nothing again."""
    if store.is_sqlite:
        pytest.skip("PostgreSQL only: psycopg's query conversion")
    from psycopg import _queries

    runs = [await running_first_stage(store) for _ in range(3)]
    assert (await store.commit_stage(stage_commit(*runs[0]))).committed
    with counted(store) as statements:
        before = _queries._query2pg.cache_info()
        for run_id, record_id in runs[1:]:
            assert (await store.commit_stage(stage_commit(run_id, record_id))).committed
        after = _queries._query2pg.cache_info()
    assert len(statements) == 2 and len(statements[0]) > 4096
    assert after.hits - before.hits == 2 and after.misses == before.misses
