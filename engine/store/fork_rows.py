"""Forking a run: a new run that reuses the source's completed stages before one group.

One transaction reads the source (never writing to it: its status, records, annotations and
events stay as they were) and creates the fork PENDING with its ``revision.*`` annotations,
copies of the source's records before the target group (COMPLETED, each naming the record it
was copied from) and copies of those stages' artifacts, so outputs stored by reference resolve
in the fork too. The fork's idempotency key makes a repeat find the same fork.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.core.ids import new_id
from engine.core.records import TERMINAL_STATUSES, RunStatus
from engine.errors import InvalidStateError, RunNotFoundError
from engine.store.chain import append_links, stage_link
from engine.store.contract import NewRun
from engine.store.models import ANNOTATIONS, WorkflowArtifact, WorkflowRun, WorkflowStage
from engine.store.runs import create_run

__all__ = ["Fork", "fork_run", "forks_of"]


@dataclass(frozen=True)
class Fork:
    """What ``fork_run`` made (or found through its idempotency key)."""

    run_id: str
    created: bool
    copied_stages: tuple[str, ...] = ()


def fork_run(
    session: Session,
    source_id: str,
    new: NewRun,
    *,
    target_group: int,
    groups_before: Sequence[str],
    temporal_workflow_id: str,
    now: datetime,
) -> Fork:
    """Create the fork of ``source_id`` that starts at ``target_group``.

    Raises:
        RunNotFoundError: no such source run.
        InvalidStateError: the source is not terminal, or a stage before the target group
            has no COMPLETED record.
    """
    source = session.get(WorkflowRun, source_id)
    if source is None:
        raise RunNotFoundError(f"Run {source_id} not found", workflow_run_id=source_id)
    if source.status not in TERMINAL_STATUSES:
        raise InvalidStateError(
            f"Cannot fork run {source_id} while it is {source.status}: wait until it is "
            "COMPLETED, FAILED or CANCELLED",
            workflow_run_id=source_id,
        )
    records = {
        r.stage_id: r
        for r in session.scalars(
            select(WorkflowStage).where(WorkflowStage.workflow_run_id == source_id)
        )
    }
    missing = [
        s for s in groups_before if s not in records or records[s].status != RunStatus.COMPLETED
    ]
    if missing:
        raise InvalidStateError(
            f"Cannot fork run {source_id} from group {target_group}: earlier stages are not "
            f"COMPLETED: {', '.join(missing)}",
            workflow_run_id=source_id,
        )
    run_id, created = create_run(session, new, now, temporal_workflow_id)
    if not created:
        return Fork(run_id, created=False)
    copies = [records[s] for s in groups_before]
    links = []
    for record in copies:
        copy_id = new_id()
        # A copied outcome is an outcome of the fork's record too: it joins the fork's chain.
        links.append(
            stage_link(copy_id, record.stage_id, 0, RunStatus.COMPLETED, record.output_data, None)
        )
        session.add(
            WorkflowStage(
                id=copy_id,
                created_at=now,
                updated_at=now,
                version=1,
                workflow_run_id=run_id,
                stage_id=record.stage_id,
                stage_name=record.stage_name,
                stage_number=record.stage_number,
                execution_group=record.execution_group,
                attempt=0,
                status=RunStatus.COMPLETED,
                started_at=record.started_at,
                completed_at=record.completed_at,
                duration_ms=record.duration_ms,
                input_data=record.input_data,
                output_data=record.output_data,
                config=record.config,
                metrics=record.metrics,
                poll_count=0,
                copied_from=record.id,
            )
        )
    prefixes = tuple(f"{record.stage_id}/" for record in copies)
    if prefixes:
        artifacts = session.scalars(
            select(WorkflowArtifact).where(WorkflowArtifact.workflow_run_id == source_id)
        ).all()
        for artifact in artifacts:
            if artifact.key.startswith(prefixes):
                session.add(
                    WorkflowArtifact(
                        id=new_id(),
                        created_at=now,
                        workflow_run_id=run_id,
                        key=artifact.key,
                        type=artifact.type,
                        data=artifact.data,
                        size=artifact.size,
                    )
                )
    session.flush()
    append_links(session, run_id, links)
    return Fork(run_id, created=True, copied_stages=tuple(groups_before))


def forks_of(session: Session, run_id: str) -> list[str]:
    """Ids of the runs whose ``revision.previous_run_id`` is ``run_id``, oldest first."""
    rows = session.execute(
        select(ANNOTATIONS.c.workflow_run_id)
        .where(
            ANNOTATIONS.c.key == "revision.previous_run_id",
            ANNOTATIONS.c.value_text == run_id,
        )
        .order_by(ANNOTATIONS.c.created_at, ANNOTATIONS.c.id)
    )
    return list(dict.fromkeys(str(row.workflow_run_id) for row in rows))
