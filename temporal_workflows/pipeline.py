"""The run workflow as Temporal users see it: one Workflow Type per engine workflow.

:class:`PipelineWorkflow` is a dynamic workflow definition, so a run of engine workflow
``ticket-triage`` executes as Workflow Type ``ticket-triage``: the Temporal UI and
``temporal workflow list --query 'WorkflowType="ticket-triage"'`` tell pipelines apart. It
drives the run exactly as :class:`~temporal_workflows.run.RunWorkflow` does (it is one), and
differs only in what Temporal shows:

- **Input**: the run's input comes first (what the user passed, e.g. ``{"text": "VPN
  down"}``); the engine's internals (:class:`RunWorkflowInput`) follow as the second argument.
  The plan in the internals leaves the run input out: the first argument is it.
- **Result**: the run's output, or for an output stored by reference its reference
  (``{"_artifact_key": "<stage>/__output__"}``). A run that failed fails the execution with
  the stage's error; a run cancelled in the side-store fails it as ``WfeRunCancelled``.

Workflows started as ``wfe.run`` (before this definition existed) still run and replay on
:class:`RunWorkflow`, which the worker keeps registering.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

from temporal_workflows.run import RunWorkflow

with workflow.unsafe.imports_passed_through():
    from engine.core.payloads import RunWorkflowInput
    from engine.core.records import RunEnd

__all__ = ["RUN_CANCELLED_ERROR", "RUN_FAILED_ERROR", "PipelineWorkflow"]
RUN_FAILED_ERROR = "WfeRunFailed"
"""Error type of an execution whose run FAILED."""
RUN_CANCELLED_ERROR = "WfeRunCancelled"
"""Error type of an execution that stopped because its run was cancelled in the side-store."""


@workflow.defn(dynamic=True)
class PipelineWorkflow(RunWorkflow):
    """Drives one engine run under the Workflow Type named after its engine workflow."""

    def __init__(self) -> None:
        super().__init__()
        self._run_input: Any = None

    @workflow.run
    async def run(self, args: Sequence[RawValue]) -> Any:  # type: ignore[override]
        """``args``: the run's input, then the engine's :class:`RunWorkflowInput`."""
        if len(args) != 2:
            raise ApplicationError(
                f"workflow type {workflow.info().workflow_type!r} takes two arguments (the "
                f"run's input, then the engine's RunWorkflowInput), got {len(args)}",
                non_retryable=True,
            )
        converter = workflow.payload_converter()
        self._run_input = converter.from_payload(args[0].payload)
        input = converter.from_payload(args[1].payload, RunWorkflowInput)
        if input.plan is not None:
            input = input.model_copy(
                update={"plan": input.plan.model_copy(update={"run_input": self._run_input})}
            )
        status = await super().run(input)
        if status == RunEnd.COMPLETED:
            return self._output
        run = f"run {input.run_id} ({input.workflow_id})"
        if status == RunEnd.FAILED:
            raise ApplicationError(
                f"{run} failed: {self._error or 'see its stages in the side-store'}",
                type=RUN_FAILED_ERROR,
                non_retryable=True,
            )
        raise ApplicationError(
            f"{run} was cancelled (or is no longer running) in the side-store",
            type=RUN_CANCELLED_ERROR,
            non_retryable=True,
        )

    def _continue_with(self, next_input: RunWorkflowInput) -> None:
        # Same type, and the run's input stays first, so every execution of the run shows it.
        workflow.continue_as_new(args=[self._run_input, next_input])
