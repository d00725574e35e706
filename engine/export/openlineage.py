"""OpenLineage export of runs: a plugin on the outbox (``engine.export.openlineage``).

Only committed facts leave (the outbox is written in the transaction that made them). Each
event becomes a ``RunEvent`` of the ``openlineage-python`` client, emitted through any of its
transports (HTTP, file, console: :class:`openlineage.client.OpenLineageClient`):

- the run is a job in ``namespace`` named by the workflow id; ``workflow:started`` is its
  START, ``workflow:completed`` / ``failed`` / ``cancelled`` its COMPLETE / FAIL / ABORT;
- each stage is a child job ``<workflow id>.<stage id>`` with the ``parent`` run facet naming
  the run; ``stage:started`` / ``completed`` / ``failed`` are its START / COMPLETE / FAIL, and
  the last two carry a custom ``wfe_stage`` run facet with the stage's annotations (key, value,
  actor) and its AI calls' usage (tokens, cost);
- run ids are UUIDs derived from the run id and the stage record id, so a redelivered event
  names the same run.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import attr
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
from openlineage.client.facet_v2 import RunFacet, parent_run

from engine.core.records import OutboxEventRecord, StageRecord
from engine.runtime.plugins import Plugin, define_plugin
from engine.store import SqlStore
from engine.store.contract import AnnotationFilters

__all__ = ["EVENTS", "StageFacet", "lineage_run_id", "openlineage_plugin"]

PRODUCER = "https://github.com/workflow-engine-temporal/wfe"
_IDS = uuid.UUID("8d3c1b0e-4f0e-4c61-9a57-3f2b7c1d2e10")

_RUN_STATES = {
    "workflow:started": RunState.START,
    "workflow:completed": RunState.COMPLETE,
    "workflow:failed": RunState.FAIL,
    "workflow:cancelled": RunState.ABORT,
}
_STAGE_STATES = {
    "stage:started": RunState.START,
    "stage:completed": RunState.COMPLETE,
    "stage:failed": RunState.FAIL,
}
EVENTS = (*_RUN_STATES, *_STAGE_STATES)


def lineage_run_id(record_id: str) -> str:
    """The OpenLineage run id (a UUID) of a run or stage record."""
    return str(uuid.uuid5(_IDS, record_id))


@attr.define
class StageFacet(RunFacet):
    """``wfe_stage``: the stage's annotations and AI-call usage."""

    stage_id: str
    attempt: int
    annotations: list[dict[str, Any]] = attr.field(factory=list)
    ai_calls: list[dict[str, Any]] = attr.field(factory=list)

    @staticmethod
    def _get_schema() -> str:
        return f"{PRODUCER}/spec/StageFacet.json"


def openlineage_plugin(
    store: SqlStore,
    client: OpenLineageClient,
    *,
    namespace: str = "wfe",
    plugin_id: str = "engine.export.openlineage",
) -> Plugin:
    """A plugin emitting each run and stage event as an OpenLineage ``RunEvent``."""

    async def stage_facet(run_id: str, record: StageRecord) -> StageFacet:
        annotations = await store.list_annotations(
            run_id, AnnotationFilters(scope="stage", scope_id=record.stage_id, limit=10_000)
        )
        calls = await store.list_ai_calls(run_id)
        return StageFacet(
            stage_id=record.stage_id,
            attempt=record.attempt,
            annotations=[
                {
                    "key": a.key,
                    "value": a.value,
                    "actor": {"kind": a.actor_kind, "id": a.actor_id}
                    if a.actor_id is not None
                    else None,
                }
                for a in annotations
                if a.workflow_stage_record_id in (None, record.id) and a.attempt == record.attempt
            ],
            ai_calls=[
                {
                    "model": c["model_id"],
                    "input_tokens": c["input_tokens"],
                    "output_tokens": c["output_tokens"],
                    "cost": c["cost"],
                }
                for c in calls
                if c["stage_id"] == record.stage_id
            ],
        )

    async def handle(event: OutboxEventRecord) -> None:
        run_id = event.workflow_run_id
        run = await store.get_run(run_id)
        when = event.occurred_at.isoformat()
        run_job = Job(namespace=namespace, name=run.workflow_id)
        if event.event_type in _RUN_STATES:
            lineage = RunEvent(
                eventTime=when,
                producer=PRODUCER,
                eventType=_RUN_STATES[event.event_type],
                run=Run(runId=lineage_run_id(run_id)),
                job=run_job,
            )
        else:
            stage_id = str(event.payload["stage_id"])
            records = [s for s in await store.list_stages(run_id) if s.stage_id == stage_id]
            if not records:
                return  # its record went (a rerun); nothing to name
            record = records[0]
            facets: dict[str, RunFacet] = {
                "parent": parent_run.ParentRunFacet(
                    run=parent_run.Run(runId=lineage_run_id(run_id)),
                    job=parent_run.Job(namespace=namespace, name=run.workflow_id),
                )
            }
            if event.event_type != "stage:started":
                facets["wfe_stage"] = await stage_facet(run_id, record)
            lineage = RunEvent(
                eventTime=when,
                producer=PRODUCER,
                eventType=_STAGE_STATES[event.event_type],
                run=Run(runId=lineage_run_id(record.id), facets=facets),
                job=Job(namespace=namespace, name=f"{run.workflow_id}.{stage_id}"),
            )
        await asyncio.to_thread(client.emit, lineage)

    return define_plugin(id=plugin_id, name="OpenLineage", on=EVENTS, handle=handle)
