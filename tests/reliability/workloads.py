"""Workflows shared by the reliability tests and the worker processes they spawn.

The test process registers them on its kernel (to create runs); ``worker_main.py`` registers
the same definitions on the worker it runs. Stage behaviour is steered through files in a
directory named by the run input, so that a test can watch and release a stage running in
another process:

- ``<dir>/<run id>.<stage id>.<activity attempt>.entered``: written when the stage's code starts;
- ``<dir>/<run id>.release``: while absent, the ``work`` stage of a ``mode="stage"`` run waits
  (heartbeating) inside its code, and so does the ``prep`` stage of a ``mode="prep"`` run.

The ``work`` stage returns the run's ``mode``, so that a worker's commit hook
(``worker_main.py``) can tell which commits to hold.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select

from engine import (
    Actor,
    CompletionCheck,
    StageContext,
    Suspend,
    Workflow,
    define_async_batch_stage,
    define_stage,
    define_workflow,
)
from engine.store import SqlStore
from engine.store.contract import AnnotationFilters
from engine.store.models import WorkflowAnnotation, WorkflowLog, WorkflowStage

__all__ = [
    "LOAD_STAGES",
    "CRASH_OUTPUT",
    "CRASH_STAGES",
    "MODES",
    "SKEW_MAX_WAIT",
    "SKEW_POLL_INTERVAL",
    "Job",
    "SkewJob",
    "assert_exactly_once",
    "crash_workflow",
    "load_workflow",
    "release_path",
    "skew_workflow",
    "touch",
]

# How long a stage may run before Temporal retries it elsewhere; short so that a crash is
# noticed quickly (the work stage heartbeats, so its heartbeat timeout notices sooner).
STAGE_TIMEOUT_SECONDS = 5
HEARTBEAT_TIMEOUT_SECONDS = 1.5

CRASH_STAGES = ("prep", "work", "side", "finish")
"""Stage ids of :func:`crash_workflow`, in execution order (work and side run in parallel)."""

ANNOTATION_KEYS = {
    "prep": ["rel.prep.seen"],
    "work": ["rel.work.outcome", "rel.work.score", "rel.work.note"],
    "side": ["rel.side.flag"],
    "finish": ["rel.finish.total"],
}
"""The stage-scoped annotation keys each stage writes, one row each."""

EMITTING_KEYS = {"rel.work.outcome", "rel.side.flag"}
"""Keys written with ``emit_event=True``: one ``annotation:created`` event each."""

LOGS_PER_STAGE = {"prep": 1, "work": 2, "side": 1, "finish": 1}
PROGRESS_PER_STAGE = {"work": 1}


MODES = ("stage", "before_commit", "in_commit", "after_commit", "free", "prep")
"""Where a worker crash should catch a run's ``work`` stage: in its code, between its end and
its commit, inside its commit transaction, after its commit but before Temporal heard of it;
``free`` runs are not held anywhere; ``prep`` runs hold their ``prep`` stage (a sequential
stage: PostgreSQL commits it in one statement) in its code until the release file exists."""


class Job(BaseModel):
    dir: str
    mode: str = "free"
    """One of :data:`MODES`."""
    pad: int = 0
    """Random bytes (hex) the ``work`` stage adds to its output: a commit that needs new pages."""


def release_path(directory: str | Path, run_id: str) -> Path:
    return Path(directory) / f"{run_id}.release"


def touch(path: Path) -> None:
    """Create ``path`` atomically (write then rename), so a watcher never sees it half made."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("x")
    temporary.rename(path)


def _entered(ctx: StageContext[Any, Any], directory: str) -> None:
    name = f"{ctx.workflow_run_id}.{ctx.stage_id}.{ctx.activity_attempt}.entered"
    touch(Path(directory) / name)


