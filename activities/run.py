"""Local activities that write run and stage state to the side-store, one transaction each.

They run inside the worker during the workflow task that needs them: no extra round trip to
the Temporal server, and Temporal retries them with their input (the buffered outcome)
intact when the database fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from temporalio import activity

from activities.errors import engine_errors_translated
from engine.core.payloads import (
    CommitResult,
    FinalizeRun,
    RunPlan,
    StageCommit,
    StartRun,
)
from engine.core.plans import plan_of
from engine.core.records import RunStartStatus
from engine.core.workflows import Workflow
from engine.store import SqlStore
from engine.store.contract import NewStage

__all__ = ["RunActivities"]


class RunActivities:
    """Side-store writes of the run workflow; built with the side-store and the registry."""

    def __init__(self, store: SqlStore, workflows: Mapping[str, Workflow]) -> None:
        self._store = store
        self._workflows = workflows

    @activity.defn(name="wfe.start_run")
    async def start_run(self, start: StartRun) -> RunPlan:
        """Mark the run RUNNING, open the starting group, and return the plan."""
        with engine_errors_translated():
            return await self._start_run(start)

    async def _start_run(self, start: StartRun) -> RunPlan:
        workflow = self._workflows.get(start.workflow_id)
        if workflow is None:
            await self._store.start_run(start.run_id, None, causation_id=start.run_id)
            return RunPlan(status=RunStartStatus.FAILED)
        index = start.start_group - 1

        def first_group(config: dict[str, Any]) -> list[NewStage]:
            return [NewStage.of(spec) for spec in plan_of(workflow, config)[index]]

        started = await self._store.start_run(start.run_id, first_group, causation_id=start.run_id)
        if started.status != RunStartStatus.OK:
            return RunPlan(status=started.status)
        return RunPlan(
            status=RunStartStatus.OK,
            groups=plan_of(workflow, started.config),
            run_input=started.run_input,
            outputs=started.outputs,
            attempt=started.attempt,
        )

    @activity.defn(name="wfe.commit_stage")
    async def commit_stage(self, commit: StageCommit) -> CommitResult:
        """Write a stage outcome, its logs, annotations and events in one transaction.

        A ``CommitRefusedError`` (no retry can land it) fails the execution, non-retryable.
        """
        with engine_errors_translated():
            return await self._store.commit_stage(commit)

    @activity.defn(name="wfe.cancel_run")
    async def cancel_run(self, run_id: str) -> bool:
        """Cancel the run in the side-store (its workflow was cancelled from Temporal)."""
        with engine_errors_translated():
            return await self._store.cancel_run(
                run_id, "cancelled from Temporal", causation_id=run_id
            )

    @activity.defn(name="wfe.finalize_run")
    async def finalize_run(self, final: FinalizeRun) -> bool:
        """End the run COMPLETED or FAILED."""
        with engine_errors_translated():
            return await self._store.finalize_run(
                final.run_id,
                status=final.status,
                output=final.output,
                error=final.error,
                now=final.now,
                commit_id=final.commit_id,
            )
