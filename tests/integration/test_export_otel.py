"""engine.export.otel on a real run: the spans from the SDK's in-memory exporter, and the same
through OTLP/HTTP to a loopback receiver, with their parents, events and gen_ai.* attributes."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engine import AICall, RunCreate, RunStatus, StageContext, define_stage, define_workflow
from engine.export.otel import ENDED, otel_plugin, otlp_http_exporter, span_id, trace_id
from engine.store import SqlStore
from tests.helpers import running_kernel


@define_stage(id="draft", input=None, output=None)
async def draft(ctx: StageContext[None, None]) -> None:
    ctx.annotate("decision.outcome", "send")
    ctx.record_ai_call(
        AICall(model="gpt-test", input_tokens=10, output_tokens=5, cost=0.25, duration_ms=40)
    )


@define_stage(id="review", input=None, output=None)
async def review(ctx: StageContext[None, None]) -> None:
    ctx.annotate("review.ok", True)


WORKFLOW = define_workflow(id="otel-demo").pipe(draft).pipe(review).build()


async def _run(env: Any, store: SqlStore) -> tuple[str, Any]:
    async with running_kernel(env, store, WORKFLOW) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="otel-demo", input={}))
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=timedelta(seconds=60))
        assert run.status == RunStatus.COMPLETED
        events = await kernel.list_outbox_events(run.id)
    ended = [e for e in events if e.event_type in ENDED]
    assert len(ended) == 1
    return str(run.id), ended[0]


async def test_spans_of_a_real_run_in_memory(env: Any, store: SqlStore) -> None:
    run_id, ended = await _run(env, store)
    exporter = InMemorySpanExporter()
    plugin = otel_plugin(store, exporter)
    await plugin.handle(ended)
    await plugin.handle(ended)  # a redelivery exports the same spans (same ids)
    spans = exporter.get_finished_spans()
    assert len(spans) == 2 * 4
    first = {span.name: span for span in spans[:4]}
    again = {span.name: span for span in spans[4:]}
    assert {n: s.context.span_id for n, s in first.items()} == {
        n: s.context.span_id for n, s in again.items()
    }
    root = first["run otel-demo"]
    assert root.context.trace_id == trace_id(run_id) and root.parent is None
    assert root.context.span_id == span_id(run_id)
    draft_span, review_span = first["stage draft"], first["stage review"]
    for span in (draft_span, review_span):
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.start_time is not None and span.end_time is not None
        assert span.start_time <= span.end_time
    assert [e.name for e in draft_span.events] == ["decision.outcome"]
    assert draft_span.events[0].attributes["wfe.annotation.value"] == "send"
    assert [e.name for e in review_span.events] == ["review.ok"]
    call = first["completion gpt-test"]
    assert call.parent is not None and call.parent.span_id == draft_span.context.span_id
    assert call.attributes is not None
    assert call.attributes["gen_ai.request.model"] == "gpt-test"
    assert call.attributes["gen_ai.response.model"] == "gpt-test"
    assert call.attributes["gen_ai.usage.input_tokens"] == 10
    assert call.attributes["gen_ai.usage.output_tokens"] == 5
    assert call.attributes["wfe.ai.cost"] == 0.25
    assert "gen_ai.system" in call.attributes


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:  # noqa: N802 (the http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.received.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
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
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        server.server_close()


async def test_spans_of_a_real_run_over_otlp_http(env: Any, store: SqlStore, receiver: str) -> None:
    run_id, ended = await _run(env, store)
    await otel_plugin(store, otlp_http_exporter(receiver)).handle(ended)
    assert len(_Receiver.received) == 1
    spans = [
        span
        for resource in _Receiver.received[0].resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    by_name = {span.name: span for span in spans}
    assert set(by_name) == {"run otel-demo", "stage draft", "stage review", "completion gpt-test"}
    root = by_name["run otel-demo"]
    assert int.from_bytes(root.trace_id, "big") == trace_id(run_id)
    assert by_name["stage draft"].parent_span_id == root.span_id
    assert by_name["completion gpt-test"].parent_span_id == by_name["stage draft"].span_id
    attributes = {a.key: a.value for a in by_name["completion gpt-test"].attributes}
    assert attributes["gen_ai.usage.input_tokens"].int_value == 10
    assert attributes["gen_ai.request.model"].string_value == "gpt-test"
    assert [e.name for e in by_name["stage draft"].events] == ["decision.outcome"]
