"""Record the Temporal histories that ``tests/temporal_workflows/test_replay.py`` replays.

Run from the repository root after a deliberate change of ``RunWorkflow``'s command sequence
(and only then: the point of the committed histories is that the current code must still
replay runs recorded by earlier code)::

    .venv/bin/python tests/histories/record.py [--into FOLDER] [NAME ...]

It starts the local Temporal dev server from the virtualenv (with the engine's search
attributes, as ``wfe dev`` does), runs workflows against a throw-away SQLite side-store and
writes their histories next to this file: ``sequential.json``, ``parallel.json`` and
``failing.json`` (plain runs), and the paths with timers, Updates and other executions:

- ``suspend-poll.json``: an async-batch stage polled (durable timers) until ready;
- ``resume.json``: a suspended stage completed by an external resume (an Update);
- ``continue-as-new-1.json`` / ``-2.json``: a batch stage parked for continue-as-new while a
  slow sibling runs, resumed while parked; the first execution ends CONTINUED_AS_NEW and the
  second takes the carried resume;
- ``resume-before-park.json``: a resume that lands while a poll is being checked on a long
  history is acted on before the stage parks (the ``wfe.resume-before-park`` patch marker);
- ``cancel.json``: a run cancelled while its stage runs;
- ``rerun.json``: the execution of a rerun (its plan read back by ``wfe.start_run``).

Give names to record only some of them (``record.py cancel rerun``): histories recorded by
earlier code are kept on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from pydantic import BaseModel  # noqa: E402
from temporalio.client import (  # noqa: E402
    WorkflowContinuedAsNewError,
    WorkflowFailureError,
)
from temporalio.common import SearchAttributeKey  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from engine import (  # noqa: E402
    CompletionCheck,
    Kernel,
    RunCancel,
    RunCreate,
    RunRerunFrom,
    RunStatus,
    StageContext,
    Suspend,
    Workflow,
    create_worker,
    define_async_batch_stage,
    define_stage,
    define_workflow,
)
from engine.runtime.kernel import temporal_workflow_id  # noqa: E402
from engine.store import SqlStore  # noqa: E402
from tests.helpers import triage_workflow  # noqa: E402


class Text(BaseModel):
    text: str


@define_stage(id="upper", input=Text, output=Text)
async def upper(ctx: StageContext[Text, None]) -> Text:
    ctx.log("INFO", "upper-casing")
    ctx.report_progress(1.0, "done")
    return Text(text=ctx.input.text.upper())


@define_stage(id="exclaim", input=Text, output=Text)
def exclaim(ctx: StageContext[Text, None]) -> Text:
    return Text(text=ctx.input.text + "!")


@define_stage(id="explode", input=Text)
async def explode(ctx: StageContext[Text, None]) -> Any:
    ctx.annotate("acme.note", "about to fail")
    raise RuntimeError("exploded on purpose")


@define_stage(id="unreached", input=None)
async def unreached(ctx: StageContext[None, None]) -> Any:
    return {}


def sequential_workflow() -> Workflow:
    return define_workflow(id="replay-sequential", input=Text).pipe(upper).pipe(exclaim).build()


def failing_workflow() -> Workflow:
    return (
        define_workflow(id="replay-failing", input=Text)
        .pipe(upper)
        .pipe(explode)
        .pipe(unreached)
        .build()
    )


class Score(BaseModel):
    score: int


class Gates:
    """Events the scenarios use to hold a stage (or a check) until the recorder acts."""

    def __init__(self) -> None:
        self.slow_release = asyncio.Event()
        self.check_entered = asyncio.Event()
        self.check_release = asyncio.Event()
        self.cancel_entered = asyncio.Event()
        self.cancel_release = asyncio.Event()


GATES = Gates()
FAST = timedelta(milliseconds=50)


def batch_stage(stage_id: str, *, ready_after: int | None, interval: timedelta) -> Any:
    """An async-batch stage: ready after ``ready_after`` polls (never: ``None``) or on a
    resume's data."""

    async def submit(ctx: Any) -> Suspend:
        ctx.annotate("batch.submitted", True)
        return Suspend(state={"batch_id": stage_id}, poll_interval=interval)

    async def check(state: dict[str, Any], ctx: Any) -> CompletionCheck:
        ctx.annotate("batch.checked", ctx.poll_count)
        if ctx.resume_data is not None:
            return CompletionCheck(ready=True, output={"score": ctx.resume_data["score"]})
        if ready_after is not None and ctx.poll_count + 1 >= ready_after:
            return CompletionCheck(ready=True, output={"score": 42})
        return CompletionCheck(ready=False)

    return define_async_batch_stage(
        id=stage_id, input=None, output=Score, execute=submit, check_completion=check
    )


@define_stage(id="slow", input=None)
async def slow(ctx: StageContext[None, None]) -> Any:
    await GATES.slow_release.wait()
    return {"slow": "done"}


@define_stage(id="held", input=None)
async def held(ctx: StageContext[None, None]) -> Any:
    GATES.cancel_entered.set()
    await GATES.cancel_release.wait()  # set once the run is CANCELLED: a ghost's result
    return {}


