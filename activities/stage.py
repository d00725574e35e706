"""The stage activity: run a stage's ``execute`` or ``check_completion`` with its context.

It runs user code and returns a :class:`StageOutcome` with everything the code buffered
(output, logs, annotations, progress); it writes nothing but the stage's RUNNING mark.
The outcome is then committed by the ``wfe.commit_stage`` local activity
(:mod:`activities.run`), so that a commit that fails for an infrastructure reason is retried
by Temporal with the outcome, and its buffer, intact — the original lost the buffer there.
A local activity runs inside the worker in the same workflow task that received the stage
result, so it costs one SQL transaction and no extra round trip to the Temporal server.

A stage's own exception is its outcome (FAILED on the first try) unless the stage declares a
``retry_policy``: then the activity raises so Temporal retries the user code, and only the
last allowed attempt returns the failure.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from temporalio import activity

from activities.errors import describe_validation, error_message
from activities.shield import finish_transaction
from engine.annotations import AnnotationLimits
from engine.blobs import BlobStore, SqlBlobStore
from engine.context import CompletionContext, StageContext, _Buffered
from engine.payloads import StageOutcome, StageTask
from engine.stages import CompletionCheck, Stage, StageResult, Suspend
from engine.storage import StageStorage, offload_output, resolve_outputs
from engine.store import SqlStore
from engine.workflows import Workflow

__all__ = ["StageActivities"]


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Await an async function, or run a sync one in a thread so it cannot block the loop."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        return await result
    return result


def _is_last_attempt(stage: Stage[Any, Any, Any]) -> bool:
    policy = stage.retry_policy
    if policy is None:
        return True
    return policy.maximum_attempts > 0 and activity.info().attempt >= policy.maximum_attempts


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

    def outcome(status: Any, buffered: _Buffered | None, **fields: Any) -> StageOutcome:
        return StageOutcome(
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

    return outcome


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
        """Mark the stage RUNNING, run ``execute``, and return its buffered outcome."""
        stage = self._stage(task)
        record_id = await finish_transaction(
            self._store.begin_stage(task.run_id, task.stage, task.attempt)
        )
        if record_id is None:
            return StageOutcome(status="skipped")
        started_at = datetime.now(UTC)
        clock = time.monotonic()
        storage = StageStorage(self._blobs, task.run_id, task.stage.stage_id)
        ctx: StageContext[Any, Any] | None = None
        outcome = _outcome_builder(record_id, clock, started_at=started_at)

        try:
            parsed_input = stage.parse_input(
                await resolve_outputs(self._blobs, task.run_id, task.input)
            )
        except ValidationError as exc:
            return outcome(
                "failed",
                None,
                error=f"Invalid input for stage {stage.id}: {describe_validation(exc)}",
            )
        try:
            config = stage.parse_config(task.stage.config)
        except ValidationError as exc:
            return outcome(
                "failed",
                None,
                error=f"Invalid config for stage {stage.id}: {describe_validation(exc)}",
            )
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
            workflow_context={
                stage_id: await resolve_outputs(self._blobs, task.run_id, value)
                for stage_id, value in task.context.items()
            },
            resume_state=task.suspended_state,
            storage=storage,
            limits=self._limits,
        )
        try:
            result = await _call(stage.execute, ctx)
        except Exception as exc:
            if not _is_last_attempt(stage):
                raise
            return outcome("failed", ctx, error=error_message(exc))

        if isinstance(result, Suspend):
            return outcome(
                "suspended",
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
        buffered: _Buffered,
        outcome: Callable[..., StageOutcome],
        metrics: dict[str, Any],
    ) -> StageOutcome:
        """Validate an output against the stage's output model and complete, or fail naming it."""
        if raw_output is None and stage.output_model is not None:
            required = [n for n, f in stage.output_model.model_fields.items() if f.is_required()]
            if required:
                return outcome(
                    "failed",
                    buffered,
                    error=f"Stage {stage.id} produced no output, but its output model "
                    f"{stage.output_model.__name__} requires: {', '.join(required)}",
                )
            return outcome("completed", buffered, output=None, metrics=metrics)
        try:
            output = stage.dump_output(stage.parse_output(raw_output))
        except ValidationError as exc:
            return outcome(
                "failed",
                buffered,
                error=f"Invalid output of stage {stage.id}: {describe_validation(exc)}",
            )
        output = await offload_output(
            self._blobs, buffered.workflow_run_id, stage.id, output, self._large_output_bytes
        )
        return outcome("completed", buffered, output=output, metrics=metrics)

    @activity.defn(name="wfe.check_completion")
    async def check_completion(self, task: StageTask) -> StageOutcome:
        """Run an async-batch stage's ``check_completion`` and return its buffered outcome."""
        stage = self._stage(task)
        record_id = task.stage_record_id
        outcome = _outcome_builder(record_id, time.monotonic())

        if stage.check_completion is None:
            return outcome(
                "failed", None, error=f"Stage {stage.id} does not support check_completion"
            )
        try:
            config = stage.parse_config(task.stage.config)
        except ValidationError as exc:
            return outcome(
                "failed",
                None,
                error=f"Invalid config for stage {stage.id}: {describe_validation(exc)}",
            )
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
            return outcome("failed", ctx, error=error_message(exc))
        if not isinstance(check, CompletionCheck):
            return outcome(
                "failed",
                ctx,
                error=f"check_completion of stage {stage.id} returned {type(check).__name__}, "
                "expected CompletionCheck",
            )
        if check.error is not None:
            return outcome("failed", ctx, error=check.error)
        if check.ready:
            return await self._completed(
                stage, check.output, ctx, outcome, _custom_metrics(check.metrics)
            )
        return outcome("not_ready", ctx, next_check_in=check.next_check_in)
