"""Replay determinism of ``RunWorkflow``.

The committed histories in ``tests/histories`` (written by ``tests/histories/record.py``) must
replay against the current workflow code without a nondeterminism error: those of the current
command sequence (each stage one activity that commits its outcome), and those recorded when
every stage commit was a local activity (``v1-commit-local-activity``), which workflows
started by that version still in flight depend on. Recorded histories of the other paths
(suspend and poll, external resume, continue-as-new with a parked stage and its resume, a
resume acted on before parking, cancel during a stage, a rerun) replay too, and one recorded
before the ``wfe.resume-before-park`` patch proves that the patch keeps older executions
replaying. A run with an async-batch stage (durable timers, polls and an external resume
Update) runs here and is replayed at once.
All of these are of the legacy Workflow Type ``wfe.run``; runs now execute under their engine
workflow's id (``v3-pipeline-type``, and ``test_temporal_view`` replays fresh ones), and
workers keep serving ``wfe.run`` for the executions started before.

Workers run the workflow outside Temporal's sandbox (see :mod:`engine.worker.create`); here it runs
and replays inside it, so a clock, I/O or randomness slipping into the workflow fails these
tests.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

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
from engine.store import SqlStore
from engine.worker import sandboxed_runner
from temporal_workflows.pipeline import PipelineWorkflow
from temporal_workflows.run import RunWorkflow
from tests.helpers import running_kernel

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
RECORDED = ["sequential", "parallel", "failing"]
V1 = "v1-commit-local-activity"
LEGACY_TYPE = "v2-legacy-type"
"""The current command sequence under the single Workflow Type ``wfe.run``."""
PIPELINE_TYPE = "v3-pipeline-type"
"""Each run under its engine workflow's id as Workflow Type (``PipelineWorkflow``)."""


