"""The record chain on real runs (Temporal and both backends): ``kernel.verify`` passes on
sequential, parallel, suspended and rerun runs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from engine import Actor, RunCreate, RunCreateAnnotation, RunRerunFrom, RunStatus
from engine.core.evidence import ChainVerification, link_records
from engine.store import SqlStore
from tests.helpers import running_kernel, triage_workflow
from tests.integration.test_long_running import batch_workflow

WAIT = timedelta(seconds=60)


def records(found: ChainVerification) -> list[str]:
    """The kinds of the records the chain's links cover, in order."""
    return [kind for link in found.links for kind, _ in link_records(link)]


async def triage_run(kernel: Any) -> str:
    created = await kernel.dispatch(
        RunCreate(
            workflow_id="ticket-triage",
            input={"text": "urgent: printer on fire"},
            annotations=[
                RunCreateAnnotation(
                    actor=Actor(kind="system", id="zendesk"),
                    attributes={"trigger.source": "webhook", "trigger.weight": 1.0},
                )
            ],
        )
    )
    run = await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
    assert run.status == RunStatus.COMPLETED
    return str(run.id)


async def test_real_runs_verify_sequential_parallel_suspended_and_rerun(
    env: Any, store: SqlStore
) -> None:
    workflows = (triage_workflow(), batch_workflow(ready_after=3))
    async with running_kernel(env, store, *workflows) as kernel:
        run_id = await triage_run(kernel)  # classify; notify ‖ enrich; route
        found = await kernel.verify(run_id)
        assert found.ok, found.first_bad
        kinds = records(found)
        assert kinds[0] == "run" and kinds.count("stage") == 4
        assert found.records_checked == len(kinds)

        await kernel.annotations.attach(
            run_id, attributes={"review.ok": True}, actor=Actor(kind="user", id="al")
        )
        await kernel.dispatch(RunRerunFrom(workflow_run_id=run_id, from_stage_id="route"))
        rerun = await kernel.wait_for_run(run_id, timeout=WAIT)
        assert rerun.status == RunStatus.COMPLETED
        found = await kernel.verify(run_id)
        assert found.ok, found.first_bad
        assert records(found).count("rerun") == 1

        created = await kernel.dispatch(RunCreate(workflow_id="batch", input={}))
        batch = await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
        assert batch.status == RunStatus.COMPLETED
        found = await kernel.verify(batch.id)
        assert found.ok, found.first_bad
        # submitted (SUSPENDED), two polls (still SUSPENDED), then COMPLETED
        assert records(found).count("stage") == 4
