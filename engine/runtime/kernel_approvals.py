"""``kernel.approvals``: the approvals inbox, and the decisions that resume approval stages."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from engine.conventions import Approval
from engine.core.annotations import (
    Actor,
    AnnotationLimits,
    build_drafts,
    json_problem,
    text_problem,
)
from engine.core.payloads import ResumeRequest
from engine.core.records import RunStatus, StageRecord
from engine.core.workflows import Workflow
from engine.errors import InvalidInputError, InvalidStateError, StageNotFoundError
from engine.runtime.approval_stages import APPROVAL_STATE_KEY
from engine.store import SqlStore
from engine.store.approval_rows import PendingFilters, decode_cursor, encode_cursor

__all__ = ["ApprovalsPage", "KernelApprovals", "PendingApproval"]

MAX_PAGE = 1000


class PendingApproval(BaseModel):
    """An approval stage waiting for a decision, with what the reviewer decides on."""

    model_config = ConfigDict(frozen=True)

    workflow_run_id: str
    workflow_id: str
    stage_id: str
    requested_from: str | None
    """Whom the stage asks (``None``: anyone allowed to approve)."""
    waiting_since: datetime
    context: dict[str, Any]
    """The run's ``trigger.*`` annotations and the latest value of each ``decision.*`` key."""
    stage_name: str = ""
    stage_record_id: str = ""
    timeout_at: datetime | None = None
    """When the stage fails undecided (``None``: it waits as long as it takes)."""


class ApprovalsPage(BaseModel):
    """One page of the approvals inbox, oldest first."""

    model_config = ConfigDict(frozen=True)

    items: list[PendingApproval]
    next_cursor: str | None = None
    """Pass to ``pending(cursor=...)`` for the next page; ``None`` on the last page."""


def _rejection(actor: Actor, comment: str | None) -> str:
    why = f": {comment}" if comment else " (no comment given)"
    return f"Rejected by {actor.kind} {actor.id}{why}"


