"""Run-level writes: create, start, finalize, cancel and rerun, each one transaction."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from engine.core.annotations import AnnotationDraft
from engine.core.ids import new_id
from engine.core.records import RunStartStatus, RunStatus, SettledRunStatus
from engine.errors import IdempotencyConflictError, InvalidStateError, RunNotFoundError
from engine.store import direct
from engine.store.annotation_rows import insert_drafts
from engine.store.chain import (
    INSERT_LINKS,
    Link,
    append_links,
    link_row,
    rerun_link,
    run_link,
)
from engine.store.contract import ActiveRun, NewRun, NewStage, Rerun, RowContext, StartedRun
from engine.store.models import (
    IDEMPOTENCY_KEYS,
    RUNS,
    STAGES,
    IdempotencyKey,
    WorkflowAnnotation,
    WorkflowArtifact,
    WorkflowLog,
    WorkflowRun,
    WorkflowStage,
    utcnow,
)
from engine.store.sql import append_events, insert_ignore, lock_run

__all__ = [
    "COMPLETION",
    "COMPLETION_READ",
    "NewRun",
    "NewStage",
    "cancel_run",
    "claim_idempotency",
    "complete_run",
    "create_run",
    "finalize_run",
    "open_stages",
    "pending_runs",
    "rerun_from",
    "restart_run",
    "run_completion",
    "running_runs",
    "same_request",
    "stage_rows",
    "start_run",
]


ACTIVE = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SUSPENDED)


_ON_BEHALF_OF = ("on_behalf_of_kind", "on_behalf_of_id", "on_behalf_of_version")


def annotation_events(
    rows: Sequence[dict[str, Any]], emit: set[str]
) -> list[tuple[str, dict[str, Any]]]:
    """``annotation:created`` events for the inserted rows whose draft asked for one."""
    events = []
    for row in rows:
        if row["id"] not in emit:
            continue
        body: dict[str, Any] = {"key": row["key"], "value": row["value"], "scope": row["scope"]}
        for name in ("scope_id", "actor_kind", "actor_id", "actor_version", *_ON_BEHALF_OF):
            if row.get(name) is not None:
                body[name] = row[name]
        body["attempt"] = row["attempt"]
        events.append(("annotation:created", body))
    return events


def write_annotations(
    session: Session,
    drafts: Sequence[AnnotationDraft],
    where: RowContext,
    now: datetime,
    chain: Sequence[Link] = (),
) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
    """Insert drafts and build the events for the inserted rows that asked for one.

    Their chain links go after ``chain`` (see
    :func:`~engine.store.annotation_rows.insert_drafts`).
    """
    pairs = insert_drafts(session, drafts, where, now, chain)
    inserted = [row for _, row in pairs]
    # Per draft, not per (key, idempotency key): two unkeyed writes of one key are two rows,
    # and only the one that asked for an event gets it.
    emit = {row["id"] for draft, row in pairs if draft.emit_event}
    return inserted, annotation_events(inserted, emit)


def claim_idempotency(
    session: Session, key: str, command_type: str, result: Any, now: datetime
) -> Any | None:
    """Claim ``key`` for ``command_type`` inside the caller's transaction.

    Returns ``None`` when this transaction claimed it (so its work goes ahead and commits with
    the key), or the result stored by the transaction that claimed it first.
    """
    claim = {
        "id": new_id(),
        "created_at": now,
        "key": key,
        "command_type": command_type,
        "result": result,
    }
    statement = _claim(insert_ignore(session, IDEMPOTENCY_KEYS))
    if direct.execute(session.connection(), statement, claim):
        return None
    return session.scalar(
        select(IdempotencyKey.result).where(
            IdempotencyKey.key == key, IdempotencyKey.command_type == command_type
        )
    )


def create_run(
    session: Session, new: NewRun, now: datetime, temporal_workflow_id: str | None = None
) -> tuple[str, bool]:
    """Insert a PENDING run, its annotations and events; returns (run id, created).

    ``temporal_workflow_id`` may name the run id as ``{run_id}``.
    """
    run_id = new_id()
    existing = claim_idempotency(
        session, new.idempotency_key, "run.create", {"workflow_run_id": run_id}, now
    )
    if existing is not None:
        existing_id = str(existing["workflow_run_id"])
        same_request(session, existing_id, new)
        return existing_id, False
    row = run_row(new, run_id, now, temporal_workflow_id)
    # The run's link: alone, or in one write with its first annotations (as the
    # one-statement create writes them).
    chain = [run_link(row)]
    link, head = link_row(run_id, None, 0, chain) if not new.annotations else (None, None)
    row["chain_head"], row["chain_length"] = head, int(link is not None)
    connection = session.connection()
    direct.execute(connection, _INSERT_RUN, row)
    if link is not None:
        direct.execute(connection, INSERT_LINKS, link)
    events: list[tuple[str, dict[str, Any]]] = [
        ("workflow:created", {"workflow_id": new.workflow_id})
    ]
    for drafts, _ in new.annotations:
        _, created = write_annotations(session, drafts, RowContext(run_id, "run"), now, chain)
        events.extend(created)
        chain = []
    append_events(session, run_id, events, causation_id=new.idempotency_key, now=now)
    return run_id, True


def run_row(
    new: NewRun, run_id: str, now: datetime, temporal_workflow_id: str | None
) -> dict[str, Any]:
    """Every column of a new PENDING run, as both ways of creating one insert it.

    Those are the general :func:`create_run` and
    :func:`engine.store.one_statement.create_in_one_statement`.
    """
    return {
        "id": run_id,
        "created_at": now,
        "updated_at": now,
        "version": 1,
        "workflow_id": new.workflow_id,
        "workflow_name": new.workflow_name,
        "workflow_type": new.workflow_id,
        "status": RunStatus.PENDING,
        "input": new.input,
        "config": new.config,
        "total_cost": 0.0,
        "total_tokens": 0,
        "priority": new.priority,
        "metadata": new.metadata,
        "temporal_workflow_id": (
            temporal_workflow_id.format(run_id=run_id) if temporal_workflow_id else None
        ),
    }


def _comparable(value: Any) -> Any:
    # As the JSON column gives it back: tuples are lists, keys are strings.
    return json.loads(json.dumps(value))


def same_request(session: Session, run_id: str, new: NewRun) -> None:
    """Check a repeated ``RunCreate`` against the run its key made.

    Raises:
        IdempotencyConflictError: the run was created with another workflow, input or
            config (merged config, as stored); the caller's transaction then writes nothing.
    """
    row = session.execute(
        select(WorkflowRun.workflow_id, WorkflowRun.input, WorkflowRun.config).where(
            WorkflowRun.id == run_id
        )
    ).one_or_none()
    if row is None:  # the run was deleted since: nothing left to differ from
        return
    differs = [
        name
        for name, stored, asked in (
            ("workflow id", row.workflow_id, new.workflow_id),
            ("input", row.input, new.input),
            ("config", row.config, new.config),
        )
        if _comparable(stored) != _comparable(asked)
    ]
    if differs:
        raise IdempotencyConflictError(
            f"Idempotency key {new.idempotency_key!r} belongs to run {run_id}, created with "
            f"another {' and '.join(differs)}",
            workflow_run_id=run_id,
            key=new.idempotency_key,
        )


_INSERT_RUN = RUNS.insert()


@cache
def _claim(insert: Any) -> Any:
    return insert.returning(IDEMPOTENCY_KEYS.c.id)


@cache
def _insert_stages(insert: Any) -> Any:
    return insert.returning(STAGES.c.id)


def open_stages(
    session: Session,
    run_id: str,
    stages: Sequence[NewStage],
    attempt: int,
    now: datetime,
    *,
    running: bool | AbstractSet[str] = False,
) -> dict[str, str]:
    """Create records for ``stages`` in one statement; existing ones are left alone.

    They are PENDING, or RUNNING and started now (all of them, or those whose stage ids
    ``running`` names). Returns stage id → record id of those created.
    """
    if not stages:
        return {}
    rows = stage_rows(run_id, stages, attempt, now, running=running)
    statement = _insert_stages(insert_ignore(session, STAGES))
    connection = session.connection()
    if len(rows) == 1:  # a sequential pipeline's next stage: the hot case
        created = {row[0] for row in direct.execute(connection, statement, rows[0])}
    else:
        created = set(connection.execute(statement, rows).scalars().all())
    return {str(row["stage_id"]): str(row["id"]) for row in rows if row["id"] in created}


def stage_rows(
    run_id: str,
    stages: Sequence[NewStage],
    attempt: int,
    now: datetime,
    *,
    running: bool | AbstractSet[str] = False,
) -> list[dict[str, Any]]:
    """The records (column values, fresh ids) that open ``stages``.

    They are PENDING, or RUNNING and started now (all of them, or those whose stage ids
    ``running`` names).
    """

    def started(stage_id: str) -> bool:
        return running if isinstance(running, bool) else stage_id in running

    return [
        {
            "id": new_id(),
            "created_at": now,
            "updated_at": now,
            "version": 1,
            "workflow_run_id": run_id,
            "stage_id": stage.stage_id,
            "stage_name": stage.name,
            "stage_number": stage.number,
            "execution_group": stage.group,
            "attempt": attempt,
            "status": RunStatus.RUNNING if started(stage.stage_id) else RunStatus.PENDING,
            "started_at": now if started(stage.stage_id) else None,
            "config": stage.config,
            "poll_count": 0,
        }
        for stage in stages
    ]


def start_run(
    session: Session,
    run_id: str,
    first_group_of: Callable[[dict[str, Any]], Sequence[NewStage]] | None,
    now: datetime,
    causation_id: str,
) -> StartedRun:
    """Move a PENDING run to RUNNING and open its first group; repeats are harmless.

    ``first_group_of`` builds the group's records from the run's config; ``None`` means the
    workflow is not registered: the run fails with ``WORKFLOW_NOT_FOUND`` (as the original's
    claim did).
    """
    run = lock_run(session, run_id)
    if run is None:
        return StartedRun(status=RunStartStatus.NOT_RUNNING)
    if run.status not in (RunStatus.PENDING, RunStatus.RUNNING):
        return StartedRun(status=RunStartStatus.NOT_RUNNING)
    if first_group_of is None:
        message = f"Workflow {run.workflow_id} not found in registry"
        run.status = RunStatus.FAILED
        run.completed_at = now
        run.output = {"error": {"code": "WORKFLOW_NOT_FOUND", "message": message}}
        session.add(
            WorkflowLog(
                id=new_id(), created_at=now, workflow_run_id=run_id, level="ERROR", message=message
            )
        )
        append_events(
            session,
            run_id,
            [("workflow:failed", {"error": message})],
            causation_id=causation_id,
            now=now,
        )
        return StartedRun(status=RunStartStatus.FAILED)
    if run.status == RunStatus.PENDING:
        run.status = RunStatus.RUNNING
        run.started_at = now
        append_events(
            session, run_id, [("workflow:started", {})], causation_id=causation_id, now=now
        )
    records = (
        session.execute(
            select(
                WorkflowStage.stage_id,
                WorkflowStage.execution_group,
                WorkflowStage.attempt,
                WorkflowStage.status,
                WorkflowStage.output_data,
            ).where(WorkflowStage.workflow_run_id == run_id)
        )
    ).all()
    attempt = max((r.attempt for r in records), default=0)
    first_group = first_group_of(run.config)
    open_stages(session, run_id, first_group, attempt, now)
    first = min((s.group for s in first_group), default=1)
    outputs = {
        r.stage_id: r.output_data
        for r in records
        if r.status == RunStatus.COMPLETED and r.execution_group < first
    }
    return StartedRun(
        status=RunStartStatus.OK,
        run_input=run.input,
        config=run.config,
        outputs=outputs,
        attempt=attempt,
    )


def finalize_run(
    session: Session,
    run_id: str,
    *,
    status: SettledRunStatus,
    output: Any,
    error: str | None,
    now: datetime,
    commit_id: str,
) -> bool:
    """End a RUNNING run COMPLETED (with totals and output) or FAILED; idempotent."""
    run = lock_run(session, run_id)
    if run is None or run.status != RunStatus.RUNNING:
        return False
    if claim_idempotency(session, commit_id, "run.finalize", True, now) is not None:
        return False
    events: list[tuple[str, dict[str, Any]]]
    if status == RunStatus.FAILED:
        run.status = RunStatus.FAILED
        run.completed_at = now
        run.duration_ms = _ms(now, run.created_at)
        run.execution_duration_ms = _ms(now, run.execution_started_at or run.started_at)
        events = [("workflow:failed", {"error": error or "Stage failed"})]
    else:
        events = [complete_run(session, run_id, output=output, now=now)]
    append_events(session, run_id, events, causation_id=commit_id, now=now)
    return True


def _ms(end: datetime, start: datetime | None) -> int | None:
    if start is None:
        return None
    if start.tzinfo is None:  # SQLite hands back naive UTC from a raw (Core) select
        start = start.replace(tzinfo=UTC)
    return max(int((end - start).total_seconds() * 1000), 0)


COMPLETION_READ = (
    select(
        RUNS.c.created_at,
        func.coalesce(RUNS.c.execution_started_at, RUNS.c.started_at),
        STAGES.c.id,
        STAGES.c.metrics,
    )
    .select_from(RUNS.outerjoin(STAGES, STAGES.c.workflow_run_id == RUNS.c.id))
    .where(RUNS.c.id == bindparam("run_id"))
)
"""What a run's completion reads: when the run and its execution began, and each stage's
record id and metrics (one row per stage; a run without stages has one row)."""

_COMPLETION_COLUMNS = (
    "status",
    "completed_at",
    "duration_ms",
    "execution_duration_ms",
    "output",
    "total_cost",
    "total_tokens",
    "updated_at",
)
"""The run columns a completion sets (``version`` moves on too)."""

Event = tuple[str, dict[str, Any]]


def run_completion(
    found: Sequence[Sequence[Any]], output: Any, now: datetime
) -> tuple[dict[str, Any], Event]:
    """A completed run's :data:`COMPLETION` parameters and its ``workflow:completed`` event.

    ``found`` is :data:`COMPLETION_READ`'s rows with the stages as the completing commit leaves
    them. Both ways of completing a run build them here: :func:`complete_run` reads after its
    stage's ``UPDATE``, the one-statement commit (:mod:`engine.store.one_statement`) before
    it, with its stage's new metrics put in.
    """
    created_at = found[0][0] if found else None
    metrics = [row[3] or {} for row in found]
    total_cost = sum(float(m.get("total_cost", 0) or 0) for m in metrics)
    total_tokens = sum(int(m.get("total_tokens", 0) or 0) for m in metrics)
    duration = _ms(now, created_at) or 0
    values = {
        "r_status": RunStatus.COMPLETED,
        "r_completed_at": now,
        "r_duration_ms": duration,
        "r_execution_duration_ms": _ms(now, found[0][1]) if found else None,
        "r_output": output,
        "r_total_cost": total_cost,
        "r_total_tokens": total_tokens,
        "r_updated_at": now,
    }
    body = {
        "duration": duration,
        "total_cost": total_cost,
        "total_tokens": total_tokens,
        "output": output,
    }
    return values, ("workflow:completed", body)


COMPLETION: dict[str, Any] = {
    **{name: bindparam(f"r_{name}", type_=RUNS.c[name].type) for name in _COMPLETION_COLUMNS},
    "version": RUNS.c.version + 1,
}
"""A completion's values in a run row's ``UPDATE``: :func:`run_completion`'s, bound as
``r_<column>``, one per column of ``_COMPLETION_COLUMNS``."""
_COMPLETE = RUNS.update().where(RUNS.c.id == bindparam("run_id")).values(COMPLETION)


def complete_run(session: Session, run_id: str, *, output: Any, now: datetime) -> Event:
    """Set a RUNNING run COMPLETED with its output and totals; return ``workflow:completed``.

    The caller holds the run's lock and writes the event (with the rest of its events). Its
    two statements are built once and go to the driver (:mod:`engine.store.direct`): built
    per call, SQLAlchemy made a cache key for each every time, and on SQLite the last stage's
    commit took 2.5 ms against 1.3 for the stages before it; 1.6 against 1.5 this way
    (``bench/README.md``, session 13).
    """
    connection = session.connection()
    found = direct.execute(connection, COMPLETION_READ, {"run_id": run_id})
    values, event = run_completion(found, output, now)
    direct.execute(connection, _COMPLETE, {"run_id": run_id, **values})
    return event


def cancel_run(
    session: Session, run_id: str, reason: str | None, now: datetime, causation_id: str
) -> bool:
    """Cancel a PENDING or RUNNING run and its non-terminal stages; False if nothing to do."""
    run = lock_run(session, run_id)
    if run is None or run.status not in (RunStatus.PENDING, RunStatus.RUNNING):
        return False
    run.status = RunStatus.CANCELLED
    run.completed_at = now
    session.execute(
        update(WorkflowStage)
        .where(WorkflowStage.workflow_run_id == run_id, WorkflowStage.status.in_(ACTIVE))
        .values(status=RunStatus.CANCELLED, completed_at=now, next_poll_at=None, updated_at=now)
    )
    body = {"reason": reason} if reason is not None else {}
    append_events(
        session, run_id, [("workflow:cancelled", body)], causation_id=causation_id, now=now
    )
    return True


def _rerun_claim(
    session: Session, key: str, run_id: str, from_stage_id: str, now: datetime
) -> Rerun | None:
    """Claim a rerun's idempotency key; the earlier rerun's result when it was claimed before.

    Raises:
        IdempotencyConflictError: the key reran another run or from another stage.
    """
    claimed = claim_idempotency(session, key, "run.rerunFrom", {"workflow_run_id": run_id}, now)
    if claimed is None:
        return None
    if claimed.get("workflow_run_id") != run_id or claimed.get("from_stage_id") != from_stage_id:
        raise IdempotencyConflictError(
            f"Idempotency key {key!r} belongs to the rerun of run "
            f"{claimed.get('workflow_run_id')} from stage {claimed.get('from_stage_id')}",
            workflow_run_id=str(claimed.get("workflow_run_id")),
            key=key,
        )
    return Rerun(
        deleted_stages=list(claimed.get("deleted_stages", [])),
        attempt=int(claimed.get("attempt", 0)),
        repeated=True,
    )


def rerun_from(
    session: Session,
    run_id: str,
    *,
    target_group: int,
    groups_before: Sequence[str],
    target_stages: Sequence[NewStage],
    temporal_workflow_id: str,
    now: datetime,
    causation_id: str,
    idempotency_key: str | None = None,
    from_stage_id: str = "",
) -> Rerun:
    """Delete the records of ``target_group`` and later, and reopen the target group.

    With an ``idempotency_key``, the rerun happens once: a repeat returns the first rerun's
    result (``repeated``) and writes nothing.

    Raises:
        RunNotFoundError: no run has that id.
        InvalidStateError: the run is not COMPLETED or FAILED, or an earlier stage has no
            COMPLETED record (the original only asked for *some* earlier record).
        IdempotencyConflictError: the key was used for another rerun.
    """
    if idempotency_key is not None:
        earlier = _rerun_claim(session, idempotency_key, run_id, from_stage_id, now)
        if earlier is not None:
            return earlier
    run = lock_run(session, run_id)
    if run is None:
        raise RunNotFoundError(f"Run {run_id} not found", workflow_run_id=run_id)
    if run.status not in (RunStatus.COMPLETED, RunStatus.FAILED):
        raise InvalidStateError(
            f"Cannot rerun workflow in {run.status} state. Must be COMPLETED or FAILED.",
            workflow_run_id=run_id,
        )
    records = (
        session.scalars(select(WorkflowStage).where(WorkflowStage.workflow_run_id == run_id))
    ).all()
    completed = {r.stage_id for r in records if r.status == RunStatus.COMPLETED}
    missing = [s for s in groups_before if s not in completed]
    if missing:
        raise InvalidStateError(
            f"Cannot rerun from group {target_group}: previous stages have not been executed "
            f"(not COMPLETED: {', '.join(missing)})",
            workflow_run_id=run_id,
        )
    removed = [r for r in records if r.execution_group >= target_group]
    removed_ids = [r.id for r in removed]
    attempt = max((r.attempt for r in removed), default=-1) + 1
    if removed_ids:
        # Done explicitly rather than through FK actions, which SQLite applies only when
        # foreign keys are switched on for the connection.
        # The link goes (its record does), the reference to the record that made it stays.
        session.execute(
            update(WorkflowAnnotation)
            .where(WorkflowAnnotation.workflow_stage_record_id.in_(removed_ids))
            .values(
                stage_record_ref=WorkflowAnnotation.workflow_stage_record_id,
                workflow_stage_record_id=None,
            )
        )
        session.execute(delete(WorkflowLog).where(WorkflowLog.workflow_stage_id.in_(removed_ids)))
        session.execute(delete(WorkflowStage).where(WorkflowStage.id.in_(removed_ids)))
    stage_ids = [r.stage_id for r in removed]
    if stage_ids:
        prefixes = [f"{stage_id}/" for stage_id in stage_ids]
        artifact_keys = (
            session.scalars(
                select(WorkflowArtifact.key).where(WorkflowArtifact.workflow_run_id == run_id)
            )
        ).all()
        doomed = [k for k in artifact_keys if any(k.startswith(p) for p in prefixes)]
        if doomed:
            session.execute(
                delete(WorkflowArtifact).where(
                    WorkflowArtifact.workflow_run_id == run_id, WorkflowArtifact.key.in_(doomed)
                )
            )
    run.status = RunStatus.RUNNING
    run.execution_started_at = now  # started_at stays the run's first start
    run.completed_at = None
    run.duration_ms = None
    run.execution_duration_ms = None
    run.output = None
    run.total_cost = 0.0
    run.total_tokens = 0
    # The kernel passes a template: each rerun is a new Temporal workflow, named by its attempt.
    run.temporal_workflow_id = temporal_workflow_id.format(attempt=attempt)
    run.version = run.version + 1
    append_links(session, run_id, [rerun_link(run_id, attempt, removed_ids)])
    open_stages(session, run_id, target_stages, attempt, now)
    append_events(session, run_id, [("workflow:started", {})], causation_id=causation_id, now=now)
    if idempotency_key is not None:
        session.execute(
            update(IdempotencyKey)
            .where(
                IdempotencyKey.key == idempotency_key,
                IdempotencyKey.command_type == "run.rerunFrom",
            )
            .values(
                result={
                    "workflow_run_id": run_id,
                    "from_stage_id": from_stage_id,
                    "deleted_stages": stage_ids,
                    "attempt": attempt,
                }
            )
        )
    return Rerun(deleted_stages=stage_ids, attempt=attempt)


def count_rows(session: Session, model: Any, run_id: str) -> int:
    """Rows of ``model`` belonging to ``run_id`` (tests and benchmarks use it)."""
    return int(
        session.scalar(
            select(func.count()).select_from(model).where(model.workflow_run_id == run_id)
        )
        or 0
    )


def restart_run(
    session: Session, run_id: str, *, expected_temporal_id: str | None, temporal_id: str
) -> int | None:
    """Point a RUNNING run at a new Temporal execution and return the group it resumes at.

    A compare-and-set on the run's current execution id: of two callers that both found the
    execution gone, one wins and the other gets ``None`` (as does a run no longer RUNNING).
    The resumed group is the first one with a stage not COMPLETED; its unfinished records go
    back to PENDING, so the new execution begins them again (a suspended batch is submitted
    again: its waiting state lived in the lost execution).
    """
    run = lock_run(session, run_id)
    if (
        run is None
        or run.status != RunStatus.RUNNING
        or run.temporal_workflow_id != expected_temporal_id
    ):
        return None
    records = (
        session.execute(
            select(WorkflowStage.id, WorkflowStage.execution_group, WorkflowStage.status).where(
                WorkflowStage.workflow_run_id == run_id
            )
        )
    ).all()
    unfinished = [r for r in records if r.status != RunStatus.COMPLETED]
    group = min((r.execution_group for r in unfinished), default=None)
    if group is None:  # every stage completed: the lost execution only had to finalize
        group = max((r.execution_group for r in records), default=1)
    reopen = [r.id for r in unfinished if r.execution_group == group]
    if reopen:
        session.execute(
            update(WorkflowStage)
            .where(WorkflowStage.id.in_(reopen))
            .values(status=RunStatus.PENDING, next_poll_at=None, updated_at=utcnow())
        )
    run.temporal_workflow_id = temporal_id
    run.version = run.version + 1
    return group


def _active_runs(session: Session, status: RunStatus, order: Sequence[Any], limit: int) -> Any:
    rows = session.execute(
        select(
            WorkflowRun.id,
            WorkflowRun.workflow_id,
            WorkflowRun.temporal_workflow_id,
            WorkflowRun.priority,
            WorkflowRun.updated_at,
        )
        .where(WorkflowRun.status == status)
        .order_by(*order, WorkflowRun.id)
        .limit(limit)
    )
    return [ActiveRun(r[0], r[1], r[2], r[3], r[4]) for r in rows.all()]


def pending_runs(session: Session, limit: int) -> list[ActiveRun]:
    """PENDING runs, highest priority then oldest first."""
    order = (WorkflowRun.priority.desc(), WorkflowRun.created_at)
    return list(_active_runs(session, RunStatus.PENDING, order, limit))


def running_runs(session: Session, limit: int) -> list[ActiveRun]:
    """RUNNING runs, least recently updated first."""
    return list(_active_runs(session, RunStatus.RUNNING, (WorkflowRun.updated_at,), limit))
