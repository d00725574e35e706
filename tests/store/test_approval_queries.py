"""The approvals inbox across 200 runs: filters, oldest first, keyset paging (both backends).

The runs are written through the store's own write path (create, start, begin, commit the
suspension) with ``now`` values a minute apart, so the order is known without waiting.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.core.annotations import AnnotationDraft, AnnotationLimits
from engine.errors import InvalidInputError
from engine.runtime.kernel_approvals import KernelApprovals
from engine.store import SqlStore
from engine.store.contract import NewRun, NewStage
from temporal_workflows.payloads import StageCommit, StageOutcome
from tests.helpers import stage_spec

RUNS = 200
START = datetime(2026, 1, 1, tzinfo=UTC)


def _spec(workflow_index: int) -> Any:
    return stage_spec("review", 1).model_copy(update={"kind": "approval"})


async def _waiting_run(store: SqlStore, index: int) -> str:
    workflow_id = "refund" if index % 2 == 0 else "payout"
    asked = "leads" if index % 4 < 2 else "finance"
    spec = _spec(index)
    run_id, _ = await store.create_run(
        NewRun(
            workflow_id=workflow_id,
            workflow_name=workflow_id,
            input={},
            config={},
            priority=5,
            metadata=None,
            idempotency_key=f"inbox-{index}",
            annotations=[([AnnotationDraft(key="trigger.source", value=f"t-{index}")], False)],
        ),
        "wfe-run-{run_id}",
    )
    group = [NewStage(spec.stage_id, spec.name, spec.number, spec.group, spec.config)]
    await store.start_run(run_id, lambda _config: group, causation_id=run_id)
    start = await store.begin_stage(run_id, spec, 0)
    assert start.record_id is not None
    commit = await store.commit_stage(
        StageCommit(
            run_id=run_id,
            stage=spec,
            attempt=0,
            commit_id=f"c-{index}",
            outcome=StageOutcome(
                status="suspended",
                stage_record_id=start.record_id,
                suspended_state={"approval": {"requested_from": asked, "on_reject": "fail"}},
                annotations=[AnnotationDraft(key="decision.outcome", value=index)],
            ),
            # newest first, so the inbox order is not the insertion order
            now=START + timedelta(minutes=RUNS - index),
        )
    )
    assert commit.committed
    return run_id


@pytest.fixture
async def inbox(store: SqlStore) -> tuple[KernelApprovals, list[str]]:
    run_ids = [await _waiting_run(store, index) for index in range(RUNS)]
    approvals = KernelApprovals(store, AnnotationLimits(), {}, lambda _id: None)  # type: ignore[arg-type,return-value]
    return approvals, run_ids


async def _all_pages(approvals: KernelApprovals, **filters: Any) -> list[Any]:
    items, cursor, pages = [], None, 0
    while True:
        page = await approvals.pending(cursor=cursor, **filters)
        items.extend(page.items)
        pages += 1
        if page.next_cursor is None:
            return items
        cursor = page.next_cursor
        assert pages < 100


async def test_pages_cover_every_waiting_approval_oldest_first(inbox: Any) -> None:
    approvals, run_ids = inbox
    items = await _all_pages(approvals, limit=30)
    assert len(items) == RUNS
    assert [i.workflow_run_id for i in items] == list(reversed(run_ids))
    assert [i.waiting_since for i in items] == sorted(i.waiting_since for i in items)
    first = items[0]
    assert first.context == {"trigger.source": f"t-{RUNS - 1}", "decision.outcome": RUNS - 1}
    assert first.stage_id == "review" and first.waiting_since == START + timedelta(minutes=1)


async def test_filters_narrow_the_inbox(inbox: Any) -> None:
    approvals, run_ids = inbox
    refunds = await _all_pages(approvals, workflow_id="refund", limit=17)
    assert {i.workflow_run_id for i in refunds} == set(run_ids[0::2])
    finance = await _all_pages(approvals, requested_from="finance", limit=50)
    assert {i.workflow_run_id for i in finance} == {r for n, r in enumerate(run_ids) if n % 4 >= 2}
    both = await _all_pages(approvals, workflow_id="payout", requested_from="leads")
    assert {i.workflow_run_id for i in both} == {r for n, r in enumerate(run_ids) if n % 4 == 1}
    # everything waits since 2026-01-01: all of it is older than a day, none older than 100 years
    assert len(await _all_pages(approvals, waiting_longer_than=timedelta(days=1))) == RUNS
    old = await approvals.pending(waiting_longer_than=timedelta(days=365 * 100))
    assert old.items == [] and old.next_cursor is None
    cutoff = datetime.now(UTC) - (START + timedelta(minutes=RUNS // 2))
    older = await _all_pages(approvals, waiting_longer_than=cutoff)
    assert len(older) == RUNS // 2


async def test_bad_arguments_are_named(inbox: Any) -> None:
    approvals, _ = inbox
    with pytest.raises(InvalidInputError, match="cursor"):
        await approvals.pending(cursor="not-a-cursor")
    with pytest.raises(InvalidInputError, match="limit"):
        await approvals.pending(limit=0)
    with pytest.raises(InvalidInputError, match="waiting_longer_than"):
        await approvals.pending(waiting_longer_than=timedelta(seconds=-1))
