"""Approval stages: a stage that waits for a person's decision (``define_approval_stage``).

An approval stage suspends as soon as it starts and waits, durably and without polling, for a
decision sent through ``kernel.approvals.decide`` (a Temporal Update that ends the workflow's
wait at once) or for its ``timeout``. Its stage record says whom it waits for
(``waiting_for``) and since when (``waiting_since``); the decision's ``approval.*``
annotations are committed in the same transaction as the stage's outcome.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Literal

from engine.core.stages import InT, OutT, Stage, Suspend, _build
from engine.runtime.context import StageContext

__all__ = ["APPROVAL_STATE_KEY", "define_approval_stage"]

APPROVAL_STATE_KEY = "approval"
"""Key of the suspended state that carries the stage's approval settings: the kernel reads
``on_reject`` from the record rather than from a registry it may not have."""


def _request(requested_from: str | None, timeout: timedelta | None, on_reject: str) -> Any:
    async def request_decision(ctx: StageContext[Any, Any]) -> Suspend:
        who = requested_from or "anyone allowed to approve"
        ctx.log("INFO", f"waiting for a decision from {who}")
        return Suspend(
            state={
                APPROVAL_STATE_KEY: {
                    "requested_from": requested_from,
                    "on_reject": on_reject,
                    "timeout_seconds": timeout.total_seconds() if timeout else None,
                }
            },
            max_wait=timeout,
        )

    return request_decision


def define_approval_stage(
    id: str,
    *,
    name: str | None = None,
    input: type[InT] | None = None,
    output: type[OutT] | None = None,
    requested_from: str | None = None,
    timeout: timedelta | None = None,
    on_reject: Literal["fail", "continue"] = "fail",
    description: str | None = None,
    dependencies: Iterable[str] | None = None,
) -> Stage[InT, OutT, Any]:
    """Define a stage that suspends at once and waits for a person to approve or reject.

    Example:
        ``review = define_approval_stage("review", requested_from="support-leads",
        timeout=timedelta(hours=24))``; a reviewer then calls
        ``await kernel.approvals.decide(run_id, "review", approved=True, actor=me)``.

    Args:
        id: Unique id within the workflow (``ID_PATTERN``).
        name: Human-readable name; the id when omitted.
        input: Input model, or ``None`` for no input (the previous group's output is kept
            on the record either way, for the reviewer to read).
        output: Output model the decision's ``output`` is checked against; ``None`` accepts
            the default ``{"approved": ..., "approver": ..., "comment": ...}``.
        requested_from: Whom the decision is asked of (a person, a team); ``None``: anyone.
        timeout: How long to wait before the stage fails, as ``max_wait`` does; no limit when
            ``None``.
        on_reject: ``"fail"``: a rejection fails the stage (and the run) with a message naming
            who rejected and why; ``"continue"``: the stage completes with ``approved: false``.
        description: Optional longer description.
        dependencies: Ids of stages that must be in earlier groups.

    Returns:
        The :class:`Stage`, of kind ``approval``.

    Raises:
        WorkflowDefinitionError: An argument is not valid.
    """
    built = _build(
        id=id,
        name=name,
        execute=_request(requested_from, timeout, on_reject),
        input=input,
        output=output,
        config=None,
        description=description,
        dependencies=dependencies,
        kind="approval",
        check_completion=None,
        retry_policy=None,
        start_to_close_timeout=None,
        heartbeat_timeout=None,
        requested_from=requested_from,
        timeout=timeout,
        on_reject=on_reject,
    )
    return built
