"""Run semantics on real Temporal, run control: idempotent create, claim, cancel, rerun.

On SQLite and on PostgreSQL (ENGINE-SEMANTICS B5, B33–B35, B37–B41, B44, B49; RunClaimPending
recovery; ``wait_for_run`` timeouts).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import func, select
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError

from engine import (
    InvalidStateError,
    Kernel,
    RunCancel,
    RunClaimPending,
    RunCreate,
    RunNotFoundError,
    RunRerunFrom,
    RunStatus,
    StageContext,
    StageNotFoundError,
    create_worker,
    define_stage,
    define_workflow,
)
from engine.runtime.blobs import SqlBlobStore
from engine.runtime.kernel import temporal_workflow_id
from engine.runtime.storage import StageStorage
from engine.store import SqlStore
from engine.store.contract import NewRun
from engine.store.models import WorkflowRun
from tests.helpers import running_kernel, workflow_closed

WAIT = timedelta(seconds=30)
# Temporal's SDK warns when asked to cancel a local activity that has already finished (a
# benign race when a workflow ends while it still has commits in flight, see the xfail below);
# pytest's filterwarnings=error would turn that warning into a crash of the activity worker.
BENIGN_CANCEL_RACE = pytest.mark.filterwarnings("ignore:Cannot find activity to cancel:UserWarning")


class Doc(BaseModel):
    text: str


def assert_gap_free(events: list[Any]) -> None:
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


async def count_rows(store: SqlStore, model: Any) -> int:
    async with store.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def echo_workflow(calls: list[str]) -> Any:
    @define_stage(id="echo", input=Doc, output=Doc)
    async def echo(ctx: StageContext[Doc, None]) -> Doc:
        calls.append(ctx.workflow_run_id)
        return Doc(text=ctx.input.text.upper())

    return define_workflow(id="echo", input=Doc).pipe(echo).build()


async def temporal_executions(env: Any, run_id: str) -> int:
    """Temporal executions of the run, by workflow id prefix (visibility may lag: re-check)."""
    query = f'WorkflowId STARTS_WITH "{temporal_workflow_id(run_id)}"'
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        found = [w async for w in env.client.list_workflows(query)]
        if found and all(w.status != WorkflowExecutionStatus.RUNNING for w in found):
            return len(found)
        assert loop.time() < deadline, found
        await asyncio.sleep(0.05)


async def test_idempotent_create_sequential_and_concurrent(env: Any, store: SqlStore) -> None:
    calls: list[str] = []
    async with running_kernel(env, store, echo_workflow(calls)) as kernel:
        first = await kernel.dispatch(
            RunCreate(workflow_id="echo", input={"text": "one"}, idempotency_key="same")
        )
        # The same command as a camelCase dict (the same request: the same run).
        again = await kernel.dispatch(
            {
                "type": "run.create",
                "workflowId": "echo",
                "input": {"text": "one"},
                "idempotencyKey": "same",
            }
        )
        assert again.workflow_run_id == first.workflow_run_id
        run = await kernel.wait_for_run(first.workflow_run_id, timeout=WAIT)
        assert run.status == RunStatus.COMPLETED
        assert run.output == {"text": "ONE"}
        # B5: a repeat after completion returns the same run and writes nothing.
        events_before = await kernel.list_outbox_events(run.id)
        repeat = await kernel.dispatch(
            RunCreate(workflow_id="echo", input={"text": "one"}, idempotency_key="same")
        )
        assert repeat.workflow_run_id == run.id
        assert repeat.status == RunStatus.COMPLETED
        assert await kernel.list_outbox_events(run.id) == events_before

        # 20 concurrent dispatches with one key: one run, one workflow, one execution.
        burst = await asyncio.gather(
            *(
                kernel.dispatch(
                    RunCreate(workflow_id="echo", input={"text": "burst"}, idempotency_key="burst")
                )
                for _ in range(20)
            )
        )
        burst_ids = {result.workflow_run_id for result in burst}
        assert len(burst_ids) == 1
        (burst_id,) = burst_ids
        assert burst_id != run.id
        burst_run = await kernel.wait_for_run(burst_id, timeout=WAIT)
        assert burst_run.status == RunStatus.COMPLETED

        assert await count_rows(store, WorkflowRun) == 2
        assert sorted(calls) == sorted([run.id, burst_id])
        for run_id in (run.id, burst_id):
            events = await kernel.list_outbox_events(run_id)
            assert_gap_free(events)
            types = [e.event_type for e in events]
            assert types.count("workflow:created") == 1
            assert types.count("workflow:started") == 1
            assert types.count("workflow:completed") == 1
            assert await temporal_executions(env, run_id) == 1


async def test_claim_pending_starts_a_lost_run_exactly_once(env: Any, store: SqlStore) -> None:
    calls: list[str] = []
    workflow = echo_workflow(calls)
    async with running_kernel(env, store, workflow) as kernel:
        # A crash between the run's commit and the Temporal start leaves it PENDING: write it
        # the way Kernel._create does, without starting anything.
        run_id, created = await store.create_run(
            NewRun(
                workflow_id="echo",
                workflow_name=workflow.name,
                input={"text": "lost"},
                config=workflow.merge_config({}),
                priority=5,
                metadata=None,
                idempotency_key="lost-start",
            ),
            temporal_workflow_id("{run_id}"),
        )
        assert created
        assert (await kernel.get_run(run_id)).status == RunStatus.PENDING

        first = await kernel.dispatch(RunClaimPending())
        second = await kernel.dispatch({"type": "run.claimPending", "maxClaims": 5})
        assert first.started == [run_id]
        assert second.started == []
        run = await kernel.wait_for_run(run_id, timeout=WAIT)
        assert run.status == RunStatus.COMPLETED
        assert run.output == {"text": "LOST"}
        assert calls == [run_id]
        assert (await kernel.dispatch(RunClaimPending())).started == []
        types = [e.event_type for e in await kernel.list_outbox_events(run_id)]
        assert types.count("workflow:started") == 1
        assert await temporal_executions(env, run_id) == 1


async def test_claim_pending_restarts_a_running_run_whose_execution_was_terminated(
    env: Any, store: SqlStore
) -> None:
    """An operator terminated the run's Temporal execution: the side-store still says RUNNING.

    RunClaimPending notices (the execution is closed), hands the run to a new execution at the
    first unfinished group, exactly once, and reports it; earlier groups are not run again.
    """
    calls: list[str] = []
    entered, release = asyncio.Event(), asyncio.Event()

    @define_stage(id="first", input=Doc, output=Doc)
    async def first(ctx: StageContext[Doc, None]) -> Doc:
        calls.append("first")
        return Doc(text=ctx.input.text + "1")

    @define_stage(id="second", input=Doc, output=Doc)
    async def second(ctx: StageContext[Doc, None]) -> Doc:
        calls.append("second")
        if calls.count("second") == 1:
            entered.set()
            await release.wait()  # held until the operator has terminated the execution
        return Doc(text=ctx.input.text + "2")

    workflow = define_workflow(id="restartable", input=Doc).pipe(first).pipe(second).build()
    async with running_kernel(env, store, workflow) as kernel:
        run_id = (
            await kernel.dispatch(RunCreate(workflow_id="restartable", input={"text": "x"}))
        ).workflow_run_id
        await asyncio.wait_for(entered.wait(), timeout=30)
        await env.client.get_workflow_handle(temporal_workflow_id(run_id)).terminate("operator")
        assert (await kernel.get_run(run_id)).status == RunStatus.RUNNING

        claimed = await kernel.dispatch(RunClaimPending())
        assert (claimed.started, claimed.restarted) == ([], [run_id])
        assert (await kernel.dispatch(RunClaimPending())).restarted == []
        run = await kernel.wait_for_run(run_id, timeout=WAIT)
        release.set()  # the terminated execution's activity finishes late: a ghost
        assert run.status == RunStatus.COMPLETED and run.output == {"text": "x12"}
        assert calls == ["first", "second", "second"]  # the completed group is kept
        stages = {s.stage_id: s for s in await kernel.list_stages(run_id)}
        assert {s.status for s in stages.values()} == {RunStatus.COMPLETED}
        assert stages["second"].output_data == {"text": "x12"}
        current = await store.temporal_workflow_id(run_id)
        assert current == f"{temporal_workflow_id(run_id)}-restart-1"
        types = [e.event_type for e in await kernel.list_outbox_events(run_id)]
        assert types.count("workflow:completed") == 1


@BENIGN_CANCEL_RACE
async def test_cancel_running_run(env: Any, store: SqlStore) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    finished = asyncio.Event()

    @define_stage(id="first", input=None)
    async def first(ctx: StageContext[None, None]) -> Any:
        return {"first": True}

    @define_stage(id="blocked", input=None)
    async def blocked(ctx: StageContext[None, None]) -> Any:
        ctx.log("INFO", "waiting for release")
        ctx.annotate("acme.note", "dropped with the outcome")
        ctx.report_progress(0.5, "half")
        entered.set()
        await release.wait()
        finished.set()
        return {"blocked": "late"}

    @define_stage(id="sibling", input=None)
    async def sibling(ctx: StageContext[None, None]) -> Any:
        await release.wait()
        return {"sibling": "late"}

    @define_stage(id="later", input=None)
    async def later(ctx: StageContext[None, None]) -> Any:
        return {}

    workflow = (
        define_workflow(id="cancellable")
        .pipe(first)
        .parallel([blocked, sibling])
        .pipe(later)
        .build()
    )
    async with running_kernel(env, store, workflow) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="cancellable", input={}))
        run_id = created.workflow_run_id
        await asyncio.wait_for(entered.wait(), timeout=30)
        # wait_for_run gives up on a run still active.
        with pytest.raises(TimeoutError):
            await kernel.wait_for_run(run_id, timeout=timedelta(milliseconds=50))

        result = await kernel.dispatch(RunCancel(workflow_run_id=run_id, reason="operator said so"))
        assert result.cancelled is True
        run = await kernel.wait_for_run(run_id, timeout=WAIT)
        assert run.status == RunStatus.CANCELLED
        assert run.completed_at is not None

        # The stage code finishes after the cancel (B35): its outcome must be dropped.
        release.set()
        await asyncio.wait_for(finished.wait(), timeout=30)
        # Once the Temporal workflow has closed, nothing can commit any more.
        await workflow_closed(env.client, run_id)

    stages = {s.stage_id: s for s in await store.list_stages(run_id)}
    assert stages["first"].status == RunStatus.COMPLETED
    for stage_id in ("blocked", "sibling"):
        assert stages[stage_id].status == RunStatus.CANCELLED
        assert stages[stage_id].output_data is None
        assert stages[stage_id].completed_at is not None
        assert stages[stage_id].next_poll_at is None
    assert "later" not in stages
    assert await kernel.annotations.list(run_id) == []
    events = await store.list_outbox_events(run_id)
    assert_gap_free(events)
    assert events[-1].event_type == "workflow:cancelled"
    assert events[-1].payload["reason"] == "operator said so"
    types = [e.event_type for e in events]
    assert types.count("stage:completed") == 1  # only "first", before the cancel
    assert "stage:progress" not in types
    assert not {"workflow:completed", "workflow:failed", "stage:failed"} & set(types)
    assert (await store.get_run(run_id)).status == RunStatus.CANCELLED

    # B34: cancelling again, or an unknown run, is a no-op returning False.
    again = await kernel.dispatch(RunCancel(workflow_run_id=run_id, reason="twice"))
    unknown = await kernel.dispatch({"type": "run.cancel", "workflowRunId": "no-such-run"})
    assert again.cancelled is False and unknown.cancelled is False
    assert (
        again.reason == f"run {run_id} is CANCELLED: only PENDING or RUNNING runs can be cancelled"
    )
    assert unknown.reason == "run no-such-run does not exist"
    assert await store.list_outbox_events(run_id) == events


@BENIGN_CANCEL_RACE
async def test_ghosted_stage_logs_persist(env: Any, store: SqlStore) -> None:
    """B25: a stage that finishes after its run was cancelled keeps its log lines."""
    release = asyncio.Event()
    entered = asyncio.Event()

    @define_stage(id="ghost", input=None)
    async def ghost(ctx: StageContext[None, None]) -> Any:
        ctx.log("WARN", "logged before the cancel")
        entered.set()
        await release.wait()
        ctx.log("INFO", "logged after the cancel")
        return {}

    workflow = define_workflow(id="ghostly").pipe(ghost).build()
    async with running_kernel(env, store, workflow) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="ghostly", input={}))
        run_id = created.workflow_run_id
        await asyncio.wait_for(entered.wait(), timeout=30)
        assert (await kernel.dispatch(RunCancel(workflow_run_id=run_id))).cancelled
        # The stage finishes only after its workflow has closed (or has waited a while for
        # it, as a workflow that waits for its stages would).
        handle = env.client.get_workflow_handle(temporal_workflow_id(run_id))
        with contextlib.suppress(WorkflowFailureError, TimeoutError):
            await asyncio.wait_for(handle.result(), timeout=5)
        release.set()
        await workflow_closed(env.client, run_id)
        # The run stays CANCELLED, the stage too, with nothing of its outcome.
        assert (await kernel.get_run(run_id)).status == RunStatus.CANCELLED
        (record,) = await kernel.list_stages(run_id)
        assert record.status == RunStatus.CANCELLED and record.output_data is None
        logs = [(log.level, log.message) for log in await kernel.list_logs(run_id)]
    assert logs == [("WARN", "logged before the cancel"), ("INFO", "logged after the cancel")]


@BENIGN_CANCEL_RACE
async def test_cancel_of_pending_run(env: Any, store: SqlStore) -> None:
    """B33: a run cancelled before any worker picked it up never runs."""
    calls: list[str] = []
    workflow = echo_workflow(calls)
    kernel = Kernel(
        client=env.client, store=store, workflows=[workflow], task_queue=f"tq-{uuid.uuid4()}"
    )
    created = await kernel.dispatch(RunCreate(workflow_id="echo", input={"text": "x"}))
    run_id = created.workflow_run_id
    result = await kernel.dispatch(RunCancel(workflow_run_id=run_id, reason="changed my mind"))
    assert result.cancelled is True
    run = await kernel.get_run(run_id)
    assert run.status == RunStatus.CANCELLED and run.completed_at is not None
    async with create_worker(kernel):
        await workflow_closed(env.client, run_id)
        assert (await kernel.dispatch(RunClaimPending())).started == []
    assert calls == []
    assert await kernel.get_run(run_id) == run
    assert await kernel.list_stages(run_id) == []
    events = await kernel.list_outbox_events(run_id)
    assert [(e.sequence, e.event_type) for e in events] == [
        (1, "workflow:created"),
        (2, "workflow:cancelled"),
    ]
    assert events[1].payload["reason"] == "changed my mind"


async def test_terminal_and_unknown_runs(env: Any, store: SqlStore) -> None:
    calls: list[str] = []
    async with running_kernel(env, store, echo_workflow(calls)) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="echo", input={"text": "x"}))
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
        assert run.status == RunStatus.COMPLETED
        events = await kernel.list_outbox_events(run.id)
        # B34: cancel of a terminal run changes nothing.
        result = await kernel.dispatch(RunCancel(workflow_run_id=run.id, reason="too late"))
        assert result.cancelled is False
        assert await kernel.get_run(run.id) == run
        assert await kernel.list_outbox_events(run.id) == events
        # Reads of an unknown run raise RunNotFoundError (PYTHON-API.md "Precise points").
        with pytest.raises(RunNotFoundError):
            await kernel.get_run("no-such-run")
        with pytest.raises(RunNotFoundError):
            await kernel.wait_for_run("no-such-run", timeout=timedelta(seconds=1))
        for read in (kernel.list_stages, kernel.list_logs, kernel.list_outbox_events):
            with pytest.raises(RunNotFoundError):
                await read("no-such-run")
        with pytest.raises(RunNotFoundError):
            await kernel.dispatch(RunRerunFrom(workflow_run_id="no-such-run", from_stage_id="echo"))


async def test_rerun_from_a_middle_stage(env: Any, store: SqlStore) -> None:
    calls = {"a": 0, "b": 0, "c": 0}
    seen: list[dict[str, Any]] = []
    gate: dict[str, asyncio.Event] = {}

    @define_stage(id="a", input=Doc, output=Doc)
    async def a(ctx: StageContext[Doc, None]) -> Any:
        calls["a"] += 1
        await ctx.storage.save("notes", {"by": "a"})
        return {"text": ctx.input.text + "-a"}

    @define_stage(id="b", input=Doc, output=Doc)
    async def b(ctx: StageContext[Doc, None]) -> Any:
        calls["b"] += 1
        seen.append(
            {
                "input": ctx.input,
                "context": dict(ctx.workflow_context),
                "attempt": ctx.attempt,
                "stale_blob": await ctx.storage.exists("notes"),
            }
        )
        if calls["b"] == 1:
            await ctx.storage.save("notes", {"by": "b"})
        if "b" in gate:
            gate["entered"].set()
            await gate["b"].wait()
        return {"text": ctx.input.text + f"-b{calls['b']}"}

    @define_stage(id="c", input=Doc, output=Doc)
    async def c(ctx: StageContext[Doc, None]) -> Any:
        calls["c"] += 1
        return {"text": ctx.input.text + "-c"}

    workflow = define_workflow(id="rerunnable", input=Doc).pipe(a).pipe(b).pipe(c).build()
    async with running_kernel(env, store, workflow) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="rerunnable", input={"text": "x"}))
        run_id = created.workflow_run_id
        first_run = await kernel.wait_for_run(run_id, timeout=WAIT)
        assert first_run.status == RunStatus.COMPLETED
        assert first_run.output == {"text": "x-a-b1-c"}
        before = {s.stage_id: s for s in await kernel.list_stages(run_id)}
        events_before = await kernel.list_outbox_events(run_id)

        with pytest.raises(StageNotFoundError, match="not found"):
            await kernel.dispatch(RunRerunFrom(workflow_run_id=run_id, from_stage_id="zzz"))

        gate["b"] = asyncio.Event()
        gate["entered"] = asyncio.Event()
        rerun = await kernel.dispatch(
            {"type": "run.rerunFrom", "workflowRunId": run_id, "fromStageId": "b"}
        )
        assert rerun.workflow_run_id == run_id
        assert rerun.from_stage_id == "b"
        assert sorted(rerun.deleted_stages) == ["b", "c"]
        # B40: RUNNING again, its outcome cleared.
        running = await kernel.get_run(run_id)
        assert running.status == RunStatus.RUNNING
        assert running.output is None and running.completed_at is None
        assert running.duration_ms is None
        assert running.total_cost == 0 and running.total_tokens == 0
        await asyncio.wait_for(gate["entered"].wait(), timeout=30)
        # B37, B49: a rerun of a run that is not COMPLETED/FAILED is refused, writing nothing.
        events_during = await kernel.list_outbox_events(run_id)
        with pytest.raises(InvalidStateError, match="RUNNING"):
            await kernel.dispatch(RunRerunFrom(workflow_run_id=run_id, from_stage_id="a"))
        assert await kernel.list_outbox_events(run_id) == events_during
        gate["b"].set()
        second_run = await kernel.wait_for_run(run_id, timeout=WAIT)

    assert second_run.status == RunStatus.COMPLETED
    assert second_run.output == {"text": "x-a-b2-c"}
    assert calls == {"a": 1, "b": 2, "c": 2}
    # B41: the rerun stage sees the earlier outputs.
    assert seen[1] == {
        "input": Doc(text="x-a"),
        "context": {"a": {"text": "x-a"}},
        "attempt": 1,
        "stale_blob": False,  # B42: the rerun deleted the removed stage's blobs
    }
    assert await StageStorage(SqlBlobStore(store), run_id, "a").load("notes") == {"by": "a"}
    assert not await StageStorage(SqlBlobStore(store), run_id, "b").exists("notes")
    after = {s.stage_id: s for s in await store.list_stages(run_id)}
    # B39: the earlier record is untouched; the rerun ones are new, attempt 1.
    assert after["a"] == before["a"]
    assert after["a"].status == RunStatus.COMPLETED and after["a"].attempt == 0
    for stage_id in ("b", "c"):
        assert after[stage_id].id != before[stage_id].id
        assert after[stage_id].attempt == 1
        assert after[stage_id].status == RunStatus.COMPLETED
    events = await store.list_outbox_events(run_id)
    assert_gap_free(events)
    assert events[: len(events_before)] == events_before
    added = [e.event_type for e in events[len(events_before) :]]
    assert added == [
        "workflow:started",
        "stage:started",
        "stage:completed",
        "stage:started",
        "stage:completed",
        "workflow:completed",
    ]
    assert [e.payload.get("stage_id") for e in events[len(events_before) :]] == [
        None,
        "b",
        "b",
        "c",
        "c",
        None,
    ]
