"""The run workflow: one Temporal workflow per engine run, mirroring the engine's run semantics.

Groups run strictly in order; a parallel group's stages run concurrently and the group
settles when every member has an outcome. Each stage is the ``wfe.execute_stage`` activity
followed by the ``wfe.commit_stage`` local activity; async-batch stages then wait on durable
timers (or an external resume Update) and poll ``wfe.check_completion``. The side-store is
the source of truth for statuses: a commit against a run that is no longer RUNNING (it was
cancelled) is refused, and the workflow stops.

Deterministic by construction: no I/O, clock or randomness outside ``temporalio.workflow``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from temporal_workflows.payloads import (
        CommitResult,
        FinalizeRun,
        ResumeRequest,
        RetrySpec,
        RunPlan,
        RunWorkflowInput,
        StageCommit,
        StageOutcome,
        StageSpec,
        StageTask,
        StartRun,
    )

__all__ = ["RUN_STATUS_ATTRIBUTE", "RunWorkflow", "DECISION_OUTCOME_ATTRIBUTE"]

RUN_STATUS_ATTRIBUTE = SearchAttributeKey.for_keyword("WfeRunStatus")
DECISION_OUTCOME_ATTRIBUTE = SearchAttributeKey.for_keyword("DecisionOutcome")
LOCAL_TIMEOUT = timedelta(seconds=30)
DEFAULT_POLL_INTERVAL = timedelta(seconds=60)


def _retry_policy(spec: RetrySpec | None) -> RetryPolicy | None:
    if spec is None:
        return None  # Temporal's default: infrastructure failures retry until they succeed
    return RetryPolicy(
        initial_interval=spec.initial_interval,
        backoff_coefficient=spec.backoff_coefficient,
        maximum_interval=spec.maximum_interval,
        maximum_attempts=spec.maximum_attempts,
        non_retryable_error_types=spec.non_retryable_error_types or None,
    )


def _group_output(group: list[StageSpec], outputs: dict[str, Any]) -> Any:
    if len(group) == 1:
        return outputs.get(group[0].stage_id)
    return {s.stage_id: outputs[s.stage_id] for s in group if outputs.get(s.stage_id) is not None}


@dataclass
class _Group:
    """Settlement of the group being run: the last member to settle opens the next group."""

    size: int
    settled: dict[str, str] = field(default_factory=dict)

    def settles_all_completed(self, stage_id: str, status: str) -> bool:
        others = {k: v for k, v in self.settled.items() if k != stage_id}
        return (
            len(others) == self.size - 1
            and all(v == "completed" for v in others.values())
            and (status == "completed")
        )


class _RunCancelled(Exception):
    """The side-store refused a commit: the run is no longer RUNNING."""


@workflow.defn(name="wfe.run")
class RunWorkflow:
    """Drives one engine run through its groups of stages."""

    def __init__(self) -> None:
        self._input: RunWorkflowInput | None = None
        self._suspended: set[str] = set()
        self._resumes: dict[str, ResumeRequest] = {}
        self._decisions: dict[str, str] = {}
        self._commits = 0

    @workflow.run
    async def run(self, input: RunWorkflowInput) -> str:
        """Run the stages from ``input.start_group`` on; returns the run's final status."""
        self._input = input
        plan: RunPlan = await workflow.execute_local_activity(
            "wfe.start_run",
            StartRun(
                run_id=input.run_id, workflow_id=input.workflow_id, start_group=input.start_group
            ),
            result_type=RunPlan,
            start_to_close_timeout=LOCAL_TIMEOUT,
        )
        if plan.status != "ok":
            return "FAILED" if plan.status == "failed" else "NOT_RUNNING"
        self._set_status("RUNNING")
        try:
            return await self._run_groups(input, plan)
        except _RunCancelled:
            self._set_status("CANCELLED")
            return "CANCELLED"
        except asyncio.CancelledError:
            # Cancelled from Temporal directly (e.g. the UI), not through RunCancel: make the
            # side-store agree before ending.
            await workflow.execute_local_activity(
                "wfe.cancel_run", input.run_id, start_to_close_timeout=LOCAL_TIMEOUT
            )
            self._set_status("CANCELLED")
            raise

    async def _run_groups(self, input: RunWorkflowInput, plan: RunPlan) -> str:
        outputs = dict(input.outputs if input.outputs is not None else plan.outputs)
        groups = plan.groups
        start = input.start_group - 1
        previous = plan.run_input if start == 0 else _group_output(groups[start - 1], outputs)
        for index in range(start, len(groups)):
            group = groups[index]
            next_group = groups[index + 1] if index + 1 < len(groups) else []
            stage_input = plan.run_input if previous is None else previous
            tracker = _Group(size=len(group))
            snapshot = dict(outputs)  # siblings never see each other: deterministic context
            results = await asyncio.gather(
                *(
                    self._run_stage(input, plan, spec, stage_input, snapshot, next_group, tracker)
                    for spec in group
                )
            )
            for spec, outcome in zip(group, results, strict=True):
                if outcome.status == "completed":
                    outputs[spec.stage_id] = outcome.output
            failed = [o for o in results if o.status == "failed"]
            if failed:
                await self._finalize("FAILED", error=failed[0].error or "Stage failed")
                return "FAILED"
            previous = _group_output(group, outputs)
        await self._finalize("COMPLETED", output=previous)
        return "COMPLETED"

    async def _run_stage(
        self,
        input: RunWorkflowInput,
        plan: RunPlan,
        spec: StageSpec,
        stage_input: Any,
        context: dict[str, Any],
        next_group: list[StageSpec],
        group: _Group,
    ) -> StageOutcome:
        task = StageTask(
            run_id=input.run_id,
            workflow_id=input.workflow_id,
            stage=spec,
            attempt=plan.attempt,
            input=stage_input,
            context=context,
        )
        try:
            outcome: StageOutcome = await workflow.execute_activity(
                "wfe.execute_stage",
                task,
                result_type=StageOutcome,
                start_to_close_timeout=spec.start_to_close_timeout,
                heartbeat_timeout=spec.heartbeat_timeout,
                retry_policy=_retry_policy(spec.retry),
                summary=f"{spec.stage_id} · attempt {plan.attempt}",
            )
        except ActivityError as err:  # the stage's own retry policy gave up
            cause = err.cause or err
            outcome = StageOutcome(status="failed", error=getattr(cause, "message", str(cause)))
        if outcome.status == "skipped":
            raise _RunCancelled()
        if outcome.status != "suspended":
            return await self._settle(spec, plan, outcome, next_group, group)
        return await self._wait_for_batch(input, plan, spec, outcome, next_group, group)

    async def _wait_for_batch(
        self,
        input: RunWorkflowInput,
        plan: RunPlan,
        spec: StageSpec,
        outcome: StageOutcome,
        next_group: list[StageSpec],
        group: _Group,
    ) -> StageOutcome:
        """Suspended: sleep on durable timers (or until resumed), then poll until settled."""
        interval = outcome.poll_interval or DEFAULT_POLL_INTERVAL
        now = workflow.now()
        max_wait = outcome.max_wait
        max_wait_until = now + max_wait if max_wait else None
        next_poll_at = self._clamp(now + interval, max_wait_until)
        record_id = outcome.stage_record_id
        state = outcome.suspended_state
        await self._commit(
            spec, plan, outcome, next_poll_at=next_poll_at, max_wait_until=max_wait_until
        )
        self._suspended.add(spec.stage_id)
        polls = 0
        while True:
            delay = max((next_poll_at - workflow.now()).total_seconds(), 0.0)
            if delay > 0 and spec.stage_id not in self._resumes:
                try:
                    await workflow.wait_condition(
                        lambda: spec.stage_id in self._resumes, timeout=delay
                    )
                except TimeoutError:
                    pass
            resume = self._resumes.pop(spec.stage_id, None)
            task = StageTask(
                run_id=input.run_id,
                workflow_id=input.workflow_id,
                stage=spec,
                attempt=plan.attempt,
                stage_record_id=record_id,
                suspended_state=state,
                poll_count=polls,
                resume_data=resume.data if resume else None,
                resume_output=resume.output if resume else None,
            )
            outcome = await workflow.execute_activity(
                "wfe.check_completion",
                task,
                result_type=StageOutcome,
                start_to_close_timeout=spec.start_to_close_timeout,
                heartbeat_timeout=spec.heartbeat_timeout,
                summary=f"{spec.stage_id} · check {polls + 1} · attempt {plan.attempt}",
            )
            if resume is not None and resume.annotations:
                outcome.annotations = [*resume.annotations, *outcome.annotations]
            if outcome.status == "not_ready":
                polls += 1
                now = workflow.now()
                if max_wait_until is not None and now >= max_wait_until:
                    outcome.status = "failed"
                    outcome.error = (
                        f"Stage {spec.stage_id} did not become ready within its max_wait of "
                        f"{max_wait} (max_wait_until {max_wait_until.isoformat()})"
                    )
                else:
                    next_poll_at = self._clamp(
                        now + (outcome.next_check_in or interval), max_wait_until
                    )
                    await self._commit(spec, plan, outcome, next_poll_at=next_poll_at)
                    continue
            self._suspended.discard(spec.stage_id)
            return await self._settle(spec, plan, outcome, next_group, group)

    @staticmethod
    def _clamp(moment: datetime, limit: datetime | None) -> datetime:
        return min(moment, limit) if limit is not None else moment

    async def _settle(
        self,
        spec: StageSpec,
        plan: RunPlan,
        outcome: StageOutcome,
        next_group: list[StageSpec],
        group: _Group,
    ) -> StageOutcome:
        """Commit a final outcome (completed or failed); opens the next group when last."""
        open_next = next_group if group.settles_all_completed(spec.stage_id, outcome.status) else []
        group.settled[spec.stage_id] = outcome.status
        await self._commit(spec, plan, outcome, open_next=open_next)
        return outcome

    async def _commit(
        self,
        spec: StageSpec,
        plan: RunPlan,
        outcome: StageOutcome,
        *,
        next_poll_at: datetime | None = None,
        max_wait_until: datetime | None = None,
        open_next: list[StageSpec] | None = None,
    ) -> CommitResult:
        assert self._input is not None
        self._commits += 1
        result: CommitResult = await workflow.execute_local_activity(
            "wfe.commit_stage",
            StageCommit(
                run_id=self._input.run_id,
                stage=spec,
                attempt=plan.attempt,
                commit_id=f"{workflow.info().run_id}:{self._commits}",
                outcome=outcome,
                now=workflow.now(),
                next_poll_at=next_poll_at,
                max_wait_until=max_wait_until,
                open_next=open_next or [],
            ),
            result_type=CommitResult,
            start_to_close_timeout=LOCAL_TIMEOUT,
        )
        if not result.committed:
            raise _RunCancelled()
        if result.decisions:
            self._show_decisions(spec.stage_id, result.decisions)
        return result

    async def _finalize(self, status: str, *, output: Any = None, error: str | None = None) -> None:
        assert self._input is not None
        await workflow.execute_local_activity(
            "wfe.finalize_run",
            FinalizeRun(
                run_id=self._input.run_id,
                commit_id=f"{workflow.info().run_id}:final",
                status=status,
                output=output,
                error=error,
                now=workflow.now(),
            ),
            start_to_close_timeout=LOCAL_TIMEOUT,
        )
        self._set_status(status)

    def _set_status(self, status: str) -> None:
        if self._input is not None and self._input.search_attributes:
            workflow.upsert_search_attributes([RUN_STATUS_ATTRIBUTE.value_set(status)])

    def _show_decisions(self, stage_id: str, decisions: list[tuple[str, str]]) -> None:
        """Project the latest decision annotations into the Temporal UI's current details."""
        for key, value in decisions:
            self._decisions[key] = f"{value} (stage `{stage_id}`)"
            if key == "decision.outcome" and self._input and self._input.search_attributes:
                workflow.upsert_search_attributes([DECISION_OUTCOME_ATTRIBUTE.value_set(value)])
        lines = ["**Decisions** (side-store is the source of truth)", ""]
        lines += [f"- `{key}`: {value}" for key, value in sorted(self._decisions.items())]
        workflow.set_current_details("\n".join(lines))

    @workflow.update(name="wfe.resume_stage")
    async def resume_stage(self, request: ResumeRequest) -> str:
        """Wake a suspended stage now: complete it with ``output`` or check it with ``data``."""
        self._resumes[request.stage_id] = request
        return "accepted"

    @resume_stage.validator
    def _validate_resume(self, request: ResumeRequest) -> None:
        if request.stage_id not in self._suspended:
            raise ValueError(f"stage {request.stage_id!r} is not SUSPENDED in this run")

    @workflow.query(name="wfe.suspended_stages")
    def suspended_stages(self) -> list[str]:
        """Ids of the stages currently waiting to be polled or resumed."""
        return sorted(self._suspended)
