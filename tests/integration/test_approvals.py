"""Approval stages on Temporal: wait without polling, decide, reject, time out, race."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType

from engine import (
    Actor,
    InvalidInputError,
    InvalidStateError,
    Kernel,
    RunCreate,
    RunCreateAnnotation,
    RunStatus,
    StageContext,
    StageNotFoundError,
    StageRecord,
    define_approval_stage,
    define_stage,
    define_workflow,
)
from engine.conventions import Decision, Trigger
from engine.runtime.kernel import temporal_workflow_id
from tests.helpers import running_kernel

ALICE = Actor(kind="user", id="alice@example.com")
BOB = Actor(kind="user", id="bob@example.com")


@define_stage(id="propose")
async def propose(ctx: StageContext[Any, None]) -> dict[str, Any]:
    ctx.annotate(Decision.outcome, "refund")
    ctx.annotate(Decision.rationale, "double charge")
    return {"amount": 40}


@define_stage(id="act")
async def act(ctx: StageContext[Any, None]) -> dict[str, Any]:
    return {"review": ctx.require("review"), "proposal": ctx.require("propose")}


def approval_workflow(
    *,
    workflow_id: str = "refund",
    on_reject: Any = "fail",
    timeout: timedelta | None = None,
    requested_from: str | None = "support-leads",
) -> Any:
    review = define_approval_stage(
        "review",
        name="Lead review",
        requested_from=requested_from,
        timeout=timeout,
        on_reject=on_reject,
    )
    return define_workflow(id=workflow_id).pipe(propose).pipe(review).pipe(act).build()


async def _create(kernel: Kernel, workflow_id: str = "refund") -> str:
    created = await kernel.dispatch(
        RunCreate(
            workflow_id=workflow_id,
            input={"ticket": "T-1"},
            annotations=[
                RunCreateAnnotation(
                    attributes={Trigger.source.key: "support-inbox", Trigger.reason.key: "T-1"}
                )
            ],
        )
    )
    return created.workflow_run_id


async def _waiting(kernel: Kernel, run_id: str, stage_id: str = "review") -> StageRecord:
    for _ in range(1000):
        stages = {s.stage_id: s for s in await kernel.list_stages(run_id)}
        if stage_id in stages and stages[stage_id].status == RunStatus.SUSPENDED:
            return stages[stage_id]
        await asyncio.sleep(0.02)
    raise AssertionError(f"stage {stage_id} of run {run_id} never waited")


async def test_approve_completes_the_stage_with_annotations_in_its_commit(env, store):
    async with running_kernel(env, store, approval_workflow()) as kernel:
        run_id = await _create(kernel)
        waiting = await _waiting(kernel, run_id)
        assert waiting.waiting_for == "support-leads"
        assert waiting.waiting_since is not None
        assert waiting.next_poll_at is None  # never polled

        page = await kernel.approvals.pending()
        (item,) = [i for i in page.items if i.workflow_run_id == run_id]
        assert (item.workflow_id, item.stage_id, item.requested_from) == (
            "refund",
            "review",
            "support-leads",
        )
        assert item.waiting_since == waiting.waiting_since
        assert item.context == {
            "trigger.source": "support-inbox",
            "trigger.reason": "T-1",
            "decision.outcome": "refund",
            "decision.rationale": "double charge",
        }

        record = await kernel.approvals.decide(
            run_id, "review", approved=True, actor=ALICE, comment="fine by me"
        )
        # decide returns once the outcome is committed
        assert record.status == RunStatus.COMPLETED
        assert record.output_data == {
            "approved": True,
            "approver": ALICE.id,
            "comment": "fine by me",
        }
        run = await kernel.wait_for_run(run_id)
        assert run.status == RunStatus.COMPLETED
        assert run.output["review"]["approver"] == ALICE.id
        verified = await kernel.verify(run_id)  # the decision is a link of the run's chain
        assert verified.ok, verified.first_bad
        approvals = {
            a.key: a for a in await kernel.annotations.list(run_id, key_prefix="approval.")
        }
        assert set(approvals) == {
            "approval.approvers",
            "approval.timestamp",
            "approval.outcome",
            "approval.comment",
        }
        assert approvals["approval.approvers"].value == [ALICE.id]
        assert approvals["approval.outcome"].value == "approved"
        assert approvals["approval.comment"].value == "fine by me"
        for annotation in approvals.values():
            assert (annotation.actor_kind, annotation.actor_id) == ("user", ALICE.id)
            assert annotation.workflow_stage_record_id == record.id
            # written by the commit that completed the stage (one transaction, one clock)
            assert annotation.created_at == record.completed_at
        assert run_id not in {i.workflow_run_id for i in (await kernel.approvals.pending()).items}

        # The wait is one durable wait: no timers, no polling activities.
        history = await kernel.client.get_workflow_handle(
            temporal_workflow_id(run_id)
        ).fetch_history()
        types = [e.event_type for e in history.events]
        assert EventType.EVENT_TYPE_TIMER_STARTED not in types
        scheduled = [
            e.activity_task_scheduled_event_attributes.activity_type.name
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        ]
        assert "wfe.check_completion" not in scheduled


async def test_reject_fails_the_stage_naming_who_and_why(env, store):
    async with running_kernel(env, store, approval_workflow()) as kernel:
        run_id = await _create(kernel)
        await _waiting(kernel, run_id)
        record = await kernel.approvals.decide(
            run_id, "review", approved=False, actor=BOB, comment="amount too high"
        )
        assert record.status == RunStatus.FAILED
        assert record.error_message == f"Rejected by user {BOB.id}: amount too high"
        run = await kernel.wait_for_run(run_id)
        assert run.status == RunStatus.FAILED
        outcome = await kernel.annotations.list(run_id, key="approval.outcome")
        assert [(a.value, a.actor_id) for a in outcome] == [("rejected", BOB.id)]
        assert {s.stage_id: s.status for s in await kernel.list_stages(run_id)} == {
            "propose": RunStatus.COMPLETED,
            "review": RunStatus.FAILED,
        }


async def test_reject_with_continue_completes_with_approved_false(env, store):
    async with running_kernel(env, store, approval_workflow(on_reject="continue")) as kernel:
        run_id = await _create(kernel)
        await _waiting(kernel, run_id)
        await kernel.approvals.decide(run_id, "review", approved=False, actor=BOB)
        run = await kernel.wait_for_run(run_id)
        assert run.status == RunStatus.COMPLETED
        assert run.output["review"] == {"approved": False, "approver": BOB.id, "comment": None}
        assert [a.value for a in await kernel.annotations.list(run_id, key="approval.outcome")] == [
            "rejected"
        ]


async def test_an_undecided_stage_fails_at_its_timeout(env, store):
    workflow = approval_workflow(timeout=timedelta(milliseconds=800))
    async with running_kernel(env, store, workflow) as kernel:
        run_id = await _create(kernel)
        run = await kernel.wait_for_run(run_id, timeout=timedelta(seconds=30))
        assert run.status == RunStatus.FAILED
        review = {s.stage_id: s for s in await kernel.list_stages(run_id)}["review"]
        assert review.status == RunStatus.FAILED
        assert "not decided within its timeout" in (review.error_message or "")
        assert "support-leads" in (review.error_message or "")
        assert review.max_wait_until is not None
        with pytest.raises(InvalidStateError, match="not waiting for a decision"):
            await kernel.approvals.decide(run_id, "review", approved=True, actor=ALICE)


async def test_concurrent_decisions_exactly_one_wins(env, store):
    async with running_kernel(env, store, approval_workflow()) as kernel:
        run_id = await _create(kernel)
        await _waiting(kernel, run_id)
        results = await asyncio.gather(
            *(
                kernel.approvals.decide(run_id, "review", approved=approved, actor=actor)
                for approved, actor in ((True, ALICE), (False, BOB), (True, BOB))
            ),
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, StageRecord)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1, results
        assert len(lost) == 2 and all(isinstance(e, InvalidStateError) for e in lost), results
        await kernel.wait_for_run(run_id)
        approvers = await kernel.annotations.list(run_id, key="approval.approvers")
        assert len(approvers) == 1
        assert won[0].status in (RunStatus.COMPLETED, RunStatus.FAILED)


async def test_decisions_on_stages_not_waiting_are_refused(env, store):
    async with running_kernel(env, store, approval_workflow()) as kernel:
        run_id = await _create(kernel)
        await _waiting(kernel, run_id)
        with pytest.raises(InvalidStateError, match="not an approval stage"):
            await kernel.approvals.decide(run_id, "propose", approved=True, actor=ALICE)
        with pytest.raises(StageNotFoundError):
            await kernel.approvals.decide(run_id, "nope", approved=True, actor=ALICE)
        with pytest.raises(InvalidInputError):
            await kernel.approvals.decide(run_id, "review", approved=True, actor="alice")  # type: ignore[arg-type]
        with pytest.raises(InvalidStateError, match="kernel.approvals.decide"):
            await kernel.resume_stage(run_id, "review", output={"approved": True})
        await kernel.approvals.decide(run_id, "review", approved=True, actor=ALICE)
        await kernel.wait_for_run(run_id)
        with pytest.raises(InvalidStateError, match="is COMPLETED"):
            await kernel.approvals.decide(run_id, "review", approved=False, actor=BOB)
        assert len(await kernel.annotations.list(run_id, key="approval.approvers")) == 1


async def test_pending_filters_by_workflow_and_requester(env, store):
    first = approval_workflow(workflow_id="refund", requested_from="support-leads")
    second = approval_workflow(workflow_id="payout", requested_from="finance")
    async with running_kernel(env, store, first, second) as kernel:
        refunds = [await _create(kernel, "refund") for _ in range(3)]
        payouts = [await _create(kernel, "payout") for _ in range(2)]
        for run_id in refunds + payouts:
            await _waiting(kernel, run_id)
        everything = await kernel.approvals.pending()
        ids = [i.workflow_run_id for i in everything.items]
        assert set(ids) == set(refunds + payouts) and everything.next_cursor is None
        since = [i.waiting_since for i in everything.items]
        assert since == sorted(since)
        by_workflow = await kernel.approvals.pending(workflow_id="payout")
        assert {i.workflow_run_id for i in by_workflow.items} == set(payouts)
        by_requester = await kernel.approvals.pending(requested_from="support-leads")
        assert {i.workflow_run_id for i in by_requester.items} == set(refunds)
        assert (await kernel.approvals.pending(waiting_longer_than=timedelta(hours=1))).items == []
        old = await kernel.approvals.pending(waiting_longer_than=timedelta(0))
        assert len(old.items) == 5
        page = await kernel.approvals.pending(limit=2)
        assert len(page.items) == 2 and page.next_cursor is not None
        for run_id in refunds + payouts:
            await kernel.approvals.decide(run_id, "review", approved=True, actor=ALICE)
        assert (await kernel.approvals.pending()).items == []


def _poller(ready_after: int) -> Any:
    from engine import CompletionCheck, Suspend, define_async_batch_stage

    async def submit(ctx: Any) -> Suspend:
        return Suspend(state={}, poll_interval=timedelta(milliseconds=20))

    async def check(state: Any, ctx: Any) -> CompletionCheck:
        return CompletionCheck(ready=ctx.poll_count + 1 >= ready_after, output={"polls": 1})

    return define_async_batch_stage(id="poll", input=None, execute=submit, check_completion=check)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
async def test_a_waiting_approval_is_carried_across_continue_as_new(env, store):
    gate = define_approval_stage("gate", requested_from="ops")
    workflow = (
        define_workflow(id="gated").parallel([gate, _poller(15)]).pipe(act_after_gate).build()
    )
    async with running_kernel(env, store, workflow, continue_as_new_after_events=60) as kernel:
        run_id = (await kernel.dispatch(RunCreate(workflow_id="gated", input={}))).workflow_run_id
        waiting = await _waiting(kernel, run_id, "gate")
        for _ in range(500):  # the sibling's polls grow the history past the limit
            stages = {s.stage_id: s for s in await kernel.list_stages(run_id)}
            if stages["poll"].status == RunStatus.COMPLETED:
                break
            await asyncio.sleep(0.05)
        handle = kernel.client.get_workflow_handle(temporal_workflow_id(run_id))
        info = (await handle.describe()).raw_description.workflow_execution_info
        assert info.first_run_id != info.execution.run_id  # it did continue as new
        # still waiting, since the same moment, and decidable in the new execution
        page = await kernel.approvals.pending(requested_from="ops")
        assert [(i.workflow_run_id, i.waiting_since) for i in page.items] == [
            (run_id, waiting.waiting_since)
        ]
        refusals: list[str] = []
        for _ in range(100):
            try:
                await kernel.approvals.decide(run_id, "gate", approved=True, actor=ALICE)
                break
            except InvalidStateError as refused:  # while the run was continuing as new
                refusals.append(refused.message)
                await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"never decided: {refusals[-3:]}")
        run = await kernel.wait_for_run(run_id)
        assert run.status == RunStatus.COMPLETED
        assert run.output == {"gate": {"approved": True, "approver": ALICE.id, "comment": None}}


@define_stage(id="after")
async def act_after_gate(ctx: StageContext[Any, None]) -> dict[str, Any]:
    return {"gate": ctx.require("gate")}
