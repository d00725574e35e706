"""Stage-level writes: commit a stage outcome in one transaction, and read a stage's state.

The commit is a compare-and-set on the stage record rather than a claimed token: the outcome
applies only while the record is in the state it expects (RUNNING, or SUSPENDED with the poll
count the workflow knows), so a retried or duplicated commit finds the record already moved
on and writes nothing. That keeps a commit at one conditional update (which also takes the
run's lock) and one batched insert per table it touches (annotations, next stages, outbox,
logs), whatever the number of annotations. On PostgreSQL the common commit is one statement
instead (:mod:`engine.store.one_statement`), built from the same row builders below.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Update, and_, bindparam, func, select
from sqlalchemy.orm import Session

from engine.core.ids import derived_id, new_id
from engine.core.payloads import CommitResult, LogDraft, StageCommit, StageSpec
from engine.core.records import RunStatus, StageOutcomeStatus, StageStartAction, StageStatus
from engine.store import direct
from engine.store.ai_call_rows import ai_call_rows
from engine.store.chain import Link, outcome_link
from engine.store.contract import NewStage, RowContext, StageStart
from engine.store.models import AI_CALLS, LOGS, RUNS, STAGES
from engine.store.runs import complete_run, open_stages, write_annotations
from engine.store.sql import append_events, insert_ignore, lock_run_status

__all__ = [
    "StageStart",
    "begin_stage",
    "commit_stage",
    "decisions",
    "expects_suspended",
    "outcome_events",
    "outcome_logs",
    "outcome_update",
    "stage_changes",
    "stage_start",
    "started_event",
]

DECISION_PREFIX = "decision."

Decision = tuple[str, str]


def started_event(spec: StageSpec) -> tuple[str, dict[str, Any]]:
    """The ``stage:started`` outbox event of a stage."""
    body = {"stage_id": spec.stage_id, "stage_name": spec.name, "stage_number": spec.number}
    return ("stage:started", body)


def _log_rows(
    commit_id: str, run_id: str, stage_id: str, record_id: str | None, logs: list[LogDraft]
) -> list[dict[str, Any]]:
    # Ids fixed by the commit: a retried commit of a ghost (whose logs still land) adds none.
    return [
        {
            "id": derived_id(int(log.at.timestamp() * 1000), f"{commit_id}:{index}"),
            "created_at": log.at,
            "workflow_run_id": run_id,
            "workflow_stage_id": record_id,
            "stage_id": stage_id,
            "level": log.level,
            "message": log.message,
            "metadata": log.metadata,
        }
        for index, log in enumerate(logs)
    ]


def stage_changes(commit: StageCommit) -> dict[str, Any]:
    """Column values the outcome sets on the stage record.

    ``updated_at`` and ``version`` always change too.
    """
    outcome, now = commit.outcome, commit.now
    values: dict[str, Any] = {"updated_at": now}
    if outcome.status in (StageOutcomeStatus.COMPLETED, StageOutcomeStatus.FAILED):
        values.update(completed_at=now, duration_ms=outcome.duration_ms, next_poll_at=None)
        if outcome.status == StageOutcomeStatus.COMPLETED:
            values.update(
                status=RunStatus.COMPLETED, output_data=outcome.output, metrics=outcome.metrics
            )
        else:
            values.update(status=RunStatus.FAILED, error_message=outcome.error)
            if outcome.metrics:
                values["metrics"] = outcome.metrics
    elif outcome.status == StageOutcomeStatus.SUSPENDED:
        poll_interval = outcome.poll_interval
        values.update(
            status=RunStatus.SUSPENDED,
            next_poll_at=commit.next_poll_at,
            suspended_state=outcome.suspended_state,
            poll_interval_ms=int(poll_interval.total_seconds() * 1000) if poll_interval else None,
            max_wait_until=commit.max_wait_until,
            metrics=outcome.metrics or None,
        )
        if commit.stage.kind == "approval":
            # Whom the approvals inbox shows it to, and its age there.
            state = outcome.suspended_state if isinstance(outcome.suspended_state, dict) else {}
            asked = state.get("approval", {}).get("requested_from")
            values.update(waiting_for=asked, waiting_since=now)
    else:  # not_ready: a poll that found the batch unfinished
        values.update(next_poll_at=commit.next_poll_at, poll_count=commit.poll_count + 1)
    return values


def expects_suspended(commit: StageCommit) -> bool:
    """Whether the outcome applies to a SUSPENDED record rather than to a RUNNING one.

    A poll, or the end of a wait, applies to the record at the poll count the workflow knows.
    """
    return commit.outcome.status == StageOutcomeStatus.NOT_READY or (
        commit.after_suspend and commit.outcome.status != StageOutcomeStatus.SUSPENDED
    )


@cache
def outcome_update(columns: tuple[str, ...], suspended: bool) -> Update:
    """``UPDATE`` of a stage record in the state an outcome applies to, setting ``columns``.

    A record in any other state means the outcome was applied already, by a retried commit, or
    the record moved on without it: a ghost. Built once per shape, as building costs more than
    running it.
    """
    # The run-status guard rides in the same statement: the subquery locks the run row (an
    # init plan PostgreSQL runs once, before it looks at a stage row; SQLite holds the write
    # lock already), and re-reads it after any wait, so a run cancelled meanwhile matches
    # nothing. One statement where a separate locked read took a round trip of its own.
    run_status = (
        select(RUNS.c.status)
        .where(RUNS.c.id == bindparam("w_run_id"))
        .with_for_update()
        .scalar_subquery()
    )
    state = and_(
        STAGES.c.workflow_run_id == bindparam("w_run_id"),
        STAGES.c.stage_id == bindparam("w_stage_id"),
        STAGES.c.attempt == bindparam("w_attempt"),
        STAGES.c.status == (RunStatus.SUSPENDED if suspended else RunStatus.RUNNING),
        run_status == RunStatus.RUNNING,
    )
    if suspended:
        state = and_(state, STAGES.c.poll_count == bindparam("w_poll_count"))
    values: dict[str, Any] = {
        name: bindparam(f"v_{name}", type_=STAGES.c[name].type) for name in columns
    }
    values["version"] = STAGES.c.version + 1
    return (
        STAGES.update()
        .where(state)
        .values(values)
        .returning(STAGES.c.id, STAGES.c.started_at, STAGES.c.metrics)
    )


def _applied_before(session: Session, commit: StageCommit, run_status: str) -> bool:
    """Whether an earlier try or delivery of this commit's outcome applied it already.

    The record of the same attempt has moved to where this outcome takes it (or beyond), in
    whatever status the run now is: the commit that completed the last group also completed
    the run, and a sibling's failure may have failed it since.
    """
    row = session.execute(
        select(STAGES.c.status, STAGES.c.attempt, STAGES.c.poll_count).where(
            STAGES.c.workflow_run_id == commit.run_id,
            STAGES.c.stage_id == commit.stage.stage_id,
        )
    ).first()
    if row is None or row.attempt != commit.attempt:
        return False
    if run_status == RunStatus.RUNNING:
        return True  # nothing else moves a record of a RUNNING run past its expected state
    settled = (RunStatus.COMPLETED, RunStatus.FAILED)
    status = commit.outcome.status
    if status == StageOutcomeStatus.SUSPENDED:
        return row.status in (RunStatus.SUSPENDED, *settled)
    if status == StageOutcomeStatus.NOT_READY:
        return row.status in settled or (
            row.status == RunStatus.SUSPENDED and row.poll_count > commit.poll_count
        )
    return row.status in settled


def _group_completed(session: Session, run_id: str, group: int) -> bool:
    unfinished = session.scalar(
        select(func.count())
        .select_from(STAGES)
        .where(
            STAGES.c.workflow_run_id == run_id,
            STAGES.c.execution_group == group,
            STAGES.c.status != RunStatus.COMPLETED,
        )
    )
    return not unfinished


def _group_output(session: Session, run_id: str, group: int) -> dict[str, Any]:
    """A completed parallel group's output: each member's output by stage id."""
    rows = session.execute(
        select(STAGES.c.stage_id, STAGES.c.output_data)
        .where(STAGES.c.workflow_run_id == run_id, STAGES.c.execution_group == group)
        .order_by(STAGES.c.stage_number)
    )
    return {row.stage_id: row.output_data for row in rows if row.output_data is not None}


def commit_stage(session: Session, commit: StageCommit) -> CommitResult:
    """Write a stage outcome, its logs, annotations and events, or nothing but logs.

    Guarded by the run's status read under its row lock (in the stage ``UPDATE`` itself, see
    :func:`outcome_update`): against a run that is no longer RUNNING (cancelled, or already
    finished) only the logs land. A retried or duplicated commit finds its record already
    moved on and returns without writing again.
    """
    outcome, spec = commit.outcome, commit.stage
    applied = None
    changes: dict[str, Any] = {}
    if outcome.status != StageOutcomeStatus.SKIPPED:
        changes = stage_changes(commit)
        params = {f"v_{name}": value for name, value in changes.items()}
        params.update(
            w_run_id=commit.run_id,
            w_stage_id=spec.stage_id,
            w_attempt=commit.attempt,
            w_poll_count=commit.poll_count,
        )
        statement = outcome_update(tuple(changes), expects_suspended(commit))
        returned = direct.execute(session.connection(), statement, params)
        applied = returned[0] if returned else None
    if applied is None:
        # Nothing applied: a cancelled or finished run, a skip, a ghost or a duplicate.
        run_status = lock_run_status(session, commit.run_id)
        if run_status is None:
            return CommitResult(committed=False)
        if outcome.status != StageOutcomeStatus.SKIPPED and _applied_before(
            session, commit, run_status
        ):
            return CommitResult(
                committed=True,
                duplicate=True,
                completed_run=commit.completes_run and run_status == RunStatus.COMPLETED,
            )
        # Logs are diagnostics: they survive a ghosted stage (as in the original).
        if outcome.logs:
            session.execute(
                insert_ignore(session, LOGS),
                _log_rows(commit.commit_id, commit.run_id, spec.stage_id, None, outcome.logs),
            )
        return CommitResult(committed=False)
    record_id, started_at, metrics = applied
    link = outcome_link(record_id, spec.stage_id, commit.attempt, changes)
    return _write_rows(session, commit, record_id, started_at, metrics, link)


def outcome_events(commit: StageCommit, duration: int | None) -> list[tuple[str, dict[str, Any]]]:
    """The events an applied outcome writes for its stage: progress, then what became of it."""
    outcome, spec = commit.outcome, commit.stage
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
    if outcome.status == StageOutcomeStatus.COMPLETED:
        events.append(
            (
                "stage:completed",
                {"stage_id": spec.stage_id, "stage_name": spec.name, "duration": duration},
            )
        )
    elif outcome.status == StageOutcomeStatus.FAILED:
        events.append(
            (
                "stage:failed",
                {"stage_id": spec.stage_id, "stage_name": spec.name, "error": outcome.error},
            )
        )
    elif outcome.status == StageOutcomeStatus.SUSPENDED:
        next_poll_at = commit.next_poll_at.isoformat() if commit.next_poll_at else None
        events.append(
            (
                "stage:suspended",
                {"stage_id": spec.stage_id, "stage_name": spec.name, "next_poll_at": next_poll_at},
            )
        )
        events.append(("workflow:suspended", {"stage_id": spec.stage_id}))
    return events


def outcome_logs(commit: StageCommit, record_id: str) -> list[dict[str, Any]]:
    """The log rows an applied outcome writes: the stage's own, and an ERROR if it failed."""
    outcome, spec = commit.outcome, commit.stage
    logs = _log_rows(commit.commit_id, commit.run_id, spec.stage_id, record_id, outcome.logs)
    if outcome.status == StageOutcomeStatus.FAILED:
        logs.append(
            {
                "id": new_id(),
                "created_at": commit.now,
                "workflow_run_id": commit.run_id,
                "workflow_stage_id": record_id,
                "stage_id": spec.stage_id,
                "level": "ERROR",
                "message": f"Stage {spec.stage_id} failed: {outcome.error}",
                "metadata": None,
            }
        )
    return logs


