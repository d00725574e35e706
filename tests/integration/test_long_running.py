"""Async-batch stages on Temporal: suspend, poll, max_wait, external resume, continue-as-new."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType

from engine import (
    CompletionCheck,
    InvalidStateError,
    RunCancel,
    RunCreate,
    RunStatus,
    StageNotFoundError,
    Suspend,
    define_async_batch_stage,
    define_workflow,
)
from engine.runtime.kernel import temporal_workflow_id
from tests.helpers import running_kernel


class Scores(BaseModel):
    score: int


def batch_workflow(
    *,
    ready_after: int,
    poll_interval: timedelta = timedelta(milliseconds=200),
    max_wait: timedelta | None = None,
    workflow_id: str = "batch",
) -> Any:
    async def submit(ctx: Any) -> Suspend:
        ctx.annotate("batch.submitted", True)
        return Suspend(state={"batch_id": "b-1"}, poll_interval=poll_interval, max_wait=max_wait)

    async def check(state: dict[str, Any], ctx: Any) -> CompletionCheck:
        ctx.annotate("batch.checked", ctx.poll_count)
        if ctx.resume_data is not None:
            return CompletionCheck(ready=True, output={"score": ctx.resume_data["score"]})
        if ctx.poll_count + 1 >= ready_after:
            return CompletionCheck(ready=True, output={"score": 42})
        return CompletionCheck(ready=False)

    stage = define_async_batch_stage(
        id="score", input=None, output=Scores, execute=submit, check_completion=check
    )
    return define_workflow(id=workflow_id).pipe(stage).build()


async def test_suspended_stage_polls_until_ready(env, store):
    async with running_kernel(env, store, batch_workflow(ready_after=3)) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="batch", input={}))
        run = await kernel.wait_for_run(created.workflow_run_id)
        assert run.status == RunStatus.COMPLETED
        assert run.output == {"score": 42}
        (stage,) = await kernel.list_stages(run.id)
        assert stage.status == RunStatus.COMPLETED
        assert stage.suspended_state == {"batch_id": "b-1"}
        assert stage.poll_interval_ms == 200
        types = [e.event_type for e in await kernel.list_outbox_events(run.id)]
        assert types == [
            "workflow:created",
            "workflow:started",
            "stage:started",
            "stage:suspended",
            "workflow:suspended",
            "stage:completed",
            "workflow:completed",
        ]
        checks = await kernel.annotations.list(run.id, key="batch.checked")
        assert [a.value for a in checks] == [0, 1, 2]  # not-ready checks persist too
        assert len(await kernel.annotations.list(run.id, key="batch.submitted")) == 1


async def test_max_wait_fails_the_stage_and_names_the_wait(env, store):
    workflow = batch_workflow(ready_after=10**6, max_wait=timedelta(milliseconds=700))
    async with running_kernel(env, store, workflow) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="batch", input={}))
        run = await kernel.wait_for_run(created.workflow_run_id)
        assert run.status == RunStatus.FAILED
        (stage,) = await kernel.list_stages(run.id)
        assert stage.status == RunStatus.FAILED
        assert "max_wait" in (stage.error_message or "")
        assert stage.max_wait_until is not None


async def test_external_resume_wakes_the_stage_at_once(env, store):
    workflow = batch_workflow(ready_after=10**6, poll_interval=timedelta(hours=1))
    async with running_kernel(env, store, workflow) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="batch", input={}))
        run_id = created.workflow_run_id
        with pytest.raises(StageNotFoundError):
            await kernel.resume_stage(run_id, "nope", data={"score": 1})
        for _ in range(200):
            stages = await kernel.list_stages(run_id)
            if stages and stages[0].status == RunStatus.SUSPENDED:
                break
            await __import__("asyncio").sleep(0.02)
        await kernel.resume_stage(
            run_id, "score", data={"score": 7}, attributes={"review.by": "alice"}
        )
        run = await kernel.wait_for_run(run_id, timeout=timedelta(seconds=10))
        assert run.status == RunStatus.COMPLETED and run.output == {"score": 7}
        assert [a.value for a in await kernel.annotations.list(run_id, key="review.by")] == [
            "alice"
        ]
        with pytest.raises(InvalidStateError):
            await kernel.resume_stage(run_id, "score", output={"score": 1})


async def test_cancel_of_a_suspended_run_never_completes(env, store):
    workflow = batch_workflow(ready_after=10**6, poll_interval=timedelta(hours=1))
    async with running_kernel(env, store, workflow) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="batch", input={}))
        run_id = created.workflow_run_id
        for _ in range(200):
            stages = await kernel.list_stages(run_id)
            if stages and stages[0].status == RunStatus.SUSPENDED:
                break
            await __import__("asyncio").sleep(0.02)
        result = await kernel.dispatch(RunCancel(workflow_run_id=run_id, reason="no longer needed"))
        assert result.cancelled
        run = await kernel.wait_for_run(run_id)
        assert run.status == RunStatus.CANCELLED
        (stage,) = await kernel.list_stages(run_id)
        assert stage.status == RunStatus.CANCELLED and stage.next_poll_at is None


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "polls",
    [1200, pytest.param(3000, marks=[pytest.mark.reliability, pytest.mark.timeout(900)])],
    ids=lambda n: f"{n}polls",
)
async def test_thousands_of_polls_continue_as_new_with_bounded_history(skipping_env, store, polls):
    """Thousands of polls on the time-skipping server: continue-as-new bounds the history.

    ``make test`` runs 1,200 polls (about 40 s); ``make test-reliability`` runs 3,000.
    """
    workflow = batch_workflow(ready_after=polls, poll_interval=timedelta(minutes=5))
    async with running_kernel(
        skipping_env, store, workflow, continue_as_new_after_events=1000
    ) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="batch", input={}))
        run_id = created.workflow_run_id
        for _ in range(polls + 10):
            run = await kernel.get_run(run_id)
            if run.status in (RunStatus.COMPLETED, RunStatus.FAILED):
                break
            await skipping_env.sleep(timedelta(minutes=5))
        assert run.status == RunStatus.COMPLETED and run.output == {"score": 42}
        checks = await kernel.annotations.list(run_id, key="batch.checked", limit=polls + 10)
        assert [a.value for a in checks] == list(range(polls))  # every poll committed once
        handle = kernel.client.get_workflow_handle(temporal_workflow_id(run_id))
        info = (await handle.describe()).raw_description.workflow_execution_info
        first = kernel.client.get_workflow_handle(handle.id, run_id=info.first_run_id)
        first_history = await first.fetch_history()
        assert info.first_run_id != info.execution.run_id
        assert len(first_history.events) <= 1100
        assert (
            first_history.events[-1].event_type
            == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        )
        assert len((await handle.fetch_history()).events) <= 1100


async def _wait_for_status(kernel: Any, run_id: str, *statuses: RunStatus) -> Any:
    for _ in range(500):
        stages = await kernel.list_stages(run_id)
        if stages and stages[0].status in statuses:
            return stages[0]
        await __import__("asyncio").sleep(0.02)
    raise AssertionError(f"stage never reached {statuses}")


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
async def test_six_hour_poll_interval_and_next_check_in_on_the_time_skipping_server(
    skipping_env, store
):
    """Durable timers skip: a 6-hour poll interval, then a 2-hour next_check_in, in seconds."""

    async def submit(ctx: Any) -> Suspend:
        return Suspend(state={}, poll_interval=timedelta(hours=6))

    async def check(state: dict[str, Any], ctx: Any) -> CompletionCheck:
        if ctx.poll_count == 0:
            return CompletionCheck(ready=False, next_check_in=timedelta(hours=2))
        return CompletionCheck(ready=True, output={"score": 6})

    stage = define_async_batch_stage(
        id="score", input=None, output=Scores, execute=submit, check_completion=check
    )
    workflow = define_workflow(id="slow-batch").pipe(stage).build()
    async with running_kernel(skipping_env, store, workflow) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="slow-batch", input={}))
        run_id = created.workflow_run_id
        suspended = await _wait_for_status(kernel, run_id, RunStatus.SUSPENDED)
        first_poll_at = suspended.next_poll_at
        await skipping_env.sleep(timedelta(hours=6))
        for _ in range(500):  # the first check ran: next_poll_at moved by next_check_in
            (stage_record,) = await kernel.list_stages(run_id)
            if stage_record.next_poll_at != first_poll_at:
                break
            await __import__("asyncio").sleep(0.02)
        # next_check_in counts from the check's end, a few test-clock milliseconds later
        moved = stage_record.next_poll_at - first_poll_at
        assert timedelta(hours=2) <= moved < timedelta(hours=2, minutes=1)
        assert stage_record.status == RunStatus.SUSPENDED
        await skipping_env.sleep(timedelta(hours=2))
        run = await kernel.wait_for_run(run_id, timeout=timedelta(seconds=20))
        assert run.status == RunStatus.COMPLETED and run.output == {"score": 6}
