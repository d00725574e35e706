"""A resume sent while a suspended stage is parked for continue-as-new is carried over.

The case of issue 16: a parallel group of a slow stage and an async-batch stage, with
``continue_as_new_after_events=40``. The batch stage polls until the history is long, then
parks until its group can continue as new; the slow sibling keeps the group open. A resume
sent meanwhile is accepted by the workflow (the stage is SUSPENDED): it must go with the
continue-as-new input and complete the stage in the next execution, its annotations stored
exactly once.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio.api.enums.v1 import EventType

from engine import (
    CompletionCheck,
    RunCreate,
    RunStatus,
    StageContext,
    Suspend,
    define_async_batch_stage,
    define_stage,
    define_workflow,
)
from engine.runtime.kernel import temporal_workflow_id
from tests.helpers import running_kernel

WAIT = timedelta(seconds=60)


class Scores(BaseModel):
    score: int


async def test_resume_of_a_parked_stage_survives_continue_as_new(env: Any, store: Any) -> None:
    release = asyncio.Event()

    @define_stage(id="slow", input=None)
    async def slow(ctx: StageContext[None, None]) -> Any:
        await release.wait()  # keeps the group open while the batch stage parks
        return {"slow": "done"}

    async def submit(ctx: Any) -> Suspend:
        return Suspend(state={"batch_id": "b-1"}, poll_interval=timedelta(milliseconds=50))

    async def check(state: dict[str, Any], ctx: Any) -> CompletionCheck:
        ctx.annotate("batch.checked", ctx.poll_count)
        if ctx.resume_data is not None:
            return CompletionCheck(ready=True, output={"score": ctx.resume_data["score"]})
        return CompletionCheck(ready=False)

    batch = define_async_batch_stage(
        id="score", input=None, output=Scores, execute=submit, check_completion=check
    )
    workflow = define_workflow(id="parked").parallel([slow, batch]).build()
    async with running_kernel(env, store, workflow, continue_as_new_after_events=40) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="parked", input={}, priority=9))
        run_id = created.workflow_run_id
        handle = kernel.client.get_workflow_handle(temporal_workflow_id(run_id))
        # Parked: the history is long and the polls have stopped (the slow sibling runs on).
        loop = asyncio.get_running_loop()
        # Parked means: no check in flight (only the slow sibling's activity is pending) and
        # no new check for 2 s, 40 times the poll interval (a busy CI machine can make one
        # poll take longer than a single sampling interval, so one quiet sample is not proof).
        deadline = loop.time() + 45
        previous, quiet = -1, 0
        while quiet < 5:
            assert loop.time() < deadline, "the batch stage never parked"
            await asyncio.sleep(0.4)
            checks = len(await kernel.annotations.list(run_id, key="batch.checked"))
            events = len((await handle.fetch_history()).events)
            pending = (await handle.describe()).raw_description.pending_activities
            parked = events >= 40 and checks == previous and len(pending) == 1
            quiet = quiet + 1 if parked else 0
            previous = checks
        stages = {s.stage_id: s for s in await kernel.list_stages(run_id)}
        assert stages["score"].status == RunStatus.SUSPENDED
        assert stages["slow"].status == RunStatus.RUNNING

        await kernel.resume_stage(
            run_id, "score", data={"score": 7}, attributes={"approval.by": "alice"}
        )
        release.set()
        run = await kernel.wait_for_run(run_id, timeout=WAIT)

        assert run.status == RunStatus.COMPLETED, run
        assert run.output == {"score": {"score": 7}, "slow": {"slow": "done"}}
        approvals = await kernel.annotations.list(run_id, key="approval.by")
        assert [a.value for a in approvals] == ["alice"]
        stages = {s.stage_id: s for s in await kernel.list_stages(run_id)}
        assert approvals[0].workflow_stage_record_id == stages["score"].id
        assert stages["score"].status == RunStatus.COMPLETED
        assert stages["score"].output_data == {"score": 7}
        # It did continue as new, with the stage parked and its resume pending.
        info = (await handle.describe()).raw_description.workflow_execution_info
        assert info.first_run_id != info.execution.run_id
        first = kernel.client.get_workflow_handle(handle.id, run_id=info.first_run_id)
        last_event = (await first.fetch_history()).events[-1]
        assert last_event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        # The continued execution keeps the run's priority (9: Temporal's key 1), its stages too.
        second = (await handle.fetch_history()).events
        assert second[0].workflow_execution_started_event_attributes.priority.priority_key == 1
        scheduled = [
            e.activity_task_scheduled_event_attributes.priority.priority_key
            for e in second
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        ]
        assert scheduled and set(scheduled) == {1}
        types = [e.event_type for e in await kernel.list_outbox_events(run_id)]
        assert types.count("workflow:completed") == 1
        assert types.count("stage:completed") == 2


async def test_resume_pending_when_the_history_grows_long_is_taken_before_parking(
    env: Any, store: Any
) -> None:
    """A resume accepted while a poll is being checked, the history long once it is done: the
    stage takes the resume instead of parking (the ``wfe.resume-before-park`` patch)."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def submit(ctx: Any) -> Suspend:
        return Suspend(state={}, poll_interval=timedelta(milliseconds=1))

    async def check(state: dict[str, Any], ctx: Any) -> CompletionCheck:
        ctx.annotate("batch.checked", ctx.poll_count)
        if ctx.resume_data is not None:
            return CompletionCheck(ready=True, output={"score": ctx.resume_data["score"]})
        if ctx.poll_count == 1:
            entered.set()
            await release.wait()
        return CompletionCheck(ready=False)

    batch = define_async_batch_stage(
        id="gated", input=None, output=Scores, execute=submit, check_completion=check
    )
    workflow = define_workflow(id="gated").pipe(batch).build()
    async with running_kernel(env, store, workflow, continue_as_new_after_events=12) as kernel:
        run_id = (await kernel.dispatch(RunCreate(workflow_id="gated", input={}))).workflow_run_id
        await asyncio.wait_for(entered.wait(), timeout=30)
        handle = kernel.client.get_workflow_handle(temporal_workflow_id(run_id))
        held = (await handle.describe()).run_id
        await kernel.resume_stage(run_id, "gated", data={"score": 3}, attributes={"by": "bo"})
        release.set()
        run = await kernel.wait_for_run(run_id, timeout=WAIT)
        by = await kernel.annotations.list(run_id, key="by")
        history = await kernel.client.get_workflow_handle(handle.id, run_id=held).fetch_history()

    assert run.status == RunStatus.COMPLETED and run.output == {"score": 3}
    assert [a.value for a in by] == ["bo"]
    # The execution that held the check completed the run, after the patch marker.
    markers = [
        e.marker_recorded_event_attributes.marker_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    ]
    assert "core_patch" in markers
    assert history.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
