"""Values no backend can hold end a run FAILED naming the place, instead of hanging it.

A NUL character, NaN or ±Infinity, a lone surrogate, or nesting past the shared limit, put by a
stage in any place the side-store keeps (output, metrics, log message and metadata, progress,
AI calls, suspended state, ``check_completion`` results), fails on PostgreSQL with ``DataError``
on every retry; SQLite would store it as something JSON tools refuse. Each case runs through a
real worker on both backends: the run ends FAILED within seconds, the stage's error names the
place and the problem, and nothing of the poisoned value is stored.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import select

from engine import (
    AICall,
    CompletionCheck,
    RunCreate,
    RunStatus,
    StageResult,
    Suspend,
    define_async_batch_stage,
    define_stage,
    define_workflow,
)
from engine.store.models import WorkflowLog
from tests.helpers import running_kernel

NAN = math.nan
INF = math.inf


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"next": value}
    return value


def produce(case: str, ctx: Any) -> Any:
    """What the stage does for one case (returns its raw result)."""
    if case == "output-nan":
        return {"score": NAN}
    if case == "output-infinity":
        return {"scores": [1.0, -INF]}
    if case == "output-nul":
        return {"text": "a\x00b"}
    if case == "output-surrogate":
        return {"text": "\udc80"}
    if case == "output-deep":
        return deep(300)
    if case == "metrics-nan":
        return StageResult(output={"ok": True}, custom_metrics={"latency": NAN})
    if case == "log-message-nul":
        ctx.log("INFO", "fine")
        ctx.log("INFO", "bad\x00line")
        return {"ok": True}
    if case == "log-metadata-infinity":
        ctx.log("INFO", "fine", {"ratio": INF})
        return {"ok": True}
    if case == "progress-nan":
        ctx.report_progress(NAN, "half")
        return {"ok": True}
    if case == "ai-call-nul":
        ctx.record_ai_call(AICall(model="m", prompt="p\x00"))
        return {"ok": True}
    if case == "error-nul":
        raise ValueError("broke\x00here")
    raise AssertionError(case)


class Case(BaseModel):
    case: str


@define_stage(id="poison", input=Case)
def poison(ctx: Any) -> Any:
    return produce(ctx.input.case, ctx)


CASES = [
    ("output-nan", "output.score is NaN"),
    ("output-infinity", "output.scores[1] is -Infinity"),
    ("output-nul", "output.text contains a NUL character"),
    ("output-surrogate", "output.text contains a lone surrogate"),
    ("output-deep", "output is nested more than 200 levels deep"),
    ("metrics-nan", "metrics.latency is NaN"),
    ("log-message-nul", "logs[1].message contains a NUL character"),
    ("log-metadata-infinity", "logs[0].metadata.ratio is Infinity"),
    ("progress-nan", "progress[0].progress is NaN"),
    ("ai-call-nul", "ai_calls[0].prompt contains a NUL character"),
]


async def test_each_poison_fails_the_run_naming_the_place(env, store):
    workflow = define_workflow(id="poison").pipe(poison).build()
    async with running_kernel(env, store, workflow) as kernel:
        created = {
            case: await kernel.dispatch(RunCreate(workflow_id="poison", input={"case": case}))
            for case, _ in CASES
        }
        for case, message in CASES:
            run = await kernel.wait_for_run(
                created[case].workflow_run_id, timeout=timedelta(seconds=30)
            )
            assert run.status == RunStatus.FAILED, case
            (stage,) = await kernel.list_stages(run.id)
            assert stage.status == RunStatus.FAILED, case
            assert stage.error_message is not None and message in stage.error_message, (
                case,
                stage.error_message,
            )
            assert stage.output_data is None and not stage.metrics, case

        # What could be stored of the poisoned stage's buffer is kept; the bad line is not.
        logs = await kernel.list_logs(created["log-message-nul"].workflow_run_id)
        messages = [log.message for log in logs]
        assert "fine" in messages and not any("\x00" in m for m in messages)


async def test_an_exception_message_with_nul_is_stored_spelled_out(env, store):
    workflow = define_workflow(id="poison").pipe(poison).build()
    async with running_kernel(env, store, workflow) as kernel:
        created = await kernel.dispatch(
            RunCreate(workflow_id="poison", input={"case": "error-nul"})
        )
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=timedelta(seconds=30))
        assert run.status == RunStatus.FAILED
        (stage,) = await kernel.list_stages(run.id)
        assert stage.error_message == "broke\\x00here"
        async with store.transaction() as session:
            errors = (
                await session.scalars(
                    select(WorkflowLog.message).where(
                        WorkflowLog.workflow_run_id == run.id, WorkflowLog.level == "ERROR"
                    )
                )
            ).all()
        assert errors == ["Stage poison failed: broke\\x00here"]


def batch_workflow(where: str) -> Any:
    async def submit(ctx: Any) -> Suspend:
        if where == "state":
            return Suspend(state={"job": NAN}, poll_interval=timedelta(milliseconds=100))
        return Suspend(state={"job": "j-1"}, poll_interval=timedelta(milliseconds=100))

    async def check(state: Any, ctx: Any) -> CompletionCheck:
        if where == "check-output":
            return CompletionCheck(ready=True, output={"rows": [1, NAN]})
        if where == "check-metrics":
            return CompletionCheck(ready=True, output={"rows": []}, metrics={"eta": INF})
        if where == "check-error":
            return CompletionCheck(ready=True, error="job\x00failed")
        return CompletionCheck(ready=True, output={"rows": []})

    stage = define_async_batch_stage(id="batch", execute=submit, check_completion=check)
    return define_workflow(id=f"batch-{where}").pipe(stage).build()


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("state", "suspended_state.job is NaN"),
        ("check-output", "output.rows[1] is NaN"),
        ("check-metrics", "metrics.eta is Infinity"),
        ("check-error", "job\\x00failed"),
    ],
)
async def test_async_batch_poison_fails_the_run(env, store, where, message):
    workflow = batch_workflow(where)
    async with running_kernel(env, store, workflow) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id=workflow.id, input={}))
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=timedelta(seconds=30))
        assert run.status == RunStatus.FAILED
        (stage,) = await kernel.list_stages(run.id)
        assert stage.status == RunStatus.FAILED
        assert stage.error_message is not None and message in stage.error_message