def _write_rows(
    session: Session,
    commit: StageCommit,
    record_id: str,
    started_at: datetime | None,
    stored_metrics: dict[str, Any] | None,
    link: Link,
) -> CommitResult:
    """Everything an applied outcome writes besides the stage row.

    ``link`` is its chain link, which goes before its annotations'.
    """
    outcome, spec, now = commit.outcome, commit.stage, commit.now
    logs = outcome_logs(commit, record_id)
    fixes: dict[str, Any] = {}
    duration = outcome.duration_ms
    if commit.after_suspend and started_at is not None:
        # A batch stage's duration spans its suspension, not just the last check.
        duration = max(int((now - started_at).total_seconds() * 1000), 0)
        fixes["duration_ms"] = duration
    events = outcome_events(commit, duration)
    if outcome.ai_calls:
        session.execute(
            AI_CALLS.insert(),
            ai_call_rows(
                outcome.ai_calls, workflow_run_id=commit.run_id, stage_id=spec.stage_id, now=now
            ),
        )
        metrics = dict(stored_metrics or {})
        metrics["total_cost"] = float(metrics.get("total_cost", 0) or 0) + sum(
            c.cost for c in outcome.ai_calls
        )
        metrics["total_tokens"] = int(metrics.get("total_tokens", 0) or 0) + sum(
            c.input_tokens + c.output_tokens for c in outcome.ai_calls
        )
        fixes["metrics"] = metrics
    if fixes:
        session.execute(STAGES.update().where(STAGES.c.id == record_id).values(fixes))
    where = RowContext(
        commit.run_id, "stage", spec.stage_id, stage_record_id=record_id, attempt=commit.attempt
    )
    inserted, annotation_events = write_annotations(
        session, outcome.annotations, where, now, [link]
    )
    events.extend(annotation_events)
    opened: dict[str, str] = {}
    if (
        outcome.status == StageOutcomeStatus.COMPLETED
        and commit.open_next
        and (commit.group_size == 1 or _group_completed(session, commit.run_id, spec.group))
    ):
        # Opened RUNNING: the workflow schedules their activities as soon as it hears of this
        # commit, so the stages start now and those activities skip a transaction of their own.
        opened = open_stages(
            session,
            commit.run_id,
            [NewStage.of(s) for s in commit.open_next],
            commit.attempt,
            now,
            running=True,
        )
        events.extend(started_event(s) for s in commit.open_next if s.stage_id in opened)
    completed_run = False
    if (
        outcome.status == StageOutcomeStatus.COMPLETED
        and commit.completes_run
        and (commit.group_size == 1 or _group_completed(session, commit.run_id, spec.group))
    ):
        # The last group is complete: so is the run, in this same transaction (no separate
        # finalize step, and no window in which every stage is done but the run is not).
        run_output = (
            outcome.output
            if commit.group_size == 1
            else _group_output(session, commit.run_id, spec.group)
        )
        events.append(complete_run(session, commit.run_id, output=run_output, now=now))
        completed_run = True
    append_events(session, commit.run_id, events, causation_id=commit.commit_id, now=now)
    if logs:
        session.execute(LOGS.insert(), logs)
    return CommitResult(
        committed=True,
        decisions=decisions(inserted, commit.report_keys),
        opened=opened,
        completed_run=completed_run,
    )


