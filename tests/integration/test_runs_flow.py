"""Run semantics on real Temporal, happy path: data flow, context, config, totals, events.

One four-group run (``split`` → ``count`` ∥ ``shout`` → ``merge`` → ``fin-a`` ∥ ``fin-b``)
checks most of ENGINE-SEMANTICS §2–§5 at once, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from engine import (
    Kernel,
    RunCreate,
    RunStatus,
    StageContext,
    StageResult,
    create_worker,
    define_stage,
    define_workflow,
)
from engine.store import SqlStore
from tests.helpers import running_kernel


class Doc(BaseModel):
    text: str


class Words(BaseModel):
    words: list[str]


class Count(BaseModel):
    n: int


class Upper(BaseModel):
    upper: str


class MergeIn(BaseModel):
    count: Count
    shout: Upper


class Summary(BaseModel):
    summary: str


class SplitConfig(BaseModel):
    sep: str = " "
    limit: int = 10


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Re-check a condition (from inside stage code) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def assert_gap_free(events: list[Any]) -> None:
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


def index_of(events: list[Any], event_type: str, stage_id: str | None = None) -> int:
    matches = [
        i
        for i, e in enumerate(events)
        if e.event_type == event_type
        and (stage_id is None or e.payload.get("stage_id") == stage_id)
    ]
    assert len(matches) == 1, (event_type, stage_id, [e.event_type for e in events])
    return matches[0]


def data_flow_workflow(store: SqlStore, seen: dict[str, Any]) -> Any:
    @define_stage(id="split", input=Doc, output=Words, config=SplitConfig)
    async def split(ctx: StageContext[Doc, SplitConfig]) -> StageResult:
        seen["split"] = {
            "input": ctx.input,
            "config": ctx.config,
            "context": dict(ctx.workflow_context),
            "attempt": ctx.attempt,
            "activity_attempt": ctx.activity_attempt,
            "ids": (ctx.workflow_run_id, ctx.workflow_id, ctx.stage_id),
        }
        words = ctx.input.text.split(ctx.config.sep)[: ctx.config.limit]
        ctx.log("INFO", f"split into {len(words)} words", {"n": len(words)})
        ctx.report_progress(0.5, "half")
        ctx.report_progress(1.0, "done", {"words": len(words)})
        return StageResult(
            output=Words(words=words), custom_metrics={"total_cost": 0.5, "total_tokens": 10}
        )

    @define_stage(id="count", input=Words, output=Count)
    def count(ctx: StageContext[Words, None]) -> StageResult:  # sync execute
        seen["count"] = {"input": ctx.input, "context": dict(ctx.workflow_context)}
        return StageResult(
            output=Count(n=len(ctx.input.words)),
            custom_metrics={"totalCost": 0.25, "totalTokens": 5},  # the original's spelling
        )

    @define_stage(id="shout", input=Words, output=Upper)
    async def shout(ctx: StageContext[Words, None]) -> Upper:
        run_id = ctx.workflow_run_id

        async def own_record_running() -> bool:
            stages = {s.stage_id: s for s in await store.list_stages(run_id)}
            return stages["shout"].status == RunStatus.RUNNING

        async def sibling_completed() -> bool:
            stages = {s.stage_id: s for s in await store.list_stages(run_id)}
            return stages["count"].status == RunStatus.COMPLETED

        assert await own_record_running()
        events = await store.list_outbox_events(run_id)
        seen["shout_started_event"] = any(
            e.event_type == "stage:started" and e.payload["stage_id"] == "shout" for e in events
        )
        # The sibling has committed its output: a live context would now include it.
        await until(sibling_completed)
        seen["shout"] = {"input": ctx.input, "context": dict(ctx.workflow_context)}
        return Upper(upper=" ".join(ctx.input.words).upper())

    @define_stage(id="merge", input=MergeIn, output=Summary)
    async def merge(ctx: StageContext[MergeIn, None]) -> StageResult:
        seen["merge"] = {
            "input": ctx.input,
            "context": dict(ctx.workflow_context),
            "require": ctx.require("split"),
            "optional_missing": ctx.optional("nope"),
            "optional_present": ctx.optional("count"),
        }
        return StageResult(
            output=Summary(summary=f"{ctx.input.count.n}:{ctx.input.shout.upper}"),
            custom_metrics={"total_cost": 1.0, "total_tokens": 100, "model": "m-1"},
        )

    @define_stage(id="fin-a", input=None)
    def fin_a(ctx: StageContext[None, None]) -> dict[str, Any]:
        seen["fin-a"] = {"input": ctx.input, "context": sorted(ctx.workflow_context)}
        return {"a": ctx.require("merge")["summary"]}

    @define_stage(id="fin-b", input=Summary, output=Summary)
    async def fin_b(ctx: StageContext[Summary, None]) -> Summary:
        return Summary(summary=ctx.input.summary.lower())

    return (
        define_workflow(id="flow", name="Data flow", input=Doc)
        .pipe(split)
        .parallel([count, shout])
        .pipe(merge)
        .parallel([fin_a, fin_b])
        .build()
    )


async def test_data_flow_context_config_totals_and_events(env: Any, store: SqlStore) -> None:
    seen: dict[str, Any] = {}
    workflow = data_flow_workflow(store, seen)
    kernel = Kernel(
        client=env.client, store=store, workflows=[workflow], task_queue=f"tq-{uuid.uuid4()}"
    )
    raw_input = {"text": "alpha beta gamma delta", "extra": "kept raw"}
    # Created with no worker polling yet: the run stays PENDING (B1, B8).
    created = await kernel.dispatch(
        RunCreate(workflow_id="flow", input=raw_input, config={"split": {"limit": 3}}, priority=7)
    )
    assert created.status == RunStatus.PENDING
    run_id = created.workflow_run_id
    pending = await kernel.get_run(run_id)
    assert pending.status == RunStatus.PENDING and pending.started_at is None
    assert pending.input == raw_input
    assert pending.priority == 7
    assert pending.config == {
        "split": {"sep": " ", "limit": 3},
        "count": {},
        "shout": {},
        "merge": {},
        "fin-a": {},
        "fin-b": {},
    }
    (created_event,) = await kernel.list_outbox_events(run_id)
    assert (created_event.event_type, created_event.sequence) == ("workflow:created", 1)
    assert created_event.payload["workflow_id"] == "flow"

    async with create_worker(kernel):
        run = await kernel.wait_for_run(run_id, timeout=timedelta(seconds=30))

    stages = {s.stage_id: s for s in await kernel.list_stages(run_id)}
    assert run.status == RunStatus.COMPLETED, stages
    assert run.started_at is not None and run.completed_at is not None
    assert run.duration_ms is not None and run.duration_ms >= 0

    # Data flow (B12, B13): group 1 gets the run input (parsed: extras dropped); a later group
    # the previous output; after a parallel group, {stage_id: output}.
    assert seen["split"]["input"] == Doc(text="alpha beta gamma delta")
    assert seen["count"]["input"] == Words(words=["alpha", "beta", "gamma"])
    assert seen["shout"]["input"] == Words(words=["alpha", "beta", "gamma"])
    assert seen["merge"]["input"] == MergeIn(
        count=Count(n=3), shout=Upper(upper="ALPHA BETA GAMMA")
    )
    assert seen["fin-a"]["input"] is None  # input=None: the stage takes no input
    # Context (B14): a snapshot of earlier groups; parallel siblings never see each other,
    # even when the sibling committed first.
    assert seen["split"]["context"] == {}
    assert seen["count"]["context"] == {"split": {"words": ["alpha", "beta", "gamma"]}}
    assert seen["shout"]["context"] == {"split": {"words": ["alpha", "beta", "gamma"]}}
    assert seen["merge"]["context"] == {
        "split": {"words": ["alpha", "beta", "gamma"]},
        "count": {"n": 3},
        "shout": {"upper": "ALPHA BETA GAMMA"},
    }
    assert seen["merge"]["require"] == {"words": ["alpha", "beta", "gamma"]}
    assert seen["merge"]["optional_missing"] is None
    assert seen["merge"]["optional_present"] == {"n": 3}
    assert seen["fin-a"]["context"] == ["count", "merge", "shout", "split"]
    # Config (B15): the slice parsed with the defaults filled in.
    assert seen["split"]["config"] == SplitConfig(sep=" ", limit=3)
    assert stages["split"].config == {"sep": " ", "limit": 3}
    assert seen["split"]["attempt"] == 0 and seen["split"]["activity_attempt"] == 1
    assert seen["split"]["ids"] == (run_id, "flow", "split")
    # A running stage is RUNNING and has emitted stage:started (B17).
    assert seen["shout_started_event"] is True

    # Records (B18): all COMPLETED with outputs, durations and metrics incl. custom ones.
    assert [s.stage_id for s in stages.values()] == [
        "split",
        "count",
        "shout",
        "merge",
        "fin-a",
        "fin-b",
    ]
    assert [(s.stage_number, s.execution_group) for s in stages.values()] == [
        (1, 1),
        (2, 2),
        (3, 2),
        (4, 3),
        (5, 4),
        (6, 4),
    ]
    for record in stages.values():
        assert record.status == RunStatus.COMPLETED, record
        assert record.duration_ms is not None and record.duration_ms >= 0
        assert record.started_at is not None and record.completed_at is not None
        assert record.attempt == 0
        assert record.error_message is None
    assert stages["split"].output_data == {"words": ["alpha", "beta", "gamma"]}
    assert stages["count"].output_data == {"n": 3}
    assert stages["merge"].metrics == {"total_cost": 1.0, "total_tokens": 100, "model": "m-1"}
    assert stages["split"].metrics == {"total_cost": 0.5, "total_tokens": 10}
    assert stages["count"].metrics is not None
    assert stages["count"].metrics["totalTokens"] == 5

    # Output and totals (B22, B23): the last (parallel) group's outputs keyed by stage id.
    expected_output = {
        "fin-a": {"a": "3:ALPHA BETA GAMMA"},
        "fin-b": {"summary": "3:alpha beta gamma"},
    }
    assert run.output == expected_output
    assert run.total_cost == 1.75
    assert run.total_tokens == 115

    # Outbox (B9, B21, B24, B44): gap-free per run, in commit order.
    events = await kernel.list_outbox_events(run_id)
    assert_gap_free(events)
    types = [e.event_type for e in events]
    assert types[:3] == ["workflow:created", "workflow:started", "stage:started"]
    assert types[-1] == "workflow:completed"
    assert types.count("stage:started") == 6 and types.count("stage:completed") == 6
    assert types.count("stage:progress") == 2
    assert not {"stage:failed", "workflow:failed"} & set(types)
    for stage_id in stages:
        assert index_of(events, "stage:started", stage_id) < index_of(
            events, "stage:completed", stage_id
        )
    # A group advances only when all its members are terminal.
    merge_started = index_of(events, "stage:started", "merge")
    assert index_of(events, "stage:completed", "count") < merge_started
    assert index_of(events, "stage:completed", "shout") < merge_started
    for final in ("fin-a", "fin-b"):
        assert index_of(events, "stage:completed", "merge") < index_of(
            events, "stage:started", final
        )
    # Progress reports come right before the stage's outcome event, in call order.
    split_done = index_of(events, "stage:completed", "split")
    progress = events[split_done - 2 : split_done]
    assert [(e.event_type, e.payload["progress"], e.payload["message"]) for e in progress] == [
        ("stage:progress", 0.5, "half"),
        ("stage:progress", 1.0, "done"),
    ]
    assert progress[1].payload["details"] == {"words": 3}
    started = events[index_of(events, "stage:started", "merge")].payload
    assert started == {
        **started,
        "stage_id": "merge",
        "stage_name": "merge",
        "stage_number": 4,
    }
    completed = events[-1].payload
    assert completed["type"] == "workflow:completed"
    assert completed["workflow_run_id"] == run_id
    assert completed["output"] == expected_output
    assert completed["total_cost"] == 1.75 and completed["total_tokens"] == 115
    assert completed["duration"] == run.duration_ms

    # Logs persist (B25).
    logs = await kernel.list_logs(run_id)
    assert [(log.stage_id, log.level, log.message, log.metadata) for log in logs] == [
        ("split", "INFO", "split into 3 words", {"n": 3})
    ]


async def test_parallel_outbox_sequences_stay_gap_free_per_run(env: Any, store: SqlStore) -> None:
    """Several runs of a wide parallel workflow at once: each run's sequence is 1..n (B44)."""

    def member(index: int) -> Any:
        async def execute(ctx: StageContext[None, None]) -> dict[str, int]:
            ctx.report_progress(1.0, f"member {index}")
            return {"index": index}

        return define_stage(id=f"m{index}", input=None, execute=execute)

    wide = (
        define_workflow(id="wide")
        .parallel([member(i) for i in range(6)])
        .pipe(define_stage(id="last", input=None, execute=lambda ctx: {"done": True}))
        .build()
    )
    async with running_kernel(env, store, wide) as kernel:
        created = await asyncio.gather(
            *(kernel.dispatch(RunCreate(workflow_id="wide", input={})) for _ in range(4))
        )
        runs = [
            await kernel.wait_for_run(c.workflow_run_id, timeout=timedelta(seconds=30))
            for c in created
        ]
        for run in runs:
            assert run.status == RunStatus.COMPLETED
            assert run.output == {"done": True}
            events = await kernel.list_outbox_events(run.id)
            assert_gap_free(events)
            # created, started, 6 × (started, progress, completed), last (started, completed),
            # workflow:completed.
            assert len(events) == 2 + 18 + 2 + 1
            for i in range(6):
                assert index_of(events, "stage:progress", f"m{i}") + 1 == index_of(
                    events, "stage:completed", f"m{i}"
                )
