"""RunFork on Temporal: a new run from a stage, copied records, the source left as it was."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import select

from engine import (
    InvalidStateError,
    Kernel,
    RunCancel,
    RunCreate,
    RunFork,
    RunForkResult,
    RunStatus,
    StageContext,
    StageNotFoundError,
    define_approval_stage,
    define_stage,
    define_workflow,
)
from engine.runtime.kernel import temporal_workflow_id
from engine.store import SqlStore
from engine.store.models import ANNOTATIONS, LOGS, OUTBOX, RUNS, STAGES, WorkflowArtifact
from tests.helpers import running_kernel, triage_workflow

ARTIFACTS = WorkflowArtifact.__table__


async def _rows(store: SqlStore, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every row the side-store holds for a run, table by table, in a stable order."""
    snapshot: dict[str, list[dict[str, Any]]] = {}
    async with store.engine.connect() as connection:
        for table in (RUNS, STAGES, LOGS, ANNOTATIONS, OUTBOX, ARTIFACTS):
            column = table.c.id if table is RUNS else table.c.workflow_run_id
            rows = await connection.execute(
                select(table).where(column == run_id).order_by(table.c.id)
            )
            snapshot[table.name] = [dict(row._mapping) for row in rows]
    return snapshot


async def _history_length(kernel: Kernel, run_id: str) -> int:
    handle = kernel.client.get_workflow_handle(temporal_workflow_id(run_id))
    return len((await handle.fetch_history()).events)


async def _completed_source(kernel: Kernel) -> str:
    created = await kernel.dispatch(
        RunCreate(workflow_id="ticket-triage", input={"text": "urgent: VPN down"})
    )
    run = await kernel.wait_for_run(created.workflow_run_id)
    assert run.status == RunStatus.COMPLETED
    return run.id


async def test_fork_from_a_later_stage_reuses_outputs_and_leaves_the_source(env, store):
    async with running_kernel(env, store, triage_workflow()) as kernel:
        source_id = await _completed_source(kernel)
        before = await _rows(store, source_id)
        history = await _history_length(kernel, source_id)

        result = await kernel.dispatch(
            RunFork(workflow_run_id=source_id, from_stage_id="route", reason="new routing table")
        )
        assert isinstance(result, RunForkResult)
        assert (result.source_run_id, result.from_stage_id) == (source_id, "route")
        fork = await kernel.wait_for_run(result.workflow_run_id)
        assert fork.id != source_id and fork.status == RunStatus.COMPLETED
        assert fork.workflow_id == "ticket-triage" and fork.input == {"text": "urgent: VPN down"}
        # the copied outputs reached the stage that ran again
        assert fork.output == {"route": "queue-high", "seen": ["classify", "enrich", "notify"]}

        source_stages = {s.stage_id: s for s in await kernel.list_stages(source_id)}
        fork_stages = {s.stage_id: s for s in await kernel.list_stages(fork.id)}
        for stage_id in ("classify", "notify", "enrich"):
            copy, original = fork_stages[stage_id], source_stages[stage_id]
            assert copy.status == RunStatus.COMPLETED
            assert copy.copied_from == original.id and copy.id != original.id
            assert copy.output_data == original.output_data
        assert fork_stages["route"].copied_from is None
        assert fork_stages["route"].id != source_stages["route"].id
        # only the route stage ran in the fork: one stage:started event
        events = [e.event_type for e in await kernel.list_outbox_events(fork.id)]
        assert events.count("stage:started") == 1

        revision = {a.key: a.value for a in await kernel.annotations.list(fork.id)}
        assert revision["revision.previous_run_id"] == source_id
        assert revision["revision.reason"] == "new routing table"
        assert await store.forks_of(source_id) == [fork.id]

        assert await _rows(store, source_id) == before
        assert await _history_length(kernel, source_id) == history


