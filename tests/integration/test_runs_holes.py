"""Run control without holes (issue 16), on real Temporal, on SQLite and on PostgreSQL.

Idempotency conflicts of ``RunCreate``, ``RunRerunFrom`` once per key, the last attempt of a
stage whose error is non-retryable, the run's priority on Temporal, and the recovery of
orphaned runs (a failed start, a rerun whose start failed) by two concurrent loops.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

import engine
from engine import (
    IdempotencyConflictError,
    Kernel,
    RunCreate,
    RunRerunFrom,
    RunStartError,
    RunStatus,
    StageContext,
    define_stage,
    define_workflow,
)
from engine.cli.render import run_summary
from engine.core.presentation import format_duration
from engine.runtime.kernel import temporal_workflow_id
from engine.runtime.recovery import recovery_loop
from engine.store import SqlStore
from engine.store.models import IdempotencyKey, OutboxEvent, WorkflowRun
from tests.helpers import running_kernel
from tests.integration.test_runs_control import count_rows, temporal_executions

WAIT = timedelta(seconds=30)


class Doc(BaseModel):
    text: str


def echo_workflow(calls: list[str], workflow_id: str = "echo") -> Any:
    @define_stage(id="echo", input=Doc, output=Doc)
    async def echo(ctx: StageContext[Doc, None]) -> Doc:
        calls.append(ctx.workflow_run_id)
        return Doc(text=ctx.input.text.upper())

    @define_stage(id="tail", input=Doc, output=Doc)
    async def tail(ctx: StageContext[Doc, None]) -> Doc:
        calls.append(f"tail:{ctx.attempt}")
        return Doc(text=ctx.input.text + "!")

    return define_workflow(id=workflow_id, input=Doc).pipe(echo).pipe(tail).build()


async def test_create_with_a_known_key_and_another_request_conflicts(
    env: Any, store: SqlStore
) -> None:
    calls: list[str] = []
    workflows = (echo_workflow(calls), echo_workflow(calls, "other"))
    async with running_kernel(env, store, *workflows) as kernel:
        first = await kernel.dispatch(
            RunCreate(workflow_id="echo", input={"text": "one"}, idempotency_key="k-1")
        )
        run = await kernel.wait_for_run(first.workflow_run_id, timeout=WAIT)
        rows = {m: await count_rows(store, m) for m in (WorkflowRun, OutboxEvent, IdempotencyKey)}
        conflicting = (
            RunCreate(workflow_id="echo", input={"text": "two"}, idempotency_key="k-1"),
            RunCreate(workflow_id="other", input={"text": "one"}, idempotency_key="k-1"),
            RunCreate(
                workflow_id="echo",
                input={"text": "one"},
                config={"echo": {"x": 1}},
                idempotency_key="k-1",
            ),
        )
        for command, what in zip(conflicting, ("input", "workflow id", "config"), strict=True):
            with pytest.raises(IdempotencyConflictError) as caught:
                await kernel.dispatch(command)
            assert caught.value.key == "k-1"
            assert caught.value.workflow_run_id == run.id
            assert f"belongs to run {run.id}, created with another {what}" in str(caught.value)
        # Nothing written by the refused commands.
        assert {
            m: await count_rows(store, m) for m in (WorkflowRun, OutboxEvent, IdempotencyKey)
        } == rows
        # The same request (key order and defaults aside) is the same run.
        same = await kernel.dispatch(
            {
                "type": "run.create",
                "workflowId": "echo",
                "input": {"text": "one"},
                "idempotencyKey": "k-1",
                "config": {},
            }
        )
        assert (same.workflow_run_id, same.status) == (run.id, RunStatus.COMPLETED)
    assert issubclass(engine.IdempotencyConflictError, engine.EngineError)
    assert "IdempotencyConflictError" in engine.__all__


async def test_rerun_with_an_idempotency_key_reruns_once(env: Any, store: SqlStore) -> None:
    calls: list[str] = []
    async with running_kernel(env, store, echo_workflow(calls)) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="echo", input={"text": "a"}))
        run_id = created.workflow_run_id
        await kernel.wait_for_run(run_id, timeout=WAIT)
        command = RunRerunFrom(workflow_run_id=run_id, from_stage_id="tail", idempotency_key="r-1")
        first = await kernel.dispatch(command)
        assert (await kernel.wait_for_run(run_id, timeout=WAIT)).status == RunStatus.COMPLETED
        events = await kernel.list_outbox_events(run_id)
        # The client retries after the rerun finished: the first result, nothing rerun.
        again = await kernel.dispatch(command)
        assert again == first and first.deleted_stages == ["tail"]
        assert (await kernel.get_run(run_id)).status == RunStatus.COMPLETED
        assert await kernel.list_outbox_events(run_id) == events
        assert calls.count("tail:1") == 1 and "tail:2" not in calls
        # The key names one rerun: another stage or run with it is a conflict.
        with pytest.raises(IdempotencyConflictError, match="r-1"):
            await kernel.dispatch(
                RunRerunFrom(workflow_run_id=run_id, from_stage_id="echo", idempotency_key="r-1")
            )
        # Without a key each dispatch reruns.
        await kernel.dispatch(RunRerunFrom(workflow_run_id=run_id, from_stage_id="tail"))
        assert (await kernel.wait_for_run(run_id, timeout=WAIT)).status == RunStatus.COMPLETED
        assert "tail:2" in calls


class Fatal(Exception):
    pass


async def test_last_attempt_of_a_non_retryable_error_commits_its_logs_and_annotations(
    env: Any, store: SqlStore
) -> None:
    policy = RetryPolicy(
        maximum_attempts=5,
        initial_interval=timedelta(milliseconds=10),
        non_retryable_error_types=["Fatal", "Declared"],
    )
    attempts: dict[str, list[int]] = {"typed": [], "declared": [], "flagged": []}

    def failing(stage_id: str, error: BaseException) -> Any:
        @define_stage(id=stage_id, input=None, retry_policy=policy)
        async def stage(ctx: StageContext[None, None]) -> Any:
            attempts[stage_id].append(ctx.activity_attempt)
            ctx.log("ERROR", f"{stage_id} attempt {ctx.activity_attempt}")
            ctx.annotate("failure.seen", ctx.activity_attempt)
            raise error

        return stage

    stages = [
        failing("typed", Fatal("bad input")),
        failing("declared", ApplicationError("declared", type="Declared")),
        failing("flagged", ApplicationError("flagged", non_retryable=True)),
    ]
    workflow = define_workflow(id="fatal").parallel(stages).build()
    async with running_kernel(env, store, workflow) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="fatal", input={}))
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
        records = {s.stage_id: s for s in await kernel.list_stages(run.id)}
        logs = [log.message for log in await kernel.list_logs(run.id)]
        seen = await kernel.annotations.list(run.id, key="failure.seen")
    assert run.status == RunStatus.FAILED
    assert attempts == {"typed": [1], "declared": [1], "flagged": [1]}
    assert records["typed"].error_message == "bad input"
    assert {records[s].status for s in attempts} == {RunStatus.FAILED}
    for stage_id in attempts:
        assert f"{stage_id} attempt 1" in logs
    assert sorted(a.scope_id for a in seen if a.scope_id) == ["declared", "flagged", "typed"]


async def test_priority_reaches_the_workflow_and_its_activities(env: Any, store: SqlStore) -> None:
    calls: list[str] = []
    async with running_kernel(env, store, echo_workflow(calls)) as kernel:
        keys = {}
        for priority in (9, 5, 1):
            created = await kernel.dispatch(
                RunCreate(workflow_id="echo", input={"text": "p"}, priority=priority)
            )
            await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
            handle = kernel.client.get_workflow_handle(
                temporal_workflow_id(created.workflow_run_id)
            )
            history = await handle.fetch_history()
            started = history.events[0].workflow_execution_started_event_attributes
            scheduled = [
                e.activity_task_scheduled_event_attributes.priority.priority_key
                for e in history.events
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            ]
            assert scheduled, history
            keys[priority] = (started.priority.priority_key, set(scheduled))
    assert keys == {9: (1, {1}), 5: (3, {3}), 1: (5, {5})}


@contextlib.asynccontextmanager
async def unreachable_kernel(env: Any, store: SqlStore, *workflows: Any) -> Any:
    """A kernel whose Temporal namespace does not exist: every workflow start fails."""
    config = env.client.config()
    config["namespace"] = "no-such-namespace"
    yield Kernel(client=Client(**config), store=store, workflows=workflows, task_queue="nowhere")


async def test_failed_starts_name_the_run_and_two_recovery_loops_start_each_orphan_once(
    env: Any, store: SqlStore
) -> None:
    calls: list[str] = []
    workflow = echo_workflow(calls)
    async with running_kernel(env, store, workflow, start_grace=timedelta(seconds=1)) as kernel:
        async with unreachable_kernel(env, store, workflow) as broken:
            broken.task_queue = kernel.task_queue
            # A create whose start fails answers with the run's id; the run stays PENDING.
            with pytest.raises(RunStartError) as caught:
                await broken.dispatch(RunCreate(workflow_id="echo", input={"text": "lost"}))
            pending_id = caught.value.workflow_run_id
            assert pending_id and pending_id in str(caught.value)
            assert (await kernel.get_run(pending_id)).status == RunStatus.PENDING
            # A rerun whose start fails leaves a RUNNING run the loop can restart.
            done = await kernel.dispatch(RunCreate(workflow_id="echo", input={"text": "re"}))
            assert (await kernel.wait_for_run(done.workflow_run_id)).status == RunStatus.COMPLETED
            with pytest.raises(RunStartError, match=done.workflow_run_id):
                await broken.dispatch(
                    RunRerunFrom(workflow_run_id=done.workflow_run_id, from_stage_id="tail")
                )
            assert (await kernel.get_run(done.workflow_run_id)).status == RunStatus.RUNNING

        # Two workers' loops at once: each orphan is started exactly once.
        other = Kernel(
            client=env.client,
            store=store,
            workflows=[workflow],
            task_queue=kernel.task_queue,
            start_grace=timedelta(seconds=1),
        )
        loops = [
            asyncio.create_task(recovery_loop(k, interval=timedelta(milliseconds=50)))
            for k in (kernel, other, kernel, other)
        ]
        try:
            lost = await kernel.wait_for_run(pending_id, timeout=WAIT)
            rerun = await kernel.wait_for_run(done.workflow_run_id, timeout=WAIT)
            await asyncio.sleep(0.5)  # more passes: nothing is started twice
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
    assert lost.status == RunStatus.COMPLETED and lost.output == {"text": "LOST!"}
    assert rerun.status == RunStatus.COMPLETED and rerun.output == {"text": "RE!"}
    assert calls.count(pending_id) == 1
    assert calls.count("tail:1") == 1
    for run_id, completions in ((pending_id, 1), (done.workflow_run_id, 2)):
        types = [e.event_type for e in await store.list_outbox_events(run_id)]
        assert types.count("workflow:completed") == completions  # (the rerun's is the second)
    assert await temporal_executions(env, pending_id) == 1
    # The original execution, the rerun's (never started) restarted once: two in all.
    assert await temporal_executions(env, done.workflow_run_id) == 2
    assert (await store.temporal_workflow_id(done.workflow_run_id)).endswith("-rerun-1-restart-1")


async def test_rerun_keeps_first_start_and_tells_execution_from_age(
    env: Any, store: SqlStore
) -> None:
    @define_stage(id="first", input=Doc, output=Doc)
    async def first(ctx: StageContext[Doc, None]) -> Doc:
        return ctx.input

    @define_stage(id="second", input=Doc, output=Doc)
    async def second(ctx: StageContext[Doc, None]) -> Doc:
        ctx.annotate("seen.attempt", ctx.attempt)
        return ctx.input

    workflow = define_workflow(id="aged", input=Doc).pipe(first).pipe(second).build()
    async with running_kernel(env, store, workflow) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="aged", input={"text": "t"}))
        run_id = created.workflow_run_id
        original = await kernel.wait_for_run(run_id, timeout=WAIT)
        old_record = {s.stage_id: s.id for s in await kernel.list_stages(run_id)}["second"]
        assert original.execution_started_at == original.started_at
        assert original.execution_duration_ms is not None
        assert original.execution_duration_ms <= original.duration_ms
        await asyncio.sleep(1.0)  # the run ages between its executions
        await kernel.dispatch(RunRerunFrom(workflow_run_id=run_id, from_stage_id="second"))
        rerun = await kernel.wait_for_run(run_id, timeout=WAIT)
        seen = await kernel.annotations.list(run_id, key="seen.attempt")
        new_record = {s.stage_id: s.id for s in await kernel.list_stages(run_id)}["second"]

    assert rerun.status == RunStatus.COMPLETED
    assert rerun.started_at == original.started_at  # the first start is kept
    assert rerun.execution_started_at > original.completed_at
    assert rerun.duration_ms >= 1000  # how long the run has existed
    assert rerun.execution_duration_ms < rerun.duration_ms - 900  # only the rerun
    # The attempt-0 row lost its link with its record, not the reference to it.
    by_attempt = {a.value: a for a in seen}
    assert by_attempt[0].workflow_stage_record_id is None
    assert by_attempt[0].stage_record_ref == old_record
    assert by_attempt[1].workflow_stage_record_id == new_record
    assert by_attempt[1].stage_record_ref == new_record
    # Both figures are shown, under names that cannot be read for one another.
    summary = run_summary(rerun)
    assert f"Last execution  {format_duration(rerun.execution_duration_ms)}" in summary
    assert f"Run age         {format_duration(rerun.duration_ms)}" in summary