def gated_batch() -> Any:
    """A batch stage whose second check waits for the recorder (which resumes meanwhile).

    With ``continue_as_new_after_events=12`` the first execution parks after one check and
    the second one's first check is the held one: after it the history is long, with the
    resume pending.
    """

    async def submit(ctx: Any) -> Suspend:
        return Suspend(state={}, poll_interval=timedelta(milliseconds=1))

    async def check(state: dict[str, Any], ctx: Any) -> CompletionCheck:
        if ctx.resume_data is not None:
            return CompletionCheck(ready=True, output={"score": ctx.resume_data["score"]})
        if ctx.poll_count == 1:
            GATES.check_entered.set()
            await GATES.check_release.wait()
        return CompletionCheck(ready=False)

    return define_async_batch_stage(
        id="gated", input=None, output=Score, execute=submit, check_completion=check
    )


def scenario_workflows() -> list[Workflow]:
    return [
        define_workflow(id="replay-poll")
        .pipe(batch_stage("poll", ready_after=3, interval=timedelta(milliseconds=50)))
        .build(),
        define_workflow(id="replay-resume")
        .pipe(batch_stage("wait", ready_after=None, interval=timedelta(hours=1)))
        .build(),
        define_workflow(id="replay-parked")
        .parallel(
            [slow, batch_stage("parked", ready_after=None, interval=timedelta(milliseconds=50))]
        )
        .build(),
        define_workflow(id="replay-before-park").pipe(gated_batch()).build(),
        define_workflow(id="replay-cancel").pipe(held).build(),
    ]


RECORDINGS: list[tuple[str, str, dict[str, Any], RunStatus]] = [
    ("sequential", "replay-sequential", {"text": "hello"}, RunStatus.COMPLETED),
    ("parallel", "ticket-triage", {"text": "urgent: printer on fire"}, RunStatus.COMPLETED),
    ("failing", "replay-failing", {"text": "boom"}, RunStatus.FAILED),
]


async def _closed(env: WorkflowEnvironment, temporal_id: str, run_id: str | None = None) -> Any:
    """The history of a closed execution (waits for it to close)."""
    handle = env.client.get_workflow_handle(temporal_id, run_id=run_id)
    with contextlib.suppress(WorkflowFailureError, WorkflowContinuedAsNewError):
        await handle.result(follow_runs=False)
    return await handle.fetch_history()


async def _suspended(kernel: Kernel, run_id: str, stage_id: str) -> None:
    for _ in range(1500):
        stages = {s.stage_id: s for s in await kernel.list_stages(run_id)}
        if stage_id in stages and stages[stage_id].status == RunStatus.SUSPENDED:
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"stage {stage_id} of run {run_id} never suspended")


async def _run(kernel: Kernel, workflow_id: str) -> str:
    created = await kernel.dispatch(RunCreate(workflow_id=workflow_id, input={}))
    return str(created.workflow_run_id)


async def _expect(kernel: Kernel, run_id: str, status: RunStatus) -> None:
    run = await kernel.wait_for_run(run_id, timeout=timedelta(seconds=60))
    if run.status != status:
        raise RuntimeError(f"run {run_id} ended {run.status}, not {status}")


async def record_suspend_poll(env: WorkflowEnvironment, kernel: Kernel) -> dict[str, Any]:
    run_id = await _run(kernel, "replay-poll")
    await _expect(kernel, run_id, RunStatus.COMPLETED)
    return {"suspend-poll": await _closed(env, temporal_workflow_id(run_id))}


async def record_resume(env: WorkflowEnvironment, kernel: Kernel) -> dict[str, Any]:
    run_id = await _run(kernel, "replay-resume")
    await _suspended(kernel, run_id, "wait")
    await kernel.resume_stage(run_id, "wait", data={"score": 7}, attributes={"review.by": "a"})
    await _expect(kernel, run_id, RunStatus.COMPLETED)
    return {"resume": await _closed(env, temporal_workflow_id(run_id))}


async def record_continue_as_new(env: WorkflowEnvironment, kernel: Kernel) -> dict[str, Any]:
    short = Kernel(
        client=env.client,
        store=kernel.store,
        workflows=list(kernel.workflows.values()),
        task_queue=kernel.task_queue,
        continue_as_new_after_events=40,
    )
    run_id = await _run(short, "replay-parked")
    handle = env.client.get_workflow_handle(temporal_workflow_id(run_id))
    previous = -1
    while True:  # parked: a long history, and the polls have stopped
        await asyncio.sleep(0.5)
        checks = len(await kernel.annotations.list(run_id, key="batch.checked"))
        if len((await handle.fetch_history()).events) >= 40 and checks == previous:
            break
        previous = checks
    await kernel.resume_stage(run_id, "parked", data={"score": 5})
    GATES.slow_release.set()
    await _expect(kernel, run_id, RunStatus.COMPLETED)
    info = (await handle.describe()).raw_description.workflow_execution_info
    return {
        "continue-as-new-1": await _closed(env, handle.id, info.first_run_id),
        "continue-as-new-2": await _closed(env, handle.id, info.execution.run_id),
    }


