"""Record the Temporal histories that ``tests/temporal_workflows/test_replay.py`` replays.

Run from the repository root after a deliberate change of ``RunWorkflow``'s command sequence
(and only then: the point of the committed histories is that the current code must still
replay runs recorded by earlier code)::

    .venv/bin/python tests/histories/record.py

It starts the local Temporal dev server from the virtualenv (with the engine's search
attributes, as ``wfe dev`` does), runs three workflows against a throw-away SQLite side-store
and writes ``sequential.json``, ``parallel.json`` and ``failing.json`` next to this file.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from pydantic import BaseModel  # noqa: E402
from temporalio.common import SearchAttributeKey  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from engine import (  # noqa: E402
    Kernel,
    RunCreate,
    RunStatus,
    StageContext,
    Workflow,
    create_worker,
    define_stage,
    define_workflow,
)
from engine.kernel import temporal_workflow_id  # noqa: E402
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


RECORDINGS: list[tuple[str, str, dict[str, Any], RunStatus]] = [
    ("sequential", "replay-sequential", {"text": "hello"}, RunStatus.COMPLETED),
    ("parallel", "ticket-triage", {"text": "urgent: printer on fire"}, RunStatus.COMPLETED),
    ("failing", "replay-failing", {"text": "boom"}, RunStatus.FAILED),
]


async def record(directory: Path = HERE) -> list[Path]:
    """Run each recording's workflow once and save its history as JSON; returns the files."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        search_attributes=[
            SearchAttributeKey.for_keyword("WfeRunStatus"),
            SearchAttributeKey.for_keyword("WfeWorkflowId"),
            SearchAttributeKey.for_keyword("DecisionOutcome"),
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
                workflows=[sequential_workflow(), triage_workflow(), failing_workflow()],
                task_queue=f"record-{uuid.uuid4()}",
            )
            try:
                async with create_worker(kernel):
                    for name, workflow_id, run_input, expected in RECORDINGS:
                        created = await kernel.dispatch(
                            RunCreate(workflow_id=workflow_id, input=run_input)
                        )
                        run_id = created.workflow_run_id
                        run = await kernel.wait_for_run(run_id, timeout=timedelta(seconds=60))
                        if run.status != expected:
                            raise RuntimeError(f"{name}: run ended {run.status}, not {expected}")
                        handle = env.client.get_workflow_handle(temporal_workflow_id(run_id))
                        await handle.result()
                        history = await handle.fetch_history()
                        path = directory / f"{name}.json"
                        path.write_text(history.to_json() + "\n")
                        written.append(path)
            finally:
                await store.dispose()
    finally:
        await env.shutdown()
    return written


if __name__ == "__main__":
    for path in asyncio.run(record()):
        print(f"wrote {path}")