def replayer() -> Replayer:
    return Replayer(
        workflows=[PipelineWorkflow, RunWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=sandboxed_runner(),
    )


@pytest.mark.parametrize("version", ["current", V1, LEGACY_TYPE, PIPELINE_TYPE])
@pytest.mark.parametrize("name", RECORDED)
async def test_recorded_history_replays(name: str, version: str) -> None:
    directory = HISTORIES if version == "current" else HISTORIES / version
    text = (directory / f"{name}.json").read_text()
    history = WorkflowHistory.from_json(f"wfe-run-{name}", text)
    # The recording is what it claims to be (guards against an empty or truncated file).
    events = json.loads(text)["events"]
    kinds = [e["eventType"] for e in events]
    assert kinds[0] == "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED"
    workflow_type = events[0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"]
    if version in (V1, LEGACY_TYPE):
        assert workflow_type == "wfe.run"
        assert kinds[-1] == "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED"
    if version == PIPELINE_TYPE:
        assert workflow_type != "wfe.run"
    if workflow_type != "wfe.run":  # a failed run fails its execution
        last = "FAILED" if name == "failing" else "COMPLETED"
        assert kinds[-1] == f"EVENT_TYPE_WORKFLOW_EXECUTION_{last}"
    scheduled = kinds.count("EVENT_TYPE_ACTIVITY_TASK_SCHEDULED")
    assert scheduled == {"sequential": 2, "parallel": 4, "failing": 2}[name]
    local_activities = kinds.count("EVENT_TYPE_MARKER_RECORDED")
    if version == V1:
        assert local_activities >= 1 + scheduled + 1  # start, one commit per stage, finalize
    else:
        # Only the failing run's finalize: the first stages start the run, each stage commits
        # in its activity, and the commit that completes the last group completes the run.
        assert local_activities == (1 if name == "failing" else 0)

    result = await replayer().replay_workflow(history)
    assert result.replay_failure is None


# Histories of the paths with timers, Updates and more than one execution (see record.py):
# the last event, and what each must contain to be the path it is named for.
PATHS: dict[str, tuple[str, set[str]]] = {
    "suspend-poll": ("COMPLETED", {"TIMER_STARTED", "wfe.check_completion"}),
    "resume": ("COMPLETED", {"WORKFLOW_EXECUTION_UPDATE_ACCEPTED", "TIMER_STARTED"}),
    "continue-as-new-1": ("CONTINUED_AS_NEW", {"WORKFLOW_EXECUTION_UPDATE_ACCEPTED"}),
    "continue-as-new-2": ("COMPLETED", {"wfe.check_completion", "core_local_activity"}),
    "resume-before-park": ("COMPLETED", {"core_patch", "WORKFLOW_EXECUTION_UPDATE_ACCEPTED"}),
    "cancel": ("CANCELED", {"ACTIVITY_TASK_CANCEL_REQUESTED", "core_local_activity"}),
    "rerun": ("COMPLETED", {"core_local_activity", "wfe.execute_stage"}),
}
V0_PATCH = "v0-before-resume-patch"


def _kinds(text: str) -> tuple[list[str], set[str]]:
    """Event types (without their prefix) and the names of activities and markers."""
    kinds, names = [], set()
    for event in json.loads(text)["events"]:
        kinds.append(event["eventType"].removeprefix("EVENT_TYPE_"))
        names.add(event["eventType"].removeprefix("EVENT_TYPE_"))
        scheduled = event.get("activityTaskScheduledEventAttributes")
        if scheduled:
            names.add(scheduled["activityType"]["name"])
        marker = event.get("markerRecordedEventAttributes")
        if marker:
            names.add(marker["markerName"])
    return kinds, names


@pytest.mark.parametrize("name", sorted(PATHS))
async def test_recorded_path_replays(name: str) -> None:
    text = (HISTORIES / f"{name}.json").read_text()
    kinds, names = _kinds(text)
    last, needed = PATHS[name]
    assert kinds[0] == "WORKFLOW_EXECUTION_STARTED"
    assert kinds[-1] == f"WORKFLOW_EXECUTION_{last}"
    assert needed <= names, needed - names
    result = await replayer().replay_workflow(WorkflowHistory.from_json(f"wfe-run-{name}", text))
    assert result.replay_failure is None


async def test_history_from_before_the_resume_patch_parks_again_on_replay() -> None:
    """Recorded by the code before ``wfe.resume-before-park``: the resume was pending when
    the stage parked, and the execution continued as new. The patched code must replay it
    the same way (``workflow.patched`` is False without the marker)."""
    text = (HISTORIES / V0_PATCH / "resume-before-park.json").read_text()
    kinds, names = _kinds(text)
    assert kinds[-1] == "WORKFLOW_EXECUTION_CONTINUED_AS_NEW"
    assert "WORKFLOW_EXECUTION_UPDATE_ACCEPTED" in names and "core_patch" not in names
    history = WorkflowHistory.from_json("wfe-run-v0", text)
    assert (await replayer().replay_workflow(history)).replay_failure is None


class Scores(BaseModel):
    scores: list[int]


async def test_async_batch_run_replays(env: Any, store: SqlStore) -> None:
    polls: list[int] = []

    @define_stage(id="prepare", input=None)
    async def prepare(ctx: StageContext[None, None]) -> Any:
        return {"items": 3}

    async def submit(ctx: StageContext[None, None]) -> Any:
        return Suspend(state={"batch": "b-1"}, poll_interval=timedelta(milliseconds=50))

    async def check(state: dict[str, Any], ctx: Any) -> CompletionCheck:
        polls.append(ctx.poll_count)
        ctx.annotate("acme.poll", ctx.poll_count)
        if ctx.poll_count < 2:
            return CompletionCheck(ready=False, next_check_in=timedelta(milliseconds=20))
        return CompletionCheck(ready=True, output={"scores": [1, 2, 3]})

    async def wait_for_human(ctx: StageContext[Scores, None]) -> Any:
        return Suspend(state={"ticket": "t-1"}, poll_interval=timedelta(hours=1))

    async def never_ready(state: dict[str, Any], ctx: Any) -> CompletionCheck:
        return CompletionCheck(ready=False)

    batch = define_async_batch_stage(
        id="batch", input=None, output=Scores, execute=submit, check_completion=check
    )
    human = define_async_batch_stage(
        id="human", input=Scores, execute=wait_for_human, check_completion=never_ready
    )
    workflow = define_workflow(id="batchy").pipe(prepare).pipe(batch).pipe(human).build()
    sandboxed = {"workflow_runner": sandboxed_runner()}
    async with running_kernel(env, store, workflow, worker_options=sandboxed) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="batchy", input={}))
        run_id = created.workflow_run_id
        handle = env.client.get_workflow_handle(temporal_workflow_id(run_id))
        # Resume the second stage from outside (an Update) once the workflow holds it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while "human" not in await handle.query(RunWorkflow.suspended_stages):
            assert loop.time() < deadline, await kernel.list_stages(run_id)
            await asyncio.sleep(0.02)
        await kernel.resume_stage(run_id, "human", output={"approved": True})
        run = await kernel.wait_for_run(run_id, timeout=timedelta(seconds=30))
        await handle.result()
        history = await handle.fetch_history()

    assert run.status == RunStatus.COMPLETED, await store.list_stages(run_id)
    assert run.output == {"approved": True}
    assert polls == [0, 1, 2]
    kinds = [e["eventType"] for e in history.to_json_dict()["events"]]
    assert "EVENT_TYPE_TIMER_STARTED" in kinds  # durable timers between polls
    assert "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED" in kinds
    result = await replayer().replay_workflow(history)
    assert result.replay_failure is None