async def record_resume_before_park(env: WorkflowEnvironment, kernel: Kernel) -> dict[str, Any]:
    short = Kernel(
        client=env.client,
        store=kernel.store,
        workflows=list(kernel.workflows.values()),
        task_queue=kernel.task_queue,
        continue_as_new_after_events=12,
    )
    run_id = await _run(short, "replay-before-park")
    await asyncio.wait_for(GATES.check_entered.wait(), timeout=60)
    handle = env.client.get_workflow_handle(temporal_workflow_id(run_id))
    held = (await handle.describe()).run_id  # the execution whose check is held
    await kernel.resume_stage(run_id, "gated", data={"score": 3})
    GATES.check_release.set()
    # That execution's history: it completes the run (code before the patch parked and
    # continued as new instead: v0-before-resume-patch/ keeps such a history).
    return {"resume-before-park": await _closed(env, handle.id, held)}


async def record_cancel(env: WorkflowEnvironment, kernel: Kernel) -> dict[str, Any]:
    run_id = await _run(kernel, "replay-cancel")
    await asyncio.wait_for(GATES.cancel_entered.wait(), timeout=60)
    await kernel.dispatch(RunCancel(workflow_run_id=run_id, reason="recorded"))
    await _expect(kernel, run_id, RunStatus.CANCELLED)
    history = await _closed(env, temporal_workflow_id(run_id))
    GATES.cancel_release.set()
    return {"cancel": history}


async def record_rerun(env: WorkflowEnvironment, kernel: Kernel) -> dict[str, Any]:
    created = await kernel.dispatch(
        RunCreate(workflow_id="replay-sequential", input={"text": "again"})
    )
    run_id = created.workflow_run_id
    await _expect(kernel, run_id, RunStatus.COMPLETED)
    await kernel.dispatch(RunRerunFrom(workflow_run_id=run_id, from_stage_id="exclaim"))
    await _expect(kernel, run_id, RunStatus.COMPLETED)
    return {"rerun": await _closed(env, temporal_workflow_id(run_id, 1))}


SCENARIOS = {
    "suspend-poll": record_suspend_poll,
    "resume": record_resume,
    "continue-as-new": record_continue_as_new,
    "resume-before-park": record_resume_before_park,
    "cancel": record_cancel,
    "rerun": record_rerun,
}


async def record(directory: Path = HERE, names: Sequence[str] = ()) -> list[Path]:
    """Run each recording's workflow once and save its history as JSON; returns the files."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        search_attributes=[
            SearchAttributeKey.for_keyword("WfeRunStatus"),
            SearchAttributeKey.for_keyword("WfeWorkflowId"),
            SearchAttributeKey.for_keyword("DecisionOutcome"),
            SearchAttributeKey.for_keyword("WfeRunId"),
            SearchAttributeKey.for_int("WfeAttempt"),
        ],
    )
    written = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = SqlStore(f"sqlite+aiosqlite:///{tmp}/record.db")
            await store.upgrade()
            kernel = Kernel(
                client=env.client,
                store=store,
                workflows=[
                    sequential_workflow(),
                    triage_workflow(),
                    failing_workflow(),
                    *scenario_workflows(),
                ],
                task_queue=f"record-{uuid.uuid4()}",
            )
            try:
                async with create_worker(kernel):
                    for name, workflow_id, run_input, expected in RECORDINGS:
                        if names and name not in names:
                            continue
                        created = await kernel.dispatch(
                            RunCreate(workflow_id=workflow_id, input=run_input)
                        )
                        run_id = created.workflow_run_id
                        run = await kernel.wait_for_run(run_id, timeout=timedelta(seconds=60))
                        if run.status != expected:
                            raise RuntimeError(f"{name}: run ended {run.status}, not {expected}")
                        handle = env.client.get_workflow_handle(temporal_workflow_id(run_id))
                        try:
                            await handle.result()
                        except WorkflowFailureError:  # a failed run fails its execution
                            pass
                        history = await handle.fetch_history()
                        path = directory / f"{name}.json"
                        path.write_text(history.to_json() + "\n")
                        written.append(path)
                    for scenario, make in SCENARIOS.items():
                        if names and scenario not in names:
                            continue
                        for name, history in (await make(env, kernel)).items():
                            path = directory / f"{name}.json"
                            path.write_text(history.to_json() + "\n")
                            written.append(path)
            finally:
                await store.dispose()
    finally:
        await env.shutdown()
    return written


if __name__ == "__main__":
    args = sys.argv[1:]
    directory = HERE
    if args[:1] == ["--into"]:  # a set beside these, e.g. --into v3-pipeline-type
        directory = HERE / args[1]
        directory.mkdir(exist_ok=True)
        args = args[2:]
    unknown = set(args) - {name for name, *_ in RECORDINGS} - set(SCENARIOS)
    if unknown:
        sys.exit(f"unknown recordings: {', '.join(sorted(unknown))}")
    for path in asyncio.run(record(directory, names=args)):
        print(f"wrote {path}")
