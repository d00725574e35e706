"""Stage artifacts, large outputs by reference, and AI call cost roll-up."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from engine import (
    AICall,
    ArtifactNotFoundError,
    RunCreate,
    RunRerunFrom,
    RunStatus,
    StageContext,
    define_stage,
    define_workflow,
)
from engine.runtime.blobs import FileBlobStore
from engine.store.models import AICall as AICallRow
from engine.store.models import WorkflowArtifact
from tests.helpers import running_kernel


class Blob(BaseModel):
    data: str


@define_stage(id="produce", input=None, output=Blob)
async def produce(ctx: StageContext[None, None]) -> Blob:
    await ctx.storage.save("notes", {"run": ctx.workflow_run_id})
    assert await ctx.storage.exists("notes")
    assert await ctx.storage.load("notes") == {"run": ctx.workflow_run_id}
    with pytest.raises(ArtifactNotFoundError):
        await ctx.storage.load("missing")
    await ctx.storage.delete("missing")  # a missing key is fine
    ctx.record_ai_call(
        AICall(model="gpt-test", input_tokens=100, output_tokens=20, cost=0.5, finish_reason="stop")
    )
    return Blob(data="x" * 2048)


@define_stage(id="consume", input=Blob, output=Blob)
async def consume(ctx: StageContext[Blob, None]) -> Blob:
    ctx.record_ai_call(AICall(model="gpt-test", input_tokens=10, output_tokens=5, cost=0.25))
    assert ctx.require("produce")["data"] == "x" * 2048  # resolved from the reference
    return Blob(data=str(len(ctx.input.data)))


def artifacts_workflow() -> Any:
    return define_workflow(id="artifacts").pipe(produce).pipe(consume).build()


async def test_large_outputs_travel_by_reference_and_costs_roll_up(env, store):
    async with running_kernel(env, store, artifacts_workflow(), large_output_bytes=1024) as kernel:
        runs = []
        for _ in range(2):  # two runs: artifact keys are scoped per run, so they never collide
            created = await kernel.dispatch(RunCreate(workflow_id="artifacts", input={}))
            runs.append(await kernel.wait_for_run(created.workflow_run_id))
        run = runs[0]
        assert run.status == RunStatus.COMPLETED, await kernel.list_stages(run.id)
        assert run.output == {"data": "2048"}
        stages = {s.stage_id: s for s in await kernel.list_stages(run.id)}
        output_key = stages["produce"].output_data["_artifact_key"]
        assert output_key.startswith("produce/__output__/")  # a key per outcome, write-once
        assert stages["consume"].output_data == {"data": "2048"}
        assert run.total_cost == pytest.approx(0.75) and run.total_tokens == 135
        completed = [
            e
            for e in await kernel.list_outbox_events(run.id)
            if e.event_type == "workflow:completed"
        ]
        assert completed[0].payload["total_tokens"] == 135
        async with store.transaction() as session:
            calls = (
                await session.scalars(
                    AICallRow.__table__.select().where(AICallRow.workflow_run_id == run.id)
                )
            ).all()
            assert len(calls) == 2
            keys = set(
                (
                    await session.scalars(
                        WorkflowArtifact.__table__.select()
                        .with_only_columns(WorkflowArtifact.key)
                        .where(WorkflowArtifact.workflow_run_id == run.id)
                    )
                ).all()
            )
            assert keys == {"produce/notes", output_key}

        await kernel.dispatch(RunRerunFrom(workflow_run_id=run.id, from_stage_id="produce"))
        async with store.transaction() as session:
            left = (
                await session.scalars(
                    WorkflowArtifact.__table__.select()
                    .with_only_columns(WorkflowArtifact.key)
                    .where(WorkflowArtifact.workflow_run_id == run.id)
                )
            ).all()
        assert left == []  # rerun removed the rerun stages' artifacts
        rerun = await kernel.wait_for_run(run.id)
        assert rerun.status == RunStatus.COMPLETED and rerun.output == {"data": "2048"}
        assert (await kernel.get_run(runs[1].id)).status == RunStatus.COMPLETED


@define_stage(id="big", input=None, output=Blob)
async def big(ctx: StageContext[None, None]) -> Blob:
    await ctx.storage.save("shared-name", {"run": ctx.workflow_run_id})
    return Blob(data="y" * (5 * 1024 * 1024))  # 5 MiB: over Temporal's 2 MB payload limit


@define_stage(id="measure", input=Blob, output=Blob)
async def measure(ctx: StageContext[Blob, None]) -> Blob:
    assert await ctx.storage.exists("shared-name") is False  # another stage's key space
    return Blob(data=str(len(ctx.input.data)))


async def test_five_mib_output_through_temporal_on_a_file_blob_store(env, store, tmp_path):
    """A 5 MiB output completes through Temporal by reference; FileBlobStore keys are scoped."""
    workflow = define_workflow(id="big").pipe(big).pipe(measure).build()
    blobs = FileBlobStore(tmp_path / "blobs")
    async with running_kernel(env, store, workflow, blob_store=blobs) as kernel:
        first = await kernel.dispatch(RunCreate(workflow_id="big", input={}))
        second = await kernel.dispatch(RunCreate(workflow_id="big", input={}))
        for created in (first, second):
            run = await kernel.wait_for_run(created.workflow_run_id)
            assert run.status == RunStatus.COMPLETED, await kernel.list_stages(run.id)
            assert run.output == {"data": str(5 * 1024 * 1024)}
            assert await blobs.get(run.id, "big/shared-name") == {"run": run.id}
        await kernel.dispatch(
            RunRerunFrom(workflow_run_id=first.workflow_run_id, from_stage_id="big")
        )
        assert not await blobs.exists(first.workflow_run_id, "big/shared-name")
        assert await blobs.exists(second.workflow_run_id, "big/shared-name")  # other run kept
        rerun = await kernel.wait_for_run(first.workflow_run_id)
        assert rerun.status == RunStatus.COMPLETED
        assert await blobs.exists(first.workflow_run_id, "big/shared-name")


async def test_file_blob_store_refuses_keys_that_climb_out(tmp_path):
    blobs = FileBlobStore(tmp_path)
    for bad in ("../x", "a/../../x", "a//b", ""):
        with pytest.raises(ValueError):
            await blobs.put("run", bad, 1)
    await blobs.put("run", "stage/na/me%", {"ok": True})  # odd characters are encoded
    assert await blobs.get("run", "stage/na/me%") == {"ok": True}
    await blobs.delete_prefix("run", "stage/")
    with pytest.raises(ArtifactNotFoundError):
        await blobs.get("run", "stage/na/me%")