class KernelApprovals:
    """Find the approvals waiting across runs and decide them (``kernel.approvals``)."""

    def __init__(
        self,
        store: SqlStore,
        limits: AnnotationLimits,
        workflows: Mapping[str, Workflow],
        handle: Callable[[str], WorkflowHandle[Any, Any]] | None,
    ) -> None:
        self._store = store
        self._limits = limits
        self._workflows = workflows
        self._handle = handle

    async def pending(
        self,
        *,
        workflow_id: str | None = None,
        requested_from: str | None = None,
        waiting_longer_than: timedelta | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> ApprovalsPage:
        """Approval stages waiting for a decision across runs, oldest first.

        Args:
            workflow_id: Only runs of this workflow.
            requested_from: Only stages asking this person or team.
            waiting_longer_than: Only stages that have waited at least this long.
            limit: Page size, 1 to 1000.
            cursor: ``next_cursor`` of the previous page.

        Raises:
            InvalidInputError: a bad limit, duration or cursor.
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be an integer from 1 to {MAX_PAGE}, got {limit!r}")
        before = None
        if waiting_longer_than is not None:
            if not isinstance(waiting_longer_than, timedelta) or waiting_longer_than < timedelta():
                raise InvalidInputError(
                    f"waiting_longer_than must be a non-negative timedelta, "
                    f"got {waiting_longer_than!r}"
                )
            before = datetime.now(UTC) - waiting_longer_than
        rows = await self._store.pending_approvals(
            PendingFilters(
                workflow_id=workflow_id,
                requested_from=requested_from,
                waiting_before=before,
                after=decode_cursor(cursor) if cursor is not None else None,
                limit=limit + 1,
            )
        )
        items = [
            PendingApproval(
                workflow_run_id=row.workflow_run_id,
                workflow_id=row.workflow_id,
                stage_id=row.stage_id,
                requested_from=row.requested_from,
                waiting_since=row.waiting_since,
                context=row.context,
                stage_name=row.stage_name,
                stage_record_id=row.record_id,
                timeout_at=row.max_wait_until,
            )
            for row in rows[:limit]
        ]
        more = len(rows) > limit
        last = items[-1] if items else None
        next_cursor = (
            encode_cursor(last.waiting_since, last.stage_record_id) if more and last else None
        )
        return ApprovalsPage(items=items, next_cursor=next_cursor)

    async def decide(
        self,
        run_id: str,
        stage_id: str,
        *,
        approved: bool,
        actor: Actor,
        comment: str | None = None,
        output: dict[str, Any] | None = None,
    ) -> StageRecord:
        """Approve or reject a waiting approval stage, and return its record once settled.

        The ``approval.*`` annotations (approvers, timestamp, outcome, comment) are written in
        the same transaction as the stage's outcome. Approved: the stage completes with
        ``output`` (default ``{"approved": True, "approver": ..., "comment": ...}``).
        Rejected: it fails naming who rejected and why, or, for ``on_reject="continue"``,
        completes with ``approved: False``.

        Raises:
            RunNotFoundError: no such run.
            StageNotFoundError: the run has no such stage.
            InvalidStateError: the stage is not an approval stage waiting for a decision, or
                another decision got there first.
            InvalidInputError: a bad actor, comment or output.
        """
        if not isinstance(approved, bool):
            raise InvalidInputError(f"approved must be a bool, got {approved!r}")
        if not isinstance(actor, Actor):
            raise InvalidInputError(f"actor must be an engine.Actor, got {actor!r}")
        if comment is not None:
            problem = text_problem(comment) if isinstance(comment, str) else "is not a string"
            if problem is not None:
                raise InvalidInputError(f"comment {problem}")
        if output is not None:
            problem = json_problem(output) if isinstance(output, dict) else "is not an object"
            if problem is not None:
                raise InvalidInputError(f"output {problem}")
        run = await self._store.get_run(run_id)
        record = await self._waiting(run_id, stage_id)
        settings = (record.suspended_state or {}).get(APPROVAL_STATE_KEY) or {}
        now = datetime.now(UTC)
        attributes: dict[str, Any] = {
            Approval.approvers.key: [actor.id],
            Approval.timestamp.key: now.isoformat(timespec="milliseconds"),
            Approval.outcome.key: "approved" if approved else "rejected",
            Approval.comment.key: comment,
        }
        error = None
        if approved or settings.get("on_reject") == "continue":
            stage_output = output
            if stage_output is None:
                stage_output = {"approved": approved, "approver": actor.id, "comment": comment}
            stage_output = self._checked(run.workflow_id, record.stage_id, stage_output)
        else:
            stage_output = None
            error = _rejection(actor, comment)
        drafts = build_drafts(attributes, actor=actor, limits=self._limits)
        temporal_id = await self._store.temporal_workflow_id(run_id)
        if self._handle is None:
            raise RuntimeError("these approvals read the side-store only: decide through a kernel")
        if temporal_id is None:
            raise InvalidStateError(
                f"Run {run_id} has no workflow execution", workflow_run_id=run_id
            )
        try:
            await self._handle(temporal_id).execute_update(
                "wfe.resume_stage",
                ResumeRequest(
                    stage_id=stage_id,
                    output=stage_output,
                    annotations=drafts,
                    decision=True,
                    error=error,
                ),
            )
        except (WorkflowUpdateFailedError, RPCError) as err:
            cause = getattr(err, "cause", None)
            raise InvalidStateError(
                f"Stage {stage_id} of run {run_id} is not waiting for a decision: "
                f"{getattr(cause, 'message', None) or err}",
                workflow_run_id=run_id,
                stage_id=stage_id,
            ) from err
        stages = {s.stage_id: s for s in await self._store.list_stages(run_id)}
        return stages[stage_id]

    async def _waiting(self, run_id: str, stage_id: str) -> StageRecord:
        stages = {s.stage_id: s for s in await self._store.list_stages(run_id)}
        record = stages.get(stage_id)
        if record is None:
            raise StageNotFoundError(
                f"Stage {stage_id} not found in run {run_id}",
                workflow_run_id=run_id,
                stage_id=stage_id,
            )
        if record.waiting_since is None:
            raise InvalidStateError(
                f"Stage {stage_id} of run {run_id} is not an approval stage waiting for a "
                f"decision (it is {record.status})",
                workflow_run_id=run_id,
                stage_id=stage_id,
            )
        if record.status != RunStatus.SUSPENDED:
            raise InvalidStateError(
                f"Stage {stage_id} of run {run_id} is not waiting for a decision: it is "
                f"{record.status}",
                workflow_run_id=run_id,
                stage_id=stage_id,
            )
        return record

    def _checked(self, workflow_id: str, stage_id: str, output: dict[str, Any]) -> Any:
        """The output checked against the stage's output model, when this kernel knows it.

        Otherwise the worker's commit stores it as given.
        """
        run_workflow = self._workflows.get(workflow_id)
        if run_workflow is None or not run_workflow.has_stage(stage_id):
            return output
        stage = run_workflow.get_stage(stage_id)
        try:
            return stage.dump_output(stage.parse_output(output))
        except ValidationError as exc:
            raise InvalidInputError(
                f"Invalid output for approval stage {stage_id}: {exc}", stage_id=stage_id
            ) from None
