"""The approvals and fork endpoints of the JSON API.

``GET /api/approvals`` lists the approval stages waiting for a decision across runs (``read``);
``POST /api/runs/{run_id}/stages/{stage_id}/decision`` decides one (``approve``), and
``POST /api/runs/{run_id}/fork`` starts a fork (``write``). The approver is the caller's
principal, never a field of the body: a body naming an actor is refused.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from engine.commands import RunForkResult
from engine.core.annotations import AnnotationLimits
from engine.core.records import StageRecord
from engine.errors import EngineError
from engine.runtime.kernel_approvals import ApprovalsPage, KernelApprovals
from engine.web.api import _WRITE_ERRORS, RunId, State, _Body, _dispatch, _existing, _kernel
from engine.web.auth import Principal, Right, require
from engine.web.state import ErrorBody, WebState, engine_error

__all__ = ["DecisionBody", "ForkBody", "approvals_of", "router"]

router = APIRouter(prefix="/api")

Approver = Annotated[Principal, Depends(require(Right.APPROVE))]
"""The caller of a decision: a principal holding the ``approve`` right, recorded as the
approver (its actor); the body never names one."""

_READ = [Depends(require(Right.READ))]


class DecisionBody(_Body):
    """A decision on a waiting approval stage (the approver is the caller)."""

    approved: bool
    comment: str | None = None
    output: dict[str, Any] | None = None
    """The stage output when approved (default ``{approved, approver, comment}``)."""


class ForkBody(_Body):
    """Where to fork a terminal run, and what to change."""

    from_stage_id: str
    input: Any = None
    config: dict[str, Any] | None = None
    reason: str | None = None
    idempotency_key: str | None = None


@router.get(
    "/approvals",
    response_model=ApprovalsPage,
    dependencies=_READ,
    summary="Approvals waiting, oldest first",
)
async def get_approvals(
    state: State,
    workflow_id: Annotated[str | None, Query(description="Only runs of this workflow.")] = None,
    requested_from: Annotated[
        str | None, Query(description="Only stages asking this person or team.")
    ] = None,
    waiting_longer_than: Annotated[
        timedelta | None,
        Query(description="Only approvals waiting at least this long (seconds or PT1H)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size (1 to 1000).")] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> ApprovalsPage:
    """The approval stages waiting for a decision across runs, with their runs' context."""
    try:
        return await approvals_of(state).pending(
            workflow_id=workflow_id,
            requested_from=requested_from,
            waiting_longer_than=waiting_longer_than,
            limit=limit,
            cursor=cursor,
        )
    except EngineError as exc:
        raise engine_error(exc, field="cursor" if cursor else None) from None


def approvals_of(state: WebState) -> KernelApprovals:
    """The kernel's approvals, or a read-only view of the store's when there is no kernel."""
    if state.kernel is not None:
        return state.kernel.approvals
    return KernelApprovals(state.store, AnnotationLimits(), {}, None)


@router.post(
    "/runs/{run_id}/stages/{stage_id}/decision",
    response_model=StageRecord,
    responses={**_WRITE_ERRORS, 409: {"model": ErrorBody, "description": "Not waiting"}},
    summary="Approve or reject a waiting approval stage",
)
async def decide(
    state: State,
    run_id: RunId,
    stage_id: Annotated[str, Path(description="The approval stage's id.", max_length=128)],
    body: DecisionBody,
    principal: Approver,
) -> StageRecord:
    """Decide as the caller's principal (it needs the ``approve`` right).

    Answers the stage record once the outcome is committed.
    """
    kernel = _kernel(state)
    await _existing(state, run_id)
    try:
        record: StageRecord = await kernel.approvals.decide(
            run_id,
            stage_id,
            approved=body.approved,
            actor=principal.actor,
            comment=body.comment,
            output=body.output,
        )
    except EngineError as exc:
        raise engine_error(exc, field="stage_id" if exc.stage_id else None) from None
    return record


@router.post(
    "/runs/{run_id}/fork",
    response_model=RunForkResult,
    response_model_by_alias=False,
    dependencies=[Depends(require(Right.WRITE))],
    responses={**_WRITE_ERRORS, 409: {"model": ErrorBody, "description": "Source not final"}},
    summary="Fork a finished run from a stage",
)
async def fork_run(state: State, run_id: RunId, body: ForkBody) -> RunForkResult:
    """A new run starting at ``from_stage_id``'s group; the source is left as it is."""
    kernel = _kernel(state)
    await _existing(state, run_id)
    command = {"type": "run.fork", "workflow_run_id": run_id, **body.model_dump(exclude_none=True)}
    result: RunForkResult = await _dispatch(kernel, command)
    return result
