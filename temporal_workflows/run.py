"""The run workflow: one Temporal workflow per engine run, mirroring the engine's run semantics.

The kernel starts the workflow with the run's plan, and the first group's activities mark
the run RUNNING as they begin; a rerun, a restart or a continued execution reads its plan (and
the outputs kept so far) back with the ``wfe.start_run`` local activity instead.

Groups run strictly in order; a parallel group's stages run concurrently and the group
settles when every member has an outcome. Each stage is one ``wfe.execute_stage`` activity,
which commits its own outcome and opens the next group, or completes the run when it
completes the last group (see :mod:`activities.stage`); the ``wfe.commit_stage`` local
activity commits what the activity could not (a suspension, a poll, an outcome whose commit
kept failing, a stage whose retries gave up), and ``wfe.finalize_run`` ends a run that
failed. Async-batch stages wait on durable timers (or an external resume Update) and poll
``wfe.check_completion``. The side-store is the source of truth for statuses: a commit
against a run that is no longer RUNNING (it was cancelled) is refused, and the workflow
stops.

A stage that polls for weeks would grow the history without bound, so once the history is
long (or the server suggests it) every stage of the group parks at its next wait and the
workflow continues as new, carrying the group's settled outcomes, parked stages and the
resumes accepted for them meanwhile (a resume is never lost to the continue-as-new).

Deterministic by construction: no I/O, clock or randomness outside ``temporalio.workflow``.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from engine.core.payloads import (
        CarriedGroup,
        CommitResult,
        FinalizeRun,
        ParkedStage,
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
    from engine.core.records import (
        RunEnd,
        RunStartStatus,
        RunStatus,
        SettledRunStatus,
        StageOutcomeStatus,
    )
    from engine.core.search_attributes import RUN_STATUS_ATTRIBUTE

__all__ = ["RunWorkflow"]

LOCAL_TIMEOUT = timedelta(seconds=30)
DEFAULT_POLL_INTERVAL = timedelta(seconds=60)
RESUME_BEFORE_PARK = "wfe.resume-before-park"
"""Patch id: a stage with a pending resume checks it instead of parking for continue-as-new."""


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


def _failed_with(outcome: StageOutcome, error: str) -> StageOutcome:
    """The outcome as the side-store committed it when it could not store it as it was."""
    return outcome.model_copy(
        update={"status": StageOutcomeStatus.FAILED, "output": None, "error": error}
    )


class _Group:
    """The group being run: who has settled (the last to settle opens the next group).

    A plain class, not a dataclass: under the sandbox (replay tests, or a worker that opts
    in) this module is re-imported for every workflow instance, and a dataclass would
    generate and compile its methods each time.
    """

    __slots__ = ("context", "next_group", "parked", "settled", "specs")

    def __init__(
        self, specs: list[StageSpec], next_group: list[StageSpec], context: dict[str, Any]
    ) -> None:
        self.specs = specs
        self.next_group = next_group
        self.context = context
        self.settled: dict[str, StageOutcome] = {}
        self.parked: dict[str, ParkedStage] = {}

    def all_waiting_or_done(self) -> bool:
        return all(s.stage_id in self.settled or s.stage_id in self.parked for s in self.specs)


def _failed(task: asyncio.Future[None]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


class _RunCancelled(Exception):
    """The side-store refused a commit: the run is no longer RUNNING.

    ``failed`` says it could not start, its workflow unknown to the worker.
    """

    def __init__(self, failed: bool = False) -> None:
        super().__init__()
        self.failed = failed


@workflow.defn(name="wfe.run")
class RunWorkflow:
    """Drives one engine run through its groups of stages."""

    def __init__(self) -> None:
        self._input: RunWorkflowInput | None = None
        self._plan: RunPlan | None = None
        self._suspended: set[str] = set()
        self._resumes: dict[str, ResumeRequest] = {}
        self._details: dict[str, str] = {}
        self._commits = 0
        self._run_completed = False
        self._starts_run = False
        self._records: dict[str, str] = {}
        """Stage id → record id of the stages that commits opened RUNNING."""
        self._stage_tasks: list[asyncio.Task[None]] = []
        self._cancelled = False
        self._decisions: dict[str, bool] = {}
        """Approval stage id → whether its accepted decision is committed yet."""
        self._handed_over: set[str] = set()
        """Approval stages parked for the next execution (continue-as-new)."""
        self._output: Any = None
        """The run's output (or its reference), once the run completed."""
        self._error: str | None = None
        """Why the run failed, once it did."""

    @workflow.run
    async def run(self, input: RunWorkflowInput) -> RunEnd:
        """Run the stages from ``input.start_group`` on; returns the run's final status."""
        self._input = input
        self._details = dict(input.details)
        if input.carried is not None:
            # Before the first await, so the Update validator of a resume that reaches this
            # execution early already knows the parked stages (and the resumes carried).
            self._suspended.update(input.carried.parked)
            self._resumes.update(input.carried.resumes)
        if input.plan is not None:  # the first group's activities start the run
            plan = input.plan
            self._starts_run = True
        else:
            plan = await workflow.execute_local_activity(
                "wfe.start_run",
                StartRun(
                    run_id=input.run_id,
                    workflow_id=input.workflow_id,
                    start_group=input.start_group,
                ),
                result_type=RunPlan,
                start_to_close_timeout=LOCAL_TIMEOUT,
            )
        if plan.status != RunStartStatus.OK:
            return RunEnd.FAILED if plan.status == RunStartStatus.FAILED else RunEnd.NOT_RUNNING
        self._plan = plan
        self._set_status(RunStatus.RUNNING)
        try:
            return await self._run_groups(input, plan)
        except _RunCancelled as stop:
            end = RunEnd.FAILED if stop.failed else RunEnd.CANCELLED
            self._set_status(RunStatus(end))
            return end
        except asyncio.CancelledError:
            self._cancelled = True
            # Cancel the stages' activities: Temporal tells running stage code through its
            # heartbeats, and suspended stages stop waiting at once. Whatever a stage still
            # finishes is refused at its commit (the run is CANCELLED): a ghost.
            for task in self._stage_tasks:
                task.cancel()
            await workflow.wait_condition(lambda: all(t.done() for t in self._stage_tasks))
            # RunCancel already wrote CANCELLED; a cancel from Temporal itself (e.g. the UI)
            # did not, so make the side-store agree (a no-op when it already does).
            await workflow.execute_local_activity(
                "wfe.cancel_run", input.run_id, start_to_close_timeout=LOCAL_TIMEOUT
            )
            self._set_status(RunStatus.CANCELLED)
            raise

    async def _run_groups(self, input: RunWorkflowInput, plan: RunPlan) -> RunEnd:
        outputs = dict(input.outputs if input.outputs is not None else plan.outputs)
        groups = plan.groups
        start = input.start_group - 1
        previous = plan.run_input if start == 0 else _group_output(groups[start - 1], outputs)
        carried = input.carried
        for index in range(start, len(groups)):
            specs = groups[index]
            group = _Group(
                specs=specs,
                next_group=groups[index + 1] if index + 1 < len(groups) else [],
                context=dict(outputs),  # siblings never see each other: deterministic context
            )
            stage_input = plan.run_input if previous is None else previous
            starts_run = specs if self._starts_run and index == start else []
            tasks = [
                asyncio.ensure_future(
                    self._run_stage(spec, stage_input, group, carried, starts_run)
                )
                for spec in specs
            ]
            self._stage_tasks = tasks
            carried = None
            await workflow.wait_condition(
                lambda g=group, t=tasks: g.all_waiting_or_done() or any(map(_failed, t))  # type: ignore[misc]
            )
            # Read every failure (not just the first) so none is reported as never retrieved.
            errors = [task.exception() for task in tasks if _failed(task)]
            if errors:
                raise errors[0]  # type: ignore[misc]
            if group.parked:
                self._continue_as_new(input, index + 1, outputs, group)
            for spec in specs:
                outcome = group.settled[spec.stage_id]
                if outcome.status == StageOutcomeStatus.COMPLETED:
                    outputs[spec.stage_id] = outcome.output
            failed = [
                group.settled[s.stage_id]
                for s in specs
                if group.settled[s.stage_id].status == StageOutcomeStatus.FAILED
            ]
            if failed:
                await self._finalize(RunStatus.FAILED, error=failed[0].error or "Stage failed")
                return RunEnd.FAILED
            previous = _group_output(specs, outputs)
        await self._finalize(RunStatus.COMPLETED, output=previous)
        return RunEnd.COMPLETED

    def _continue_as_new(
        self, input: RunWorkflowInput, group_number: int, outputs: dict[str, Any], group: _Group
    ) -> None:
        self._continue_with(
            input.model_copy(
                update={
                    "start_group": group_number,
                    "outputs": outputs,
                    "carried": CarriedGroup(
                        settled=group.settled,
                        parked=group.parked,
                        resumes={s: r for s, r in self._resumes.items() if s in group.parked},
                    ),
                    "details": self._details,
                    "plan": None,  # the next execution reads the run's state back
                }
            )
        )

    def _continue_with(self, next_input: RunWorkflowInput) -> None:
        """Continue as new with ``next_input`` (a subclass may pass more arguments)."""
        workflow.continue_as_new(next_input)

    def _task(self, spec: StageSpec, **fields: Any) -> StageTask:
        assert self._input is not None and self._plan is not None
        return StageTask(
            run_id=self._input.run_id,
            workflow_id=self._input.workflow_id,
            stage=spec,
            attempt=self._plan.attempt,
            **fields,
        )

    async def _run_stage(
        self,
        spec: StageSpec,
        stage_input: Any,
        group: _Group,
        carried: CarriedGroup | None,
        starts_run: list[StageSpec],
    ) -> None:
        assert self._plan is not None
        if carried is not None and spec.stage_id in carried.settled:
            group.settled[spec.stage_id] = carried.settled[spec.stage_id]
            return
        if carried is not None and spec.stage_id in carried.parked:
            await self._poll_until_settled(spec, carried.parked[spec.stage_id], group)
            return
        try:
            outcome: StageOutcome = await workflow.execute_activity(
                "wfe.execute_stage",
                self._task(
                    spec,
                    input=stage_input,
                    context=group.context,
                    stage_record_id=self._records.get(spec.stage_id),
                    starts_run=starts_run,
                    open_next=group.next_group,
                    group_size=len(group.specs),
                    completes_run=not group.next_group,
                    report_keys=list(self._input.projected_keys) if self._input else [],
                ),
                result_type=StageOutcome,
                start_to_close_timeout=spec.start_to_close_timeout,
                heartbeat_timeout=spec.heartbeat_timeout,
                retry_policy=_retry_policy(spec.retry),
                summary=f"{spec.stage_id} · attempt {self._plan.attempt}",
                priority=workflow.info().priority,  # the run's, explicit on every stage
            )
        except ActivityError as err:  # the stage's own retry policy gave up
            if self._cancelled:  # or the run's cancel cancelled it: nothing to commit
                raise
            cause = err.cause or err
            outcome = StageOutcome(
                status=StageOutcomeStatus.FAILED, error=getattr(cause, "message", str(cause))
            )
        if outcome.status == StageOutcomeStatus.SKIPPED:
            raise _RunCancelled(failed=outcome.error is not None)
        if outcome.commit is not None:  # the activity committed it
            self._accept(spec.stage_id, outcome.commit)
            group.settled[spec.stage_id] = outcome
            return
        if outcome.status != StageOutcomeStatus.SUSPENDED:
            await self._settle(spec, outcome, group)
            return
        interval = outcome.poll_interval or DEFAULT_POLL_INTERVAL
        now = workflow.now()
        max_wait_until = now + outcome.max_wait if outcome.max_wait else None
        parked = ParkedStage(
            stage_record_id=outcome.stage_record_id,
            state=outcome.suspended_state,
            next_poll_at=self._clamp(now + interval, max_wait_until),
            max_wait=outcome.max_wait,
            max_wait_until=max_wait_until,
            interval=interval,
        )
        # Resumable from the moment the side-store can say SUSPENDED (which the kernel checks
        # before it sends the Update): a resume that lands during this commit waits its turn.
        self._suspended.add(spec.stage_id)
        result = await self._commit(
            spec,
            outcome,
            # An approval is never polled: its record shows no poll time.
            next_poll_at=None if spec.kind == "approval" else parked.next_poll_at,
            max_wait_until=max_wait_until,
        )
        if result.failed_with is not None:  # committed FAILED instead (see CommitResult)
            self._suspended.discard(spec.stage_id)
            group.settled[spec.stage_id] = _failed_with(outcome, result.failed_with)
            return
        await self._poll_until_settled(spec, parked, group)

    async def _poll_until_settled(self, spec: StageSpec, wait: ParkedStage, group: _Group) -> None:
        """Sleep on durable timers (or until resumed) and check the batch until it settles."""
        assert self._plan is not None
        self._suspended.add(spec.stage_id)
        if spec.kind == "approval":  # (a kind no history before it carries: no patch needed)
            await self._await_decision(spec, wait, group)
            return
        while True:
            if self._history_is_long() and not self._resume_pending(spec.stage_id):
                group.parked[spec.stage_id] = wait
                await workflow.wait_condition(lambda: False)  # ends by continue-as-new
            delay = (wait.next_poll_at - workflow.now()).total_seconds()
            if delay > 0 and spec.stage_id not in self._resumes:
                try:
                    await workflow.wait_condition(
                        lambda: spec.stage_id in self._resumes or self._cancelled, timeout=delay
                    )
                except TimeoutError:
                    pass
            if self._cancelled:
                return
            resume = self._resumes.pop(spec.stage_id, None)
            outcome: StageOutcome = await workflow.execute_activity(
                "wfe.check_completion",
                self._task(
                    spec,
                    stage_record_id=wait.stage_record_id,
                    suspended_state=wait.state,
                    poll_count=wait.polls,
                    resume_data=resume.data if resume else None,
                    resume_output=resume.output if resume else None,
                ),
                result_type=StageOutcome,
                start_to_close_timeout=spec.start_to_close_timeout,
                heartbeat_timeout=spec.heartbeat_timeout,
                summary=f"{spec.stage_id} · check {wait.polls + 1} · attempt {self._plan.attempt}",
                priority=workflow.info().priority,
            )
            if resume is not None and resume.annotations:
                outcome.annotations = [*resume.annotations, *outcome.annotations]
            if outcome.status == StageOutcomeStatus.NOT_READY:
                now = workflow.now()
                if wait.max_wait_until is None or now < wait.max_wait_until:
                    wait = wait.model_copy(
                        update={
                            "polls": wait.polls + 1,
                            "next_poll_at": self._clamp(
                                now + (outcome.next_check_in or wait.interval), wait.max_wait_until
                            ),
                        }
                    )
                    result = await self._commit(
                        spec,
                        outcome,
                        next_poll_at=wait.next_poll_at,
                        after_suspend=True,
                        poll_count=wait.polls - 1,
                    )
                    if result.failed_with is None:
                        continue
                    self._suspended.discard(spec.stage_id)
                    group.settled[spec.stage_id] = _failed_with(outcome, result.failed_with)
                    return
                outcome.status = StageOutcomeStatus.FAILED
                outcome.error = (
                    f"Stage {spec.stage_id} did not become ready within its max_wait of "
                    f"{wait.max_wait} (max_wait_until {wait.max_wait_until.isoformat()})"
                )
            self._suspended.discard(spec.stage_id)
            await self._settle(spec, outcome, group, after_suspend=True, poll_count=wait.polls)
            return

    def _resume_pending(self, stage_id: str) -> bool:
        """A resume already accepted for the stage is acted on before it parks.

        Patched: executions recorded before this change parked first, and replaying them must
        park where they did.
        """
        return stage_id in self._resumes and workflow.patched(RESUME_BEFORE_PARK)

    async def _await_decision(self, spec: StageSpec, wait: ParkedStage, group: _Group) -> None:
        """Wait for a person's decision (an Update) or the timeout.

        Nothing polls meanwhile, so the history does not grow while the stage waits.
        """
        stage_id = spec.stage_id
        timeout = None
        if wait.max_wait_until is not None:
            timeout = max((wait.max_wait_until - workflow.now()).total_seconds(), 0.0)
        if stage_id not in self._resumes and timeout != 0.0:
            try:
                await workflow.wait_condition(
                    lambda: stage_id in self._resumes or self._cancelled or self._history_is_long(),
                    timeout=timeout,
                )
            except TimeoutError:
                pass
        if self._cancelled:
            return
        resume = self._resumes.pop(stage_id, None)
        if resume is None and self._history_is_long():  # a sibling's polls made it long
            group.parked[stage_id] = wait
            self._handed_over.add(stage_id)
            await workflow.wait_condition(lambda: False)  # ends by continue-as-new
        if resume is None:
            asked = (wait.state or {}).get("approval", {}).get("requested_from") or "anyone"
            outcome = StageOutcome(
                status=StageOutcomeStatus.FAILED,
                stage_record_id=wait.stage_record_id,
                error=f"Stage {stage_id} was not decided within its timeout of {wait.max_wait} "
                f"(requested from {asked}; timed out at {wait.max_wait_until})",
            )
        else:
            outcome = StageOutcome(
                status=StageOutcomeStatus.FAILED
                if resume.error is not None
                else StageOutcomeStatus.COMPLETED,
                stage_record_id=wait.stage_record_id,
                output=resume.output,
                error=resume.error,
                annotations=resume.annotations,
            )
        self._suspended.discard(stage_id)
        try:
            await self._settle(spec, outcome, group, after_suspend=True, poll_count=wait.polls)
        finally:
            if stage_id in self._decisions:
                self._decisions[stage_id] = True  # the decision's Update may return now

    def _history_is_long(self) -> bool:
        assert self._input is not None
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self._input.continue_as_new_after_events
        )

    @staticmethod
    def _clamp(moment: datetime, limit: datetime | None) -> datetime:
        return min(moment, limit) if limit is not None else moment

    async def _settle(
        self,
        spec: StageSpec,
        outcome: StageOutcome,
        group: _Group,
        *,
        after_suspend: bool = False,
        poll_count: int = 0,
    ) -> None:
        """Commit a final outcome (completed or failed).

        The commit that completes the group opens the next one.
        """
        result = await self._commit(
            spec,
            outcome,
            open_next=group.next_group,
            group_size=len(group.specs),
            completes_run=not group.next_group,
            after_suspend=after_suspend,
            poll_count=poll_count,
        )
        if result.failed_with is not None:
            outcome = _failed_with(outcome, result.failed_with)
        group.settled[spec.stage_id] = outcome

    async def _commit(
        self,
        spec: StageSpec,
        outcome: StageOutcome,
        *,
        next_poll_at: datetime | None = None,
        max_wait_until: datetime | None = None,
        open_next: list[StageSpec] | None = None,
        group_size: int = 1,
        completes_run: bool = False,
        after_suspend: bool = False,
        poll_count: int = 0,
    ) -> CommitResult:
        assert self._input is not None and self._plan is not None
        if self._cancelled:  # the side-store would refuse it: the run is being cancelled
            raise _RunCancelled()
        self._commits += 1
        result: CommitResult = await workflow.execute_local_activity(
            "wfe.commit_stage",
            StageCommit(
                run_id=self._input.run_id,
                stage=spec,
                attempt=self._plan.attempt,
                commit_id=f"{workflow.info().run_id}:{self._commits}",
                outcome=outcome,
                now=workflow.now(),
                next_poll_at=next_poll_at,
                max_wait_until=max_wait_until,
                open_next=open_next or [],
                group_size=group_size,
                completes_run=completes_run,
                after_suspend=after_suspend,
                poll_count=poll_count,
                report_keys=list(self._input.projected_keys),
            ),
            result_type=CommitResult,
            start_to_close_timeout=LOCAL_TIMEOUT,
        )
        self._accept(spec.stage_id, result)
        return result

    def _accept(self, stage_id: str, result: CommitResult) -> None:
        """Take in a commit's result: stop if it was refused, show the decisions it wrote."""
        if not result.committed:
            raise _RunCancelled()
        self._records.update(result.opened)
        self._run_completed = self._run_completed or result.completed_run
        if result.decisions:
            self._show_decisions(stage_id, result.decisions)

    async def _finalize(
        self,
        status: SettledRunStatus,
        *,
        output: Any = None,
        error: str | None = None,
    ) -> None:
        assert self._input is not None
        self._output, self._error = output, error
        if status == RunStatus.COMPLETED and self._run_completed:  # the last commit did it
            self._set_status(status)
            return
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

    def _set_status(self, status: RunStatus) -> None:
        if self._input is not None and self._input.search_attributes:
            workflow.upsert_search_attributes([RUN_STATUS_ATTRIBUTE.value_set(status.value)])

    def _show_decisions(self, stage_id: str, decisions: list[tuple[str, str]]) -> None:
        """Project the latest decision annotations into the Temporal UI (details, search)."""
        assert self._input is not None
        for key, value in decisions:
            self._details[key] = f"{value} (stage `{stage_id}`)"
            attribute = self._input.projected_keys.get(key)
            if attribute and self._input.search_attributes:
                workflow.upsert_search_attributes(
                    [SearchAttributeKey.for_keyword(attribute).value_set(value[:256])]
                )
        lines = ["**Decisions** (the side-store is the source of truth)", ""]
        lines += [f"- `{key}`: {value}" for key, value in sorted(self._details.items())]
        workflow.set_current_details("\n".join(lines))

    @workflow.update(name="wfe.resume_stage")
    async def resume_stage(self, request: ResumeRequest) -> str:
        """Wake a suspended stage now: complete it with ``output`` or check it with ``data``.

        A decision (``request.decision``) returns once the stage's outcome is committed.
        """
        if not request.decision:
            self._resumes[request.stage_id] = request
            return "accepted"
        stage_id = request.stage_id
        # Two decisions may both pass the validator before either handler runs: the first
        # handler to run takes the stage, the other fails (the caller sees who won).
        if stage_id in self._decisions or stage_id not in self._suspended:
            raise ApplicationError(
                f"stage {stage_id!r} was already decided", type="AlreadyDecided", non_retryable=True
            )
        self._decisions[stage_id] = False
        self._resumes[stage_id] = request
        await workflow.wait_condition(lambda: self._decisions[stage_id] or self._cancelled)
        return "decided"

    @resume_stage.validator
    def _validate_resume(self, request: ResumeRequest) -> None:
        if request.stage_id not in self._suspended or request.stage_id in self._resumes:
            raise ValueError(f"stage {request.stage_id!r} is not SUSPENDED in this run")
        if request.decision and request.stage_id in self._decisions:
            raise ValueError(f"stage {request.stage_id!r} was already decided")
        if request.decision and request.stage_id in self._handed_over:
            # The stage is parked for the next execution (continue-as-new); a decision
            # accepted now could not be answered once committed there.
            raise ValueError("the run is continuing as new: send the decision again shortly")

    @workflow.query(name="wfe.suspended_stages")
    def suspended_stages(self) -> list[str]:
        """Ids of the stages currently waiting to be polled or resumed."""
        return sorted(self._suspended)
