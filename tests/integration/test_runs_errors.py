"""Run semantics on real Temporal, error paths: creation checks, stage failures, retries.

On SQLite and on PostgreSQL (ENGINE-SEMANTICS B2–B4, B7, B11, B14, B16, B19–B21, B25, B43,
B49, and the retry rules of PYTHON-API.md "Outcomes and retries").
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import func, select
from temporalio.common import RetryPolicy

from engine import (
    InvalidConfigError,
    InvalidInputError,
    InvalidStateError,
    Kernel,
    RunCreate,
    RunRerunFrom,
    RunStatus,
    StageContext,
    StageNotFoundError,
    WorkflowNotFoundError,
    create_worker,
    define_stage,
    define_workflow,
)
from engine.store import SqlStore
from engine.store.models import (
    IdempotencyKey,
    OutboxEvent,
    WorkflowAnnotation,
    WorkflowLog,
    WorkflowRun,
    WorkflowStage,
)
from tests.helpers import running_kernel

WAIT = timedelta(seconds=30)
FAST_RETRIES = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(milliseconds=10))


class Doc(BaseModel):
    text: str


class Words(BaseModel):
    words: list[str]


class CountIn(BaseModel):
    count: int


class SplitConfig(BaseModel):
    sep: str = " "
    limit: int = 10


async def table_counts(store: SqlStore) -> dict[str, int]:
    models = (WorkflowRun, WorkflowStage, OutboxEvent, WorkflowAnnotation, WorkflowLog)
    async with store.sessions() as session:
        counts = {
            m.__tablename__: int(await session.scalar(select(func.count()).select_from(m)) or 0)
            for m in (*models, IdempotencyKey)
        }
    return counts


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Re-check a condition (from inside stage code) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def assert_gap_free(events: list[Any]) -> None:
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


def split_stage() -> Any:
    @define_stage(id="split", input=Doc, output=Words, config=SplitConfig)
    def split(ctx: StageContext[Doc, SplitConfig]) -> Words:
        return Words(words=ctx.input.text.split(ctx.config.sep))

    return split


async def test_run_create_rejects_bad_requests_and_writes_nothing(
    env: Any, store: SqlStore
) -> None:
    workflow = define_workflow(id="checked", input=Doc).pipe(split_stage()).build()
    async with running_kernel(env, store, workflow) as kernel:
        # B2: unknown workflow.
        with pytest.raises(WorkflowNotFoundError, match="Workflow nope not found in registry"):
            await kernel.dispatch(
                RunCreate(workflow_id="nope", input={"text": "x"}, idempotency_key="key-1")
            )
        # B3: input failing the workflow's input model names the field.
        with pytest.raises(InvalidInputError) as bad_input:
            await kernel.dispatch(
                RunCreate(workflow_id="checked", input={"text": 5}, idempotency_key="key-1")
            )
        assert str(bad_input.value).startswith("Invalid workflow input")
        assert "text" in str(bad_input.value)
        # B4: a config slice failing its stage's model names the stage and the field.
        with pytest.raises(InvalidConfigError) as bad_config:
            await kernel.dispatch(
                {
                    "type": "run.create",
                    "workflowId": "checked",
                    "input": {"text": "x"},
                    "config": {"split": {"limit": "many"}},
                    "idempotencyKey": "key-1",
                }
            )
        assert str(bad_config.value).startswith("Invalid workflow config")
        assert "split" in str(bad_config.value) and "limit" in str(bad_config.value)
        assert bad_config.value.stage_id == "split"
        with pytest.raises(InvalidConfigError, match="ghost") as unknown_stage:
            await kernel.dispatch(
                RunCreate(workflow_id="checked", input={"text": "x"}, config={"ghost": {}})
            )
        assert unknown_stage.value.stage_id == "ghost"
        # Storable, but too deep for Temporal's payloads once inside the workflow's plan (found
        # by the property tests: the run row was written, then the start failed).
        deep: Any = "bottom"
        for _ in range(254):
            deep = [deep]
        with pytest.raises(InvalidInputError, match="nested more than 200 levels"):
            await kernel.dispatch(
                RunCreate(workflow_id="checked", input={"text": "x", "deep": deep})
            )
        # Nothing was written by any of them (B2, B49), the key included.
        assert set((await table_counts(store)).values()) == {0}

        # B7: the failed attempts left the key free.
        created = await kernel.dispatch(
            RunCreate(workflow_id="checked", input={"text": "a b"}, idempotency_key="key-1")
        )
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
        assert run.status == RunStatus.COMPLETED
        assert run.output == {"words": ["a", "b"]}


async def test_stage_exception_fails_stage_and_run_on_first_try(env: Any, store: SqlStore) -> None:
    calls = {"boom": 0, "never": 0}

    @define_stage(id="boom", input=Words)
    async def boom(ctx: StageContext[Words, None]) -> Any:
        calls["boom"] += 1
        ctx.log("INFO", "about to fail")
        ctx.report_progress(0.3, "partway")
        ctx.annotate("acme.note", "before the crash")
        raise RuntimeError("kaput")

    @define_stage(id="never", input=None)
    async def never(ctx: StageContext[None, None]) -> Any:
        calls["never"] += 1
        return {}

    workflow = define_workflow(id="crash", input=Doc).pipe(split_stage()).pipe(boom).pipe(never)
    async with running_kernel(env, store, workflow.build()) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="crash", input={"text": "a b"}))
        run_id = created.workflow_run_id
        run = await kernel.wait_for_run(run_id, timeout=WAIT)

        # B19: the stage fails on the first try with its message.
        assert calls == {"boom": 1, "never": 0}
        stages = {s.stage_id: s for s in await kernel.list_stages(run_id)}
        assert run.status == RunStatus.FAILED, stages
        assert run.completed_at is not None
        assert run.output is None
        assert stages["split"].status == RunStatus.COMPLETED
        assert stages["boom"].status == RunStatus.FAILED
        assert stages["boom"].error_message == "kaput"
        assert stages["boom"].completed_at is not None
        # B20: no later group started.
        assert "never" not in stages
        events = await kernel.list_outbox_events(run_id)
        assert_gap_free(events)
        types = [e.event_type for e in events]
        assert not any(e.payload.get("stage_id") == "never" for e in events)
        assert types[-3:] == ["stage:progress", "stage:failed", "workflow:failed"]
        assert events[-2].payload["stage_id"] == "boom"
        assert events[-2].payload["error"] == "kaput"
        assert events[-1].payload["error"] == "kaput"
        assert "workflow:completed" not in types
        # B25: the stage's own log survives, and an ERROR log names the failure.
        logs = [(log.stage_id, log.level, log.message) for log in await kernel.list_logs(run_id)]
        assert ("boom", "INFO", "about to fail") in logs
        assert [entry for entry in logs if entry[1] == "ERROR"] == [
            ("boom", "ERROR", "Stage boom failed: kaput")
        ]
        # Annotations made before the exception are kept with the FAILED stage.
        (note,) = await kernel.annotations.list(run_id)
        assert (note.key, note.value, note.scope_id) == ("acme.note", "before the crash", "boom")
        assert note.workflow_stage_record_id == stages["boom"].id

        # B43, B49: a rerun past the failed stage is refused and rolls back completely.
        before = await table_counts(store)
        with pytest.raises(InvalidStateError, match="previous stages have not been executed"):
            await kernel.dispatch(RunRerunFrom(workflow_run_id=run_id, from_stage_id="never"))
        with pytest.raises(StageNotFoundError, match="not found"):
            await kernel.dispatch(RunRerunFrom(workflow_run_id=run_id, from_stage_id="nope"))
        assert await table_counts(store) == before
        assert (await kernel.get_run(run_id)).status == RunStatus.FAILED


async def test_input_and_output_failing_their_models_fail_the_stage(
    env: Any, store: SqlStore
) -> None:
    calls = {"needs-int": 0}

    @define_stage(id="emit", input=None)
    async def emit(ctx: StageContext[None, None]) -> Any:
        return {"count": "lots"}  # no output model: anything JSON-able passes

    @define_stage(id="needs-int", input=CountIn, retry_policy=FAST_RETRIES)
    async def needs_int(ctx: StageContext[CountIn, None]) -> Any:
        calls["needs-int"] += 1
        return {}

    @define_stage(id="bad-output", input=None, output=Words)
    def bad_output(ctx: StageContext[None, None]) -> Any:
        return {"words": "not a list"}

    @define_stage(id="asks", input=None)
    async def asks(ctx: StageContext[None, None]) -> Any:
        assert ctx.optional("ghost") is None
        return ctx.require("ghost")

    bad_input_wf = define_workflow(id="bad-input").pipe(emit).pipe(needs_int).build()
    bad_output_wf = define_workflow(id="bad-output").pipe(bad_output).build()
    missing_wf = define_workflow(id="missing").pipe(emit).pipe(asks).build()
    workflows = (bad_input_wf, bad_output_wf, missing_wf)
    async with running_kernel(env, store, *workflows) as kernel:
        first, second, third = await asyncio.gather(
            kernel.dispatch(RunCreate(workflow_id="bad-input", input={})),
            kernel.dispatch(RunCreate(workflow_id="bad-output", input={})),
            kernel.dispatch(RunCreate(workflow_id="missing", input={})),
        )
        for created, stage_id, field in (
            (first, "needs-int", "count"),
            (second, "bad-output", "words"),
        ):
            run = await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
            assert run.status == RunStatus.FAILED
            stages = {s.stage_id: s for s in await kernel.list_stages(run.id)}
            record = stages[stage_id]
            assert record.status == RunStatus.FAILED
            assert record.error_message is not None
            assert stage_id in record.error_message and f"{field}:" in record.error_message
            assert record.output_data is None
            events = await kernel.list_outbox_events(run.id)
            assert_gap_free(events)
            assert events[-1].event_type == "workflow:failed"
            assert events[-1].payload["error"] == record.error_message
        # Invalid input is not retried, even under a retry policy, and never reaches execute.
        assert calls["needs-int"] == 0
        # B14: require() of a stage with no output fails the stage, listing what is there.
        run = await kernel.wait_for_run(third.workflow_run_id, timeout=WAIT)
        assert run.status == RunStatus.FAILED
        stages = {s.stage_id: s for s in await kernel.list_stages(run.id)}
        assert stages["emit"].status == RunStatus.COMPLETED
        assert stages["asks"].status == RunStatus.FAILED
        assert stages["asks"].error_message == (
            "Stage 'ghost' has no output in the workflow context (available: emit)"
        )


async def test_retry_policy_and_parallel_failure_after_siblings_settle(
    env: Any, store: SqlStore
) -> None:
    calls = {"flaky": 0, "doomed": 0, "patient": 0, "after": 0}
    attempts_seen: list[int] = []
    observed: dict[str, Any] = {}

    @define_stage(id="flaky", input=None, retry_policy=FAST_RETRIES)
    def flaky(ctx: StageContext[None, None]) -> Any:
        calls["flaky"] += 1
        attempts_seen.append(ctx.activity_attempt)
        if calls["flaky"] < 3:
            raise ConnectionError(f"flake {calls['flaky']}")
        return {"flaky": "ok"}

    @define_stage(id="doomed", input=None, retry_policy=FAST_RETRIES)
    async def doomed(ctx: StageContext[None, None]) -> Any:
        calls["doomed"] += 1
        raise ValueError(f"nope {calls['doomed']}")

    @define_stage(id="patient", input=None)
    async def patient(ctx: StageContext[None, None]) -> Any:
        calls["patient"] += 1

        async def sibling_failed() -> bool:
            stages = {s.stage_id: s for s in await store.list_stages(ctx.workflow_run_id)}
            return stages["doomed"].status == RunStatus.FAILED

        await until(sibling_failed)
        observed["run_status"] = (await store.get_run(ctx.workflow_run_id)).status
        return {"patient": "done"}

    @define_stage(id="after", input=None)
    async def after(ctx: StageContext[None, None]) -> Any:
        calls["after"] += 1
        return {}

    workflow = define_workflow(id="retries").parallel([flaky, doomed, patient]).pipe(after).build()
    async with running_kernel(env, store, workflow) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="retries", input={}))
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
        run_id = run.id

    assert calls == {"flaky": 3, "doomed": 3, "patient": 1, "after": 0}
    assert attempts_seen == [1, 2, 3]
    stages = {s.stage_id: s for s in await store.list_stages(run_id)}
    assert run.status == RunStatus.FAILED, stages
    # The retried stage succeeded on attempt 3; the exhausted one failed with its last error.
    assert stages["flaky"].status == RunStatus.COMPLETED
    assert stages["flaky"].output_data == {"flaky": "ok"}
    assert stages["doomed"].status == RunStatus.FAILED
    assert stages["doomed"].error_message == "nope 3"
    # B21: the run stayed RUNNING until the sibling settled, and the sibling's result is kept.
    assert observed["run_status"] == RunStatus.RUNNING
    assert stages["patient"].status == RunStatus.COMPLETED
    assert stages["patient"].output_data == {"patient": "done"}
    assert "after" not in stages
    events = await store.list_outbox_events(run_id)
    assert_gap_free(events)
    assert events[-1].event_type == "workflow:failed"
    assert events[-1].payload["error"] == "nope 3"
    outcomes = [e for e in events if e.event_type in ("stage:completed", "stage:failed")]
    assert sorted(e.payload["stage_id"] for e in outcomes) == ["doomed", "flaky", "patient"]
    # Only one stage:failed, for the final attempt.
    assert [e.payload["stage_id"] for e in events if e.event_type == "stage:failed"] == ["doomed"]
    assert [e.event_type for e in events].count("stage:started") == 3


async def test_unregistered_workflow_fails_the_run_at_start(env: Any, store: SqlStore) -> None:
    """B11: the worker's registry lacks the workflow the run was created for."""
    workflow = define_workflow(id="elsewhere").pipe(split_stage()).build()
    task_queue = f"tq-{uuid.uuid4()}"
    creator = Kernel(client=env.client, store=store, workflows=[workflow], task_queue=task_queue)
    executor = Kernel(client=env.client, store=store, workflows=[], task_queue=task_queue)
    created = await creator.dispatch(RunCreate(workflow_id="elsewhere", input={"text": "x"}))
    async with create_worker(executor):
        run = await executor.wait_for_run(created.workflow_run_id, timeout=WAIT)
    assert run.status == RunStatus.FAILED
    assert run.output["error"]["code"] == "WORKFLOW_NOT_FOUND"
    assert "elsewhere" in run.output["error"]["message"]
    assert await store.list_stages(run.id) == []
    events = await store.list_outbox_events(run.id)
    assert [e.event_type for e in events] == ["workflow:created", "workflow:failed"]
    assert_gap_free(events)
    assert "elsewhere" in events[-1].payload["error"]
    assert [log.level for log in await store.list_logs(run.id)] == ["ERROR"]