async def test_fork_is_idempotent_by_key_and_can_be_forked_again(env, store):
    async with running_kernel(env, store, triage_workflow()) as kernel:
        source_id = await _completed_source(kernel)
        command = {
            "type": "run.fork",
            "workflowRunId": source_id,
            "fromStageId": "notify",
            "idempotencyKey": "fork-1",
        }
        first = await kernel.dispatch(command)
        again = await kernel.dispatch(command)
        assert again.workflow_run_id == first.workflow_run_id
        other = await kernel.dispatch({**command, "idempotencyKey": "fork-2"})
        assert other.workflow_run_id != first.workflow_run_id
        fork = await kernel.wait_for_run(first.workflow_run_id)
        assert fork.status == RunStatus.COMPLETED
        assert (await kernel.annotations.list(fork.id, key="revision.reason"))[0].value == (
            "fork from notify"
        )
        await kernel.wait_for_run(other.workflow_run_id)

        # a fork of the fork copies from the fork, not from the original
        second = await kernel.dispatch(
            RunFork(workflow_run_id=fork.id, from_stage_id="route", idempotency_key="fork-1")
        )
        assert second.workflow_run_id not in (first.workflow_run_id, other.workflow_run_id)
        grandchild = await kernel.wait_for_run(second.workflow_run_id)
        assert grandchild.status == RunStatus.COMPLETED
        fork_stages = {s.stage_id: s for s in await kernel.list_stages(fork.id)}
        copies = {s.stage_id: s for s in await kernel.list_stages(grandchild.id)}
        assert copies["notify"].copied_from == fork_stages["notify"].id
        assert copies["classify"].copied_from == fork_stages["classify"].id
        previous = await kernel.annotations.list(grandchild.id, key="revision.previous_run_id")
        assert [a.value for a in previous] == [fork.id]
        # Forks keep a tamper-evident record too: the copied outcomes are links of their own.
        for run_id in (source_id, fork.id, grandchild.id):
            verified = await kernel.verify(run_id)
            assert verified.ok, (run_id, verified.first_bad)
        assert sorted(await store.forks_of(source_id)) == sorted(
            [first.workflow_run_id, other.workflow_run_id]
        )


async def test_fork_from_the_first_stage_with_new_input_and_config(env, store):
    async with running_kernel(env, store, triage_workflow()) as kernel:
        source_id = await _completed_source(kernel)
        result = await kernel.dispatch(
            RunFork(
                workflow_run_id=source_id,
                from_stage_id="classify",
                input={"text": "all calm"},
                config={"classify": {"threshold": 0.9}},
            )
        )
        fork = await kernel.wait_for_run(result.workflow_run_id)
        assert fork.status == RunStatus.COMPLETED
        assert fork.output["route"] == "queue-low"
        assert fork.config["classify"] == {"threshold": 0.9}
        stages = await kernel.list_stages(fork.id)
        assert [s.copied_from for s in stages] == [None] * 4


class Flaky(BaseModel):
    fail: bool = True


@define_stage(id="one")
async def one(ctx: StageContext[Any, None]) -> dict[str, int]:
    return {"n": 1}


@define_stage(id="two", config=Flaky)
async def two(ctx: StageContext[Any, Flaky]) -> dict[str, int]:
    if ctx.config.fail:
        raise RuntimeError("two broke")
    return {"n": ctx.require("one")["n"] + 1}


@define_stage(id="three")
async def three(ctx: StageContext[Any, None]) -> dict[str, int]:
    return {"n": ctx.require("two")["n"] + 1}


def flaky_workflow() -> Any:
    return define_workflow(id="flaky").pipe(one).pipe(two).pipe(three).build()


def waiting_workflow() -> Any:
    return define_workflow(id="waits").pipe(define_approval_stage("gate")).build()


async def test_fork_refuses_active_sources_unknown_stages_and_missing_outputs(env, store):
    workflows = (triage_workflow(), flaky_workflow(), waiting_workflow())
    async with running_kernel(env, store, *workflows) as kernel:
        source_id = await _completed_source(kernel)
        with pytest.raises(StageNotFoundError):
            await kernel.dispatch(RunFork(workflow_run_id=source_id, from_stage_id="nope"))

        waiting = (await kernel.dispatch(RunCreate(workflow_id="waits", input={}))).workflow_run_id
        failed = (await kernel.dispatch(RunCreate(workflow_id="flaky", input={}))).workflow_run_id
        assert (await kernel.wait_for_run(failed)).status == RunStatus.FAILED
        runs_before = await _count_runs(store)
        with pytest.raises(InvalidStateError, match="while it is (PENDING|RUNNING)"):
            await kernel.dispatch(RunFork(workflow_run_id=waiting, from_stage_id="gate"))
        with pytest.raises(InvalidStateError, match="not COMPLETED: two"):
            await kernel.dispatch(RunFork(workflow_run_id=failed, from_stage_id="three"))
        assert await _count_runs(store) == runs_before

        # Fork a failed run from the stage that failed, with the config that fixes it.
        result = await kernel.dispatch(
            RunFork(workflow_run_id=failed, from_stage_id="two", config={"two": {"fail": False}})
        )
        fork = await kernel.wait_for_run(result.workflow_run_id)
        assert fork.status == RunStatus.COMPLETED and fork.output == {"n": 3}
        assert (await kernel.get_run(failed)).status == RunStatus.FAILED
        await kernel.dispatch(RunCancel(workflow_run_id=waiting))


async def _count_runs(store: SqlStore) -> int:
    async with store.engine.connect() as connection:
        return len((await connection.execute(select(RUNS.c.id))).all())
