"""What a Temporal user sees of a run, read back the way the Temporal UI reads it.

Each run executes under its engine workflow's id as Workflow Type, with the run's input as its
first argument and the run's output as its result; a failed run fails its execution with the
stage's error. Everything is read through the client (``describe()``, the history, the
result) from the real dev server, as ``temporal workflow describe`` does. The executions are
then replayed (inside the sandbox) against the current code.
"""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer

from engine import RunCreate, RunRerunFrom, RunStatus, StageContext, define_stage, define_workflow
from engine.runtime.kernel import temporal_workflow_id
from engine.store import SqlStore
from engine.worker import sandboxed_runner
from temporal_workflows import PipelineWorkflow, RunWorkflow
from tests.helpers import running_kernel, triage_workflow


def replayer() -> Replayer:
    return Replayer(
        workflows=[PipelineWorkflow, RunWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=sandboxed_runner(),
    )


async def started_input(handle: WorkflowHandle[Any, Any]) -> list[Any]:
    """The execution's Input as the UI shows it: its arguments, decoded."""
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    return [
        pydantic_data_converter.payload_converter.from_payload(p) for p in started.input.payloads
    ]


async def test_run_shows_its_type_input_output_and_link(env: Any, store: SqlStore) -> None:
    viewer = "http://127.0.0.1:8234"
    async with running_kernel(env, store, triage_workflow(), viewer_url=viewer) as kernel:
        created = await kernel.dispatch(
            RunCreate(workflow_id="ticket-triage", input={"text": "VPN down, urgent"})
        )
        run_id = created.workflow_run_id
        run = await kernel.wait_for_run(run_id)
        handle = env.client.get_workflow_handle(temporal_workflow_id(run_id))
        result = await handle.result()
        description = await handle.describe()
        arguments = await started_input(handle)
        await kernel.dispatch(RunRerunFrom(workflow_run_id=run_id, from_stage_id="route"))
        rerun = env.client.get_workflow_handle(temporal_workflow_id(run_id, 1))
        rerun_result = await rerun.result()
        rerun_description = await rerun.describe()
        rerun_arguments = await started_input(rerun)

    assert run.status == RunStatus.COMPLETED
    assert description.workflow_type == "ticket-triage"
    assert rerun_description.workflow_type == "ticket-triage"
    # What the user passed comes first; the engine's internals after it, without a copy of it.
    assert arguments[0] == {"text": "VPN down, urgent"}
    assert arguments[1]["run_id"] == run_id
    assert arguments[1]["plan"]["run_input"] is None
    assert rerun_arguments[0] == {"text": "VPN down, urgent"}
    # The result is the run's output, as the side-store has it.
    assert result == run.output == {"route": "queue-high", "seen": ["classify", "enrich", "notify"]}
    assert rerun_result == run.output
    details = await description.static_details()
    assert f"Provenance: {viewer}/runs/{run_id}" in (details or "")
    assert "ticket-triage" in (await description.static_summary() or "")

    for replayed in (handle, rerun):
        outcome = await replayer().replay_workflow(await replayed.fetch_history())
        assert outcome.replay_failure is None


async def test_failed_run_fails_its_execution(env: Any, store: SqlStore) -> None:
    @define_stage(id="explode", input=None)
    async def explode(ctx: StageContext[None, None]) -> Any:
        raise RuntimeError("exploded on purpose")

    workflow = define_workflow(id="explodes").pipe(explode).build()
    async with running_kernel(env, store, workflow) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="explodes", input={"n": 1}))
        run = await kernel.wait_for_run(created.workflow_run_id)
        handle = env.client.get_workflow_handle(temporal_workflow_id(run.id))
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        history = await handle.fetch_history()

    assert run.status == RunStatus.FAILED
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "WfeRunFailed"
    assert "exploded on purpose" in cause.message
    outcome = await replayer().replay_workflow(history)
    assert outcome.replay_failure is None


def test_legacy_type_is_not_a_workflow_id(env: Any, store: SqlStore) -> None:
    from engine import Kernel

    with pytest.raises(ValueError, match="legacy Workflow Type"):
        Kernel(
            client=env.client,
            store=store,
            workflows=[define_workflow(id="wfe.run").pipe(_noop()).build()],
        )


def _noop() -> Any:
    @define_stage(id="noop", input=None)
    async def noop(ctx: StageContext[None, None]) -> Any:
        return None

    return noop