def crash_workflow() -> Workflow:
    """prep → [work ‖ side] → finish; every stage logs, annotates and returns an output."""
    timeout = timedelta(seconds=STAGE_TIMEOUT_SECONDS)

    @define_stage(id="prep", input=Job, output=Job, start_to_close_timeout=timeout)
    async def prep(ctx: StageContext[Job, None]) -> Job:
        _entered(ctx, ctx.input.dir)
        if ctx.input.mode == "prep":
            release = release_path(ctx.input.dir, ctx.workflow_run_id)
            while not release.exists():
                await asyncio.sleep(0.02)
        ctx.log("INFO", "prepared")
        ctx.annotate("rel.prep.seen", True)
        return ctx.input

    @define_stage(
        id="work",
        input=Job,
        start_to_close_timeout=timedelta(seconds=30),
        heartbeat_timeout=timedelta(seconds=HEARTBEAT_TIMEOUT_SECONDS),
    )
    async def work(ctx: StageContext[Job, None]) -> Any:
        _entered(ctx, ctx.input.dir)
        ctx.log("INFO", f"work attempt {ctx.activity_attempt}")
        if ctx.input.mode == "stage":
            release = release_path(ctx.input.dir, ctx.workflow_run_id)
            while not release.exists():
                ctx.heartbeat()
                await asyncio.sleep(0.05)
        ctx.report_progress(0.5, "half way")
        ctx.annotate("rel.work.outcome", "done", emit_event=True)
        ctx.annotate(
            attributes={"rel.work.score": 0.75, "rel.work.note": "ünïcode ✓"},
            actor=Actor(kind="agent", id="reliability", version="1"),
            payload={"raw": [1, 2, 3]},
        )
        ctx.log("INFO", "work done")
        output: dict[str, Any] = {"work": "done", "mode": ctx.input.mode}
        if ctx.input.pad:
            output["pad"] = os.urandom(ctx.input.pad).hex()
        return output

    @define_stage(id="side", input=Job, start_to_close_timeout=timeout)
    async def side(ctx: StageContext[Job, None]) -> Any:
        _entered(ctx, ctx.input.dir)
        ctx.log("INFO", "side done")
        ctx.annotate("rel.side.flag", True, emit_event=True)
        return {"side": "done"}

    @define_stage(id="finish", input=None, start_to_close_timeout=timeout)
    async def finish(ctx: StageContext[None, None]) -> Any:
        ctx.log("INFO", "finished")
        ctx.annotate("rel.finish.total", 2)
        return {"work": ctx.require("work")["work"], "side": ctx.require("side")["side"]}

    return (
        define_workflow(id="crashy", name="Crash target", input=Job)
        .pipe(prep)
        .parallel([work, side])
        .pipe(finish)
        .build()
    )


CRASH_OUTPUT = {"work": "done", "side": "done"}


async def _grouped_count(store: SqlStore, model: Any, run_id: str, *columns: Any) -> dict[Any, int]:
    async with store.sessions() as session:
        rows = await session.execute(
            select(*columns, func.count())
            .select_from(model)
            .where(model.workflow_run_id == run_id)
            .group_by(*columns)
        )
        return {tuple(row[:-1]) if len(columns) > 1 else row[0]: row[-1] for row in rows.all()}


