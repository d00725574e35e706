"""Sample stages and workflows, and a helper that runs a kernel with a worker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from engine import (
    Actor,
    Kernel,
    StageContext,
    StageResult,
    Workflow,
    create_worker,
    define_stage,
    define_workflow,
)
from engine.conventions import Decision
from engine.core.payloads import StageSpec
from engine.store import SqlStore


class Ticket(BaseModel):
    text: str


class Triage(BaseModel):
    urgency: str
    text: str


class TriageConfig(BaseModel):
    threshold: float = 0.6


class Note(BaseModel):
    note: str


@define_stage(
    id="classify", name="Classify urgency", input=Ticket, output=Triage, config=TriageConfig
)
async def classify(ctx: StageContext[Ticket, TriageConfig]) -> Any:
    urgency = "high" if "urgent" in ctx.input.text else "low"
    ctx.log("INFO", f"classified as {urgency}")
    ctx.report_progress(0.5, "half way")
    ctx.annotate(Decision.outcome, urgency)
    ctx.annotate(Decision.confidence, ctx.config.threshold)
    ctx.annotate(
        actor=Actor(kind="agent", id="triage-agent", version="v3"),
        attributes={"decision.rationale": "keyword match", "decision.used_fallback": False},
        payload={"raw": "..."},
    )
    return StageResult(
        output=Triage(urgency=urgency, text=ctx.input.text),
        custom_metrics={"total_cost": 0.25, "total_tokens": 100},
    )


@define_stage(id="notify", input=Triage, output=Note)
def notify(ctx: StageContext[Triage, None]) -> Note:
    return Note(note=f"notified {ctx.input.urgency}")


@define_stage(id="enrich", input=Triage, output=Note)
async def enrich(ctx: StageContext[Triage, None]) -> Note:
    return Note(note=f"enriched {len(ctx.input.text)}")


class Routed(BaseModel):
    route: str
    seen: list[str]


@define_stage(id="route", input=None, output=Routed)
async def route(ctx: StageContext[None, None]) -> Routed:
    triage = ctx.require("classify")
    return Routed(route=f"queue-{triage['urgency']}", seen=sorted(ctx.workflow_context))


def triage_workflow() -> Workflow:
    return (
        define_workflow(id="ticket-triage", name="Ticket triage", input=Ticket)
        .pipe(classify)
        .parallel([notify, enrich])
        .pipe(route)
        .build()
    )


@asynccontextmanager
async def running_kernel(
    env: Any,
    store: SqlStore,
    *workflows: Workflow,
    worker_options: dict[str, Any] | None = None,
    **kernel_options: Any,
) -> AsyncIterator[Kernel]:
    """A kernel on a fresh task queue with a worker polling it."""
    kernel = Kernel(
        client=env.client,
        store=store,
        workflows=workflows,
        task_queue=f"tq-{uuid.uuid4()}",
        **kernel_options,
    )
    async with create_worker(kernel, **(worker_options or {})):
        yield kernel


async def run_with_events(store: SqlStore, events: list[tuple[str, dict[str, Any]]]) -> str:
    """A PENDING run written straight to the store: ``workflow:created``, then ``events``."""
    import uuid as _uuid

    from engine.store.contract import NewRun
    from engine.store.models import utcnow
    from engine.store.sql import append_events, lock_run

    run_id, _ = await store.create_run(
        NewRun(
            workflow_id="wf",
            workflow_name="Workflow",
            input={},
            config={},
            priority=5,
            metadata=None,
            idempotency_key=str(_uuid.uuid4()),
        ),
        "wfe-run-{run_id}",
    )
    async with store.transaction() as session:
        await session.run_sync(lock_run, run_id)
        await session.run_sync(
            append_events, run_id, events, causation_id=str(_uuid.uuid4()), now=utcnow()
        )
    return run_id


async def workflow_closed(
    client: Client, run_id: str, timeout: float = 60
) -> WorkflowExecutionStatus:
    """Wait for the run's first Temporal execution to close (after that nothing can commit);
    returns its final status."""
    from engine.runtime.kernel import temporal_workflow_id

    handle = client.get_workflow_handle(temporal_workflow_id(run_id))
    try:
        await asyncio.wait_for(handle.result(), timeout=timeout)
    except WorkflowFailureError:
        pass
    status = (await handle.describe()).status
    assert status is not None and status != WorkflowExecutionStatus.RUNNING
    return status


def stage_spec(stage_id: str, number: int, group: int | None = None) -> StageSpec:
    """A stage as the workflow schedules it, for store-level tests (group: its number)."""
    return StageSpec(
        stage_id=stage_id,
        name=f"Stage {stage_id}",
        number=number,
        group=number if group is None else group,
        kind="sync",
        config={"k": number},
        start_to_close_timeout=timedelta(minutes=1),
    )