def decisions(inserted: Sequence[dict[str, Any]], report_keys: Sequence[str]) -> list[Decision]:
    """The annotations a commit shows in the Temporal UI: decisions, and the reported keys."""
    reported = set(report_keys)
    return [
        (row["key"], str(row["value"])[:200])
        for row in inserted
        if row["key"].startswith(DECISION_PREFIX) or row["key"] in reported
    ]


_START_RUN = (
    RUNS.update()
    .where(RUNS.c.id == bindparam("run_id"))
    .values(
        status=RunStatus.RUNNING,
        started_at=bindparam("now", type_=RUNS.c.started_at.type),
        updated_at=bindparam("now", type_=RUNS.c.updated_at.type),
    )
)


def begin_stage(
    session: Session,
    run_id: str,
    spec: StageSpec,
    attempt: int,
    now: datetime,
    first_group: Sequence[NewStage] | None = None,
) -> StageStart:
    """Mark the stage RUNNING, emitting ``stage:started`` once.

    This is what the original's job did when it picked the stage up; a redelivered activity
    finds it RUNNING (run it again) or settled (never re-run a committed stage).

    With ``first_group``, a PENDING run is started first, in the same transaction (RUNNING,
    ``workflow:started``, the group's records opened, this stage's RUNNING), as ``start_run``
    would have.
    """
    status = lock_run_status(session, run_id)
    if status == RunStatus.PENDING and first_group is not None:
        direct.execute(session.connection(), _START_RUN, {"run_id": run_id, "now": now})
        opened = open_stages(session, run_id, first_group, attempt, now, running={spec.stage_id})
        events: list[tuple[str, dict[str, Any]]] = [("workflow:started", {})]
        if spec.stage_id in opened:
            events.append(started_event(spec))
        append_events(session, run_id, events, causation_id=run_id, now=now)
        if spec.stage_id in opened:
            return StageStart(StageStartAction.RUN, opened[spec.stage_id], RunStatus.RUNNING)
        status = RunStatus.RUNNING
    if status != RunStatus.RUNNING:
        return StageStart(StageStartAction.SKIP)
    key = _record_key(run_id, spec.stage_id, attempt)
    started = session.scalar(
        STAGES.update()
        .where(key, STAGES.c.status == RunStatus.PENDING)
        .values(status=RunStatus.RUNNING, started_at=now, updated_at=now)
        .returning(STAGES.c.id)
    )
    if started is not None:
        append_events(session, run_id, [started_event(spec)], causation_id=started, now=now)
        return StageStart(StageStartAction.RUN, started, RunStatus.RUNNING)
    return stage_start(session, run_id, spec.stage_id, attempt)


def _record_key(run_id: str, stage_id: str, attempt: int) -> Any:
    return and_(
        STAGES.c.workflow_run_id == run_id,
        STAGES.c.stage_id == stage_id,
        STAGES.c.attempt == attempt,
    )


def stage_start(session: Session, run_id: str, stage_id: str, attempt: int) -> StageStart:
    """What a delivery of the stage's activity finds in its record, whatever the run's status.

    RUNNING (run it), settled (its stored outcome), or anything else (skip).
    """
    record = (
        session.execute(
            select(
                STAGES.c.id, STAGES.c.status, STAGES.c.output_data, STAGES.c.error_message
            ).where(_record_key(run_id, stage_id, attempt))
        )
    ).first()
    if record is None:
        return StageStart(StageStartAction.SKIP)
    if record.status == RunStatus.RUNNING:
        return StageStart(StageStartAction.RUN, record.id, StageStatus(record.status))
    if record.status in (RunStatus.COMPLETED, RunStatus.FAILED):
        return StageStart(
            StageStartAction.SETTLED,
            record.id,
            StageStatus(record.status),
            record.output_data,
            record.error_message,
        )
    return StageStart(StageStartAction.SKIP)
