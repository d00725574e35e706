"""engine.export.openlineage on a real run: its events, sent by the client's HTTP transport to a
loopback server, rebuild as the client's own (validated) event classes and nest correctly."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
from openlineage.client.facet_v2 import parent_run
from openlineage.client.transport.http import HttpConfig, HttpTransport

from engine import RunCreate, RunStatus
from engine.export.openlineage import EVENTS, lineage_run_id, openlineage_plugin
from engine.store import SqlStore
from tests.helpers import running_kernel
from tests.integration.test_export_otel import WORKFLOW


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (the http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append({"path": self.path, "event": json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _validated(raw: dict[str, Any]) -> RunEvent:
    """The event rebuilt with the client's generated classes, whose validators check the
    spec's formats (event time, run id UUID, URIs) and required fields."""
    facets = raw["run"].get("facets", {})
    parent = facets.get("parent")
    run_facets: dict[str, Any] = {}
    if parent is not None:
        run_facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=parent["run"]["runId"]),
            job=parent_run.Job(namespace=parent["job"]["namespace"], name=parent["job"]["name"]),
        )
    event = RunEvent(
        eventTime=raw["eventTime"],
        producer=raw["producer"],
        eventType=RunState(raw["eventType"]),
        run=Run(runId=raw["run"]["runId"], facets=run_facets),
        job=Job(namespace=raw["job"]["namespace"], name=raw["job"]["name"]),
    )
    assert raw["schemaURL"] == event.schemaURL  # the spec version the client ships
    return event


async def test_events_of_a_real_run_validate_and_nest(
    env: Any, store: SqlStore, receiver: str
) -> None:
    client = OpenLineageClient(transport=HttpTransport(HttpConfig(url=receiver)))
    plugin = openlineage_plugin(store, client, namespace="acme")
    async with running_kernel(env, store, WORKFLOW) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="otel-demo", input={}))
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=timedelta(seconds=60))
        assert run.status == RunStatus.COMPLETED
        for event in await kernel.list_outbox_events(run.id):
            if plugin.subscribes_to(event.event_type):
                await plugin.handle(event)
    assert {r["path"] for r in _Receiver.received} == {"/api/v1/lineage"}
    raw = [r["event"] for r in _Receiver.received]
    events = [_validated(r) for r in raw]
    assert len(events) == 2 + 2 * 2  # the run's START/COMPLETE, each stage's START/COMPLETE
    assert all(e.eventType is not None for e in events)
    run_events = [e for e in events if e.job.name == "otel-demo"]
    assert [e.eventType for e in run_events] == [RunState.START, RunState.COMPLETE]
    assert {e.run.runId for e in run_events} == {lineage_run_id(run.id)}
    stages = [e for e in events if e.job.name != "otel-demo"]
    assert {e.job.name for e in stages} == {"otel-demo.draft", "otel-demo.review"}
    assert {e.job.namespace for e in events} == {"acme"}
    for stage in stages:
        parent = stage.run.facets["parent"]  # type: ignore[index]
        assert parent.run.runId == lineage_run_id(run.id)
        assert parent.job.name == "otel-demo"
    completed = next(
        r for r in raw if r["job"]["name"] == "otel-demo.draft" and r["eventType"] == "COMPLETE"
    )
    facet = completed["run"]["facets"]["wfe_stage"]
    # The client leaves out null members: no actor here.
    assert facet["annotations"] == [{"key": "decision.outcome", "value": "send"}]
    assert facet["ai_calls"] == [
        {"model": "gpt-test", "input_tokens": 10, "output_tokens": 5, "cost": 0.25}
    ]
    assert set(EVENTS) >= {"workflow:started", "stage:completed", "workflow:cancelled"}