async def assert_exactly_once(store: SqlStore, run_id: str) -> None:
    """Assert that every stage of a completed crash-workflow run left its rows exactly once.

    Counted in SQL per run: stage records and their final status, stage-scoped annotations per
    (stage, key), outbox events per (type, stage), logs per stage; and a gap-free sequence.
    """
    run = await store.get_run(run_id)
    assert run.status == "COMPLETED", run
    assert run.output == CRASH_OUTPUT

    stages = {s.stage_id: s for s in await store.list_stages(run_id)}
    assert sorted(stages) == sorted(CRASH_STAGES)
    for stage in stages.values():
        assert stage.status == "COMPLETED", stage
        assert stage.output_data is not None, stage
    assert await _grouped_count(store, WorkflowStage, run_id, WorkflowStage.stage_id) == {
        stage_id: 1 for stage_id in CRASH_STAGES
    }

    annotations = await _grouped_count(
        store, WorkflowAnnotation, run_id, WorkflowAnnotation.scope_id, WorkflowAnnotation.key
    )
    assert annotations == {
        (stage_id, key): 1 for stage_id, keys in ANNOTATION_KEYS.items() for key in keys
    }
    # Every stage annotation points at its stage's (only) record.
    for row in await store.list_annotations(run_id, AnnotationFilters()):
        assert row.workflow_stage_record_id == stages[row.scope_id].id, row

    logs = await _grouped_count(store, WorkflowLog, run_id, WorkflowLog.stage_id)
    assert logs == LOGS_PER_STAGE, logs

    events = await store.list_outbox_events(run_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    counted: dict[tuple[str, str | None], int] = {}
    for event in events:
        marker = event.payload.get("stage_id") or event.payload.get("key")
        counted[(event.event_type, marker)] = counted.get((event.event_type, marker), 0) + 1
    expected: dict[tuple[str, str | None], int] = {
        ("workflow:created", None): 1,
        ("workflow:started", None): 1,
        ("workflow:completed", None): 1,
    }
    for stage_id in CRASH_STAGES:
        expected[("stage:started", stage_id)] = 1
        expected[("stage:completed", stage_id)] = 1
    for stage_id, count in PROGRESS_PER_STAGE.items():
        expected[("stage:progress", stage_id)] = count
    for key in EMITTING_KEYS:
        expected[("annotation:created", key)] = 1
    assert counted == expected, counted


LOAD_STAGES = ("intake", "extract", "classify", "score", "publish")
"""Stage ids of :func:`load_workflow`: intake → [extract ‖ classify] → score → publish."""
LOAD_ANNOTATIONS_PER_STAGE = 10


def load_workflow() -> Workflow:
    """Five stages with a parallel group; each writes ten annotations and returns a count."""

    def stage(stage_id: str) -> Any:
        @define_stage(id=stage_id, input=None, start_to_close_timeout=timedelta(seconds=30))
        async def annotate_ten(ctx: StageContext[None, None]) -> Any:
            ctx.annotate(
                actor=Actor(kind="system", id=f"load-{stage_id}"),
                attributes={
                    f"load.{stage_id}.{n}": n if n % 2 else f"value-{n}"
                    for n in range(LOAD_ANNOTATIONS_PER_STAGE)
                },
            )
            return {"stage": stage_id}

        return annotate_ten

    intake, extract, classify, score, publish = (stage(s) for s in LOAD_STAGES)
    return (
        define_workflow(id="load")
        .pipe(intake)
        .parallel([extract, classify])
        .pipe(score)
        .pipe(publish)
        .build()
    )


SKEW_POLL_INTERVAL = timedelta(seconds=1)
SKEW_MAX_WAIT = timedelta(seconds=4)


class SkewJob(BaseModel):
    dir: str
    ready_after: int = 2
    """The check that reports ready (polls 0, 1, …); a large number never does: ``max_wait``."""
    max_wait_seconds: float = SKEW_MAX_WAIT.total_seconds()


def skew_workflow() -> Workflow:
    """first → hold → poll (suspends; checks every second, ``max_wait`` 4 s by default).

    Each stage hands the job on; ``first`` adds the worker's wall clock (to prove its skew);
    ``hold`` waits for the run's
    release file (heartbeating), so that a test can attach an annotation from its own process
    between two stage annotations of the worker.
    """

    @define_stage(id="first", input=SkewJob)
    async def first(ctx: StageContext[SkewJob, None]) -> Any:
        ctx.annotate("skew.first", 1)
        return {**ctx.input.model_dump(), "worker_time": time.time()}

    @define_stage(id="hold", input=SkewJob, heartbeat_timeout=timedelta(seconds=5))
    async def hold(ctx: StageContext[SkewJob, None]) -> Any:
        release = release_path(ctx.input.dir, ctx.workflow_run_id)
        touch(Path(ctx.input.dir) / f"{ctx.workflow_run_id}.hold.entered")
        while not release.exists():
            ctx.heartbeat()
            await asyncio.sleep(0.05)
        ctx.annotate("skew.hold", 2)
        return ctx.input.model_dump()

    async def submit(ctx: StageContext[SkewJob, None]) -> Suspend:
        ctx.annotate("skew.submitted", 3)
        return Suspend(
            state={"ready_after": ctx.input.ready_after},
            poll_interval=SKEW_POLL_INTERVAL,
            max_wait=timedelta(seconds=ctx.input.max_wait_seconds),
        )

    async def check(state: Any, ctx: Any) -> CompletionCheck:
        ctx.annotate("skew.checked", ctx.poll_count)
        ready = ctx.poll_count >= state["ready_after"]
        return CompletionCheck(ready=ready, output={"polls": ctx.poll_count} if ready else None)

    poll = define_async_batch_stage(
        id="poll", input=SkewJob, execute=submit, check_completion=check
    )
    return define_workflow(id="skew", input=SkewJob).pipe(first).pipe(hold).pipe(poll).build()
