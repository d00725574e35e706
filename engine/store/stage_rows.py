"""Stage-level writes: begin a stage, and commit its outcome in one transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.ids import new_id
from engine.payloads import CommitResult, LogDraft, StageCommit, StageSpec
from engine.records import TERMINAL_STATUSES, RunStatus
from engine.store.ai_call_rows import add_ai_calls
from engine.store.annotation_rows import RowContext
from engine.store.models import WorkflowLog, WorkflowStage
from engine.store.runs import NewStage, claim_idempotency, open_stages, write_annotations
from engine.store.sql import append_events, lock_run_status

__all__ = ["begin_stage", "commit_stage"]

DECISION_PREFIX = "decision."


def new_stage(spec: StageSpec) -> NewStage:
    """The record to open for a stage spec."""
    return NewStage(spec.stage_id, spec.name, spec.number, spec.group, spec.config)


async def begin_stage(
    session: AsyncSession, run_id: str, spec: StageSpec, attempt: int, now: datetime
) -> str | None:
    """Mark the stage RUNNING (emitting ``stage:started`` once) and return its record id.

    Returns ``None`` when the stage must not run: its run is not RUNNING, or its record is
    already terminal (a redelivered activity never re-runs a COMPLETED stage).
    """
    if await lock_run_status(session, run_id) != RunStatus.RUNNING:
        return None
    record = await session.scalar(
        select(WorkflowStage).where(
            WorkflowStage.workflow_run_id == run_id, WorkflowStage.stage_id == spec.stage_id
        )
    )
    if record is None:
        await open_stages(session, run_id, [new_stage(spec)], attempt, now)
        record = await session.scalar(
            select(WorkflowStage).where(
                WorkflowStage.workflow_run_id == run_id, WorkflowStage.stage_id == spec.stage_id
            )
        )
        assert record is not None
    if record.status in TERMINAL_STATUSES or record.status == RunStatus.SUSPENDED:
        return None
    if record.status == RunStatus.PENDING:
        record.status = RunStatus.RUNNING
        record.started_at = now
        record.updated_at = now
        event = {"stage_id": spec.stage_id, "stage_name": spec.name, "stage_number": spec.number}
        await append_events(
            session, run_id, [("stage:started", event)], causation_id=record.id, now=now
        )
    return record.id


def _log_rows(
    run_id: str, stage_id: str, record_id: str | None, logs: list[LogDraft]
) -> list[WorkflowLog]:
    return [
        WorkflowLog(
            id=new_id(),
            created_at=log.at,
            workflow_run_id=run_id,
            workflow_stage_id=record_id,
            stage_id=stage_id,
            level=log.level,
            message=log.message,
            metadata_=log.metadata,
        )
        for log in logs
    ]


async def commit_stage(session: AsyncSession, commit: StageCommit) -> CommitResult:
    """Write a stage outcome, its logs, annotations and events, or nothing but logs.

    Guarded by the run's status read under its row lock: against a run that is no longer
    RUNNING (cancelled, or already finished) only the logs land. Idempotent through
    ``commit.commit_id``: a retried or duplicated commit returns without writing again.
    """
    outcome, spec, now = commit.outcome, commit.stage, commit.now
    run_status = await lock_run_status(session, commit.run_id)
    if run_status is None:
        return CommitResult(committed=False)
    if await claim_idempotency(session, commit.commit_id, "stage.commit", True, now) is not None:
        return CommitResult(committed=run_status == RunStatus.RUNNING)
    record = await session.scalar(
        select(WorkflowStage).where(
            WorkflowStage.workflow_run_id == commit.run_id, WorkflowStage.stage_id == spec.stage_id
        )
    )
    live = (
        run_status == RunStatus.RUNNING
        and record is not None
        and record.id == outcome.stage_record_id
        and record.status in (RunStatus.RUNNING, RunStatus.SUSPENDED)
    )
    # Logs are diagnostics: they survive a ghosted or failed stage (as in the original).
    for row in _log_rows(
        commit.run_id, spec.stage_id, record.id if live and record else None, outcome.logs
    ):
        session.add(row)
    if not live or record is None or outcome.status == "skipped":
        return CommitResult(committed=False)

    events: list[tuple[str, dict[str, Any]]] = [
        (
            "stage:progress",
            {
                "stage_id": spec.stage_id,
                "progress": p.progress,
                "message": p.message,
                **({"details": p.details} if p.details is not None else {}),
            },
        )
        for p in outcome.progress
    ]
    was_suspended = record.status == RunStatus.SUSPENDED
    if was_suspended and record.started_at is not None:
        # A batch stage's duration spans its suspension, not just the last check.
        outcome.duration_ms = max(int((now - record.started_at).total_seconds() * 1000), 0)
    record.updated_at = now
    record.version += 1
    if outcome.status == "completed":
        record.status = RunStatus.COMPLETED
        record.completed_at = now
        record.duration_ms = outcome.duration_ms
        record.output_data = outcome.output
        record.metrics = outcome.metrics
        record.next_poll_at = None
        events.append(
            (
                "stage:completed",
                {
                    "stage_id": spec.stage_id,
                    "stage_name": spec.name,
                    "duration": outcome.duration_ms,
                },
            )
        )
    elif outcome.status == "failed":
        record.status = RunStatus.FAILED
        record.completed_at = now
        record.duration_ms = outcome.duration_ms
        record.error_message = outcome.error
        record.metrics = outcome.metrics or record.metrics
        record.next_poll_at = None
        events.append(
            (
                "stage:failed",
                {"stage_id": spec.stage_id, "stage_name": spec.name, "error": outcome.error},
            )
        )
        session.add(
            WorkflowLog(
                id=new_id(),
                created_at=now,
                workflow_run_id=commit.run_id,
                workflow_stage_id=record.id,
                stage_id=spec.stage_id,
                level="ERROR",
                message=f"Stage {spec.stage_id} failed: {outcome.error}",
            )
        )
    else:  # suspended (first time) or not_ready (a poll that found the batch unfinished)
        first = outcome.status == "suspended"
        record.status = RunStatus.SUSPENDED
        record.next_poll_at = commit.next_poll_at
        if first:
            record.suspended_state = outcome.suspended_state
            record.poll_interval_ms = (
                int(outcome.poll_interval.total_seconds() * 1000) if outcome.poll_interval else None
            )
            record.max_wait_until = commit.max_wait_until
            record.metrics = outcome.metrics or None
            suspended = {
                "stage_id": spec.stage_id,
                "stage_name": spec.name,
                "next_poll_at": commit.next_poll_at.isoformat() if commit.next_poll_at else None,
            }
            events.append(("stage:suspended", suspended))
            events.append(("workflow:suspended", {"stage_id": spec.stage_id}))
        else:
            record.poll_count += 1
    if outcome.ai_calls:
        add_ai_calls(
            session,
            outcome.ai_calls,
            workflow_run_id=commit.run_id,
            stage_id=spec.stage_id,
            now=now,
        )
        metrics = dict(record.metrics or {})
        metrics["total_cost"] = float(metrics.get("total_cost", 0) or 0) + sum(
            c.cost for c in outcome.ai_calls
        )
        metrics["total_tokens"] = int(metrics.get("total_tokens", 0) or 0) + sum(
            c.input_tokens + c.output_tokens for c in outcome.ai_calls
        )
        record.metrics = metrics
    where = RowContext(
        commit.run_id, "stage", spec.stage_id, stage_record_id=record.id, attempt=record.attempt
    )
    inserted, annotation_events = await write_annotations(session, outcome.annotations, where, now)
    events.extend(annotation_events)
    await append_events(session, commit.run_id, events, causation_id=commit.commit_id, now=now)
    if outcome.status == "completed" and commit.open_next:
        await open_stages(
            session, commit.run_id, [new_stage(s) for s in commit.open_next], record.attempt, now
        )
    reported = set(commit.report_keys)
    decisions = [
        (row.key, str(row.value)[:200])
        for row in inserted
        if row.key.startswith(DECISION_PREFIX) or row.key in reported
    ]
    return CommitResult(committed=True, decisions=decisions)
