"""The stage activity: run a stage's ``execute`` or ``check_completion`` with its context.

``execute`` commits its own outcome: when the user code returns (or fails for good), the
activity writes the stage result, its buffered logs, annotations and outbox events, and opens
the next group RUNNING (with its ``stage:started`` events), in one side-store transaction,
then returns the outcome without its buffers. Measured against the alternative (return the
buffer and commit it in a ``wfe.commit_stage`` local activity), this saves a workflow task and
a local-activity marker per stage: engine/raw latency went from 2.6x to 2.0x on the 10-stage
benchmark (``bench/overhead.py``), and opening the next group RUNNING in that commit (so its
activities begin nothing) took it further. Only the first group of an execution is opened
PENDING (by ``wfe.start_run``, as the original's claim did) and begun by its activity.

The guarantees are the same either way. The commit takes the run's row lock and applies only
while the stage record is in the state it expects, so a cancelled run gets nothing and a
redelivered activity (attempt > 1 always begins in a transaction: its first delivery may have
committed before the worker died) finds the record settled and returns the stored outcome
without running user code again. A commit that fails for an infrastructure reason is retried
in the activity, and if the database stays unavailable the outcome is returned with its buffer
intact for the workflow's ``wfe.commit_stage`` local activity, which Temporal retries until
it lands: the buffer is never lost (the original lost it there). Suspensions and polls, which
need the workflow's clock for their timers, always commit through that local activity.

A stage's own exception is its outcome (FAILED on the first try) unless the stage declares a
``retry_policy``: then the activity raises so Temporal retries the user code, and only the
last allowed attempt returns the failure. The engine's own errors around the user code (the
side-store, the blob store) leave as ``ApplicationError`` (see :mod:`activities.errors`).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import application_error, engine_errors_translated, error_message
from engine.core import clock as wall_clock
from engine.core.annotations import AnnotationLimits
from engine.core.payloads import CommitResult, StageCommit, StageOutcome, StageTask
from engine.core.presentation import describe_validation
from engine.core.records import RunStatus, StageOutcomeStatus, StageStartAction
from engine.core.stages import CompletionCheck, Stage, StageResult, Suspend
from engine.core.values import clean_text, locate_problem
from engine.core.workflows import Workflow
from engine.errors import CommitRefusedError
from engine.runtime.blobs import BlobStore, SqlBlobStore
from engine.runtime.context import CompletionContext, StageBuffer, StageContext
from engine.runtime.storage import StageStorage, offload_output, resolve_outputs
from engine.store import SqlStore
from engine.store.contract import NewStage, StageStart

__all__ = ["StageActivities"]

COMMIT_RETRY_DELAYS = (0.05, 0.25, 1.0)
"""Pauses between in-activity commit attempts before handing the outcome to the workflow."""


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Await an async function, or run a sync one in a thread so it cannot block the loop."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        return await result
    return result


def _is_last_attempt(stage: Stage[Any, Any, Any], error: BaseException) -> bool:
    """Whether Temporal would not retry ``error``: then this attempt's outcome is the stage's.

    Temporal stops on the attempt count, on an error type the policy lists as non-retryable
    (it compares the exception's class name, or an ``ApplicationError``'s ``type``), and on
    an ``ApplicationError`` raised ``non_retryable``; any of them makes this the last.
    """
    policy = stage.retry_policy
    if policy is None:
        return True
    if isinstance(error, ApplicationError):
        if error.non_retryable:
            return True
        error_type = error.type or type(error).__name__
    else:
        error_type = type(error).__name__
    if error_type in (policy.non_retryable_error_types or ()):
        return True
    return policy.maximum_attempts > 0 and activity.info().attempt >= policy.maximum_attempts


def _parsed(
    parse: Callable[[Any], Any], raw: Any, what: str, stage_id: str
) -> tuple[Any, str | None]:
    """``parse(raw)`` and ``None``, or ``None`` and the failure message naming the fields."""
    try:
        return parse(raw), None
    except ValidationError as exc:
        return None, f"Invalid {what} for stage {stage_id}: {describe_validation(exc)}"


def _custom_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    # The original's camelCase totals roll up too.
    out = dict(metrics)
    if "totalCost" in out and "total_cost" not in out:
        out["total_cost"] = out["totalCost"]
    if "totalTokens" in out and "total_tokens" not in out:
        out["total_tokens"] = out["totalTokens"]
    return out


def _outcome_builder(
    record_id: str | None, clock: float, **common: Any
) -> Callable[..., StageOutcome]:
    """A function making outcomes that carry everything the stage code buffered."""

    def outcome(
        status: StageOutcomeStatus, buffered: StageBuffer | None, **fields: Any
    ) -> StageOutcome:
        if fields.get("error") is not None:
            fields["error"] = clean_text(fields["error"])  # a NUL in an exception's message
        built = StageOutcome(
            status=status,
            stage_record_id=record_id,
            duration_ms=int((time.monotonic() - clock) * 1000),
            logs=buffered.logs if buffered else [],
            annotations=buffered.drafts if buffered else [],
            progress=buffered.progress if buffered else [],
            ai_calls=buffered.ai_calls if buffered else [],
            **common,
            **fields,
        )
        # Checked before the outcome crosses Temporal or reaches a commit: a value no backend
        # can hold would fail every retry of both, and the run would hang RUNNING.
        problem = built.storage_problem()
        return built if problem is None else built.refused(problem)

    return outcome


def _stored(start: StageStart) -> StageOutcome:
    """The outcome an earlier delivery of the task committed, or ``skipped``."""
    if start.action != StageStartAction.SETTLED:
        return StageOutcome(status=StageOutcomeStatus.SKIPPED)
    return StageOutcome(
        status=StageOutcomeStatus.COMPLETED
        if start.status == RunStatus.COMPLETED
        else StageOutcomeStatus.FAILED,
        stage_record_id=start.record_id,
        output=start.output,
        error=start.error,
        commit=CommitResult(committed=True, duplicate=True),
    )


class StageActivities:
    """Activities that run user stage code; built with the side-store and the registry."""

    def __init__(
        self,
        store: SqlStore,
        workflows: Mapping[str, Workflow],
        limits: AnnotationLimits | None = None,
        large_output_bytes: int = 256 * 1024,
        blobs: BlobStore | None = None,
    ) -> None:
        self._store = store
        self._blobs = blobs or SqlBlobStore(store)
        self._workflows = workflows
        self._limits = limits or AnnotationLimits()
        self._large_output_bytes = large_output_bytes

    def _stage(self, task: StageTask) -> Stage[Any, Any, Any]:
        return self._workflows[task.workflow_id].get_stage(task.stage.stage_id)

    @activity.defn(name="wfe.execute_stage")
    async def execute_stage(self, task: StageTask) -> StageOutcome:
        """Mark the stage RUNNING, run ``execute``, and commit what it produced."""
        wall_clock.observe(activity.info().started_time)
        if task.workflow_id not in self._workflows:
            return await self._unknown_workflow(task)
        record_id = task.stage_record_id
        if record_id is None or activity.info().attempt > 1:
            first_group = [NewStage.of(s) for s in task.starts_run] if task.starts_run else None
            with engine_errors_translated():
                start = await self._store.begin_stage(
                    task.run_id, task.stage, task.attempt, first_group
                )
            if start.action != StageStartAction.RUN or start.record_id is None:
                return _stored(start)
            record_id = start.record_id
        outcome = await self._execute(task, record_id)
        if outcome.status not in (StageOutcomeStatus.COMPLETED, StageOutcomeStatus.FAILED):
            return outcome
        return await self._commit(task, outcome)

    async def _unknown_workflow(self, task: StageTask) -> StageOutcome:
        """This worker does not have the run's workflow, so it runs nothing.

        It fails the run if it is to start it (``WORKFLOW_NOT_FOUND``, as the original's claim did).
        """
        if task.starts_run:
            with engine_errors_translated():
                await self._store.start_run(task.run_id, None, causation_id=task.run_id)
        return StageOutcome(
            status=StageOutcomeStatus.SKIPPED,
            error=f"Workflow {task.workflow_id} not found in registry",
        )

    async def _commit(self, task: StageTask, outcome: StageOutcome) -> StageOutcome:
        """Commit ``outcome`` here; on lasting database trouble leave it to the workflow."""
        info = activity.info()
        commit = StageCommit(
            run_id=task.run_id,
            stage=task.stage,
            attempt=task.attempt,
            commit_id=f"{info.workflow_run_id}:{info.activity_id}:{info.attempt}",
            outcome=outcome,
            now=wall_clock.now(),
            open_next=task.open_next,
            group_size=task.group_size,
            completes_run=task.completes_run,
            report_keys=task.report_keys,
        )
        for delay in (*COMMIT_RETRY_DELAYS, None):
            try:
                result = await self._store.commit_stage(commit)
                break
            except CommitRefusedError as error:  # no retry can land it: fail the execution
                raise application_error(error) from error
            except Exception:
                if delay is None:
                    activity.logger.warning(
                        "stage %s: commit failed, handing it to the workflow", task.stage.stage_id
                    )
                    return outcome  # committed by the workflow's local activity, buffer intact
                await asyncio.sleep(delay)
        if result.duplicate:  # another delivery of this task committed first: use its outcome
            with engine_errors_translated():
                stored = await self._store.stage_outcome(
                    task.run_id, task.stage.stage_id, task.attempt
                )
            return _stored(stored).model_copy(update={"commit": result})
        if result.failed_with is not None:
            outcome = outcome.model_copy(
                update={
                    "status": StageOutcomeStatus.FAILED,
                    "output": None,
                    "error": result.failed_with,
                }
            )
        return outcome.model_copy(
            update={"logs": [], "annotations": [], "progress": [], "ai_calls": [], "commit": result}
        )

    async def _execute(self, task: StageTask, record_id: str) -> StageOutcome:
        stage = self._stage(task)
        started_at = wall_clock.now()
        clock = time.monotonic()
        storage = StageStorage(self._blobs, task.run_id, task.stage.stage_id)
        ctx: StageContext[Any, Any] | None = None
        outcome = _outcome_builder(record_id, clock, started_at=started_at)

        with engine_errors_translated():
            raw_input = await resolve_outputs(self._blobs, task.run_id, task.input)
        parsed_input, problem = _parsed(stage.parse_input, raw_input, "input", stage.id)
        if problem is None:
            config, problem = _parsed(stage.parse_config, task.stage.config, "config", stage.id)
        if problem is not None:
            return outcome(StageOutcomeStatus.FAILED, None, error=problem)
        with engine_errors_translated():
            upstream = {
                stage_id: await resolve_outputs(self._blobs, task.run_id, value)
                for stage_id, value in task.context.items()
            }
        ctx = StageContext(
            input=parsed_input,
            config=config,
            workflow_run_id=task.run_id,
            workflow_id=task.workflow_id,
            stage_id=stage.id,
            stage_name=stage.name,
            stage_number=task.stage.number,
            stage_record_id=record_id,
            attempt=task.attempt,
            activity_attempt=activity.info().attempt,
            workflow_context=upstream,
            resume_state=task.suspended_state,
            storage=storage,
            limits=self._limits,
        )
        try:
            result = await _call(stage.execute, ctx)
        except Exception as exc:
            if not _is_last_attempt(stage, exc):
                raise
            return outcome(StageOutcomeStatus.FAILED, ctx, error=error_message(exc))

        if isinstance(result, Suspend):
            return outcome(
                StageOutcomeStatus.SUSPENDED,
                ctx,
                suspended_state=result.state,
                poll_interval=result.poll_interval,
                max_wait=result.max_wait,
                metrics=_custom_metrics(result.custom_metrics),
            )
        metrics: dict[str, Any] = {}
        if isinstance(result, StageResult):
            metrics = _custom_metrics(result.custom_metrics)
            result = result.output
        return await self._completed(stage, result, ctx, outcome, metrics)

    async def _completed(
        self,
        stage: Stage[Any, Any, Any],
        raw_output: Any,
        buffered: StageBuffer,
        outcome: Callable[..., StageOutcome],
        metrics: dict[str, Any],
    ) -> StageOutcome:
        """Validate an output against the stage's output model and complete, or fail naming it."""
        if raw_output is None and stage.output_model is not None:
            required = [n for n, f in stage.output_model.model_fields.items() if f.is_required()]
            if required:
                return outcome(
                    StageOutcomeStatus.FAILED,
                    buffered,
                    error=f"Stage {stage.id} produced no output, but its output model "
                    f"{stage.output_model.__name__} requires: {', '.join(required)}",
                )
            return outcome(StageOutcomeStatus.COMPLETED, buffered, output=None, metrics=metrics)
        try:
            output = stage.dump_output(stage.parse_output(raw_output))
        except ValidationError as exc:
            return outcome(
                StageOutcomeStatus.FAILED,
                buffered,
                error=f"Invalid output of stage {stage.id}: {describe_validation(exc)}",
            )
        if locate_problem(output, "output") is None:  # else the outcome is refused, unstored
            with engine_errors_translated():
                output = await offload_output(
                    self._blobs,
                    buffered.workflow_run_id,
                    stage.id,
                    output,
                    self._large_output_bytes,
                )
        return outcome(StageOutcomeStatus.COMPLETED, buffered, output=output, metrics=metrics)

    @activity.defn(name="wfe.check_completion")
    async def check_completion(self, task: StageTask) -> StageOutcome:
        """Run an async-batch stage's ``check_completion`` and return its buffered outcome."""
        wall_clock.observe(activity.info().started_time)
        stage = self._stage(task)
        record_id = task.stage_record_id
        outcome = _outcome_builder(record_id, time.monotonic())

        if stage.check_completion is None:
            return outcome(
                StageOutcomeStatus.FAILED,
                None,
                error=f"Stage {stage.id} does not support check_completion",
            )
        config, problem = _parsed(stage.parse_config, task.stage.config, "config", stage.id)
        if problem is not None:
            return outcome(StageOutcomeStatus.FAILED, None, error=problem)
        ctx: CompletionContext[Any] = CompletionContext(
            config=config,
            workflow_run_id=task.run_id,
            workflow_id=task.workflow_id,
            stage_id=stage.id,
            stage_record_id=record_id or "",
            attempt=task.attempt,
            poll_count=task.poll_count,
            resume_data=task.resume_data,
            storage=StageStorage(self._blobs, task.run_id, stage.id),
            limits=self._limits,
        )
        if task.resume_output is not None:
            return await self._completed(stage, task.resume_output, ctx, outcome, {})
        try:
            check = await _call(stage.check_completion, task.suspended_state, ctx)
        except Exception as exc:
            return outcome(StageOutcomeStatus.FAILED, ctx, error=error_message(exc))
        if not isinstance(check, CompletionCheck):
            return outcome(
                StageOutcomeStatus.FAILED,
                ctx,
                error=f"check_completion of stage {stage.id} returned {type(check).__name__}, "
                "expected CompletionCheck",
            )
        if check.error is not None:
            return outcome(StageOutcomeStatus.FAILED, ctx, error=check.error)
        if check.ready:
            return await self._completed(
                stage, check.output, ctx, outcome, _custom_metrics(check.metrics)
            )
        return outcome(StageOutcomeStatus.NOT_READY, ctx, next_check_in=check.next_check_in)
