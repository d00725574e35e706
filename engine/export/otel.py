"""OpenTelemetry export of finished runs: a plugin on the outbox (``engine.export.otel``).

When a run ends (``workflow:completed``, ``workflow:failed``, ``workflow:cancelled``: only
committed facts), the plugin reads the run's records and exports them as spans through any
``SpanExporter`` (OTLP/HTTP in production, :func:`otlp_http_exporter`):

- one span per run, and one per stage record, child of the run's, each with its start and end
  from the records; ids derive from the records (the trace id from the run id, a span id from
  its record id), so a redelivered event, a replay or a retry exports the same spans again
  (backends keep one) and a rerun's spans join the run's trace;
- annotations as span events, on their stage's span (or the run's), with key, value, actor;
- AI calls as child spans of their stage's, with the ``gen_ai.*`` semantic-convention
  attributes (system, operation, request and response model, input and output tokens) and
  ``wfe.ai.cost``.

Beside temporalio's tracing interceptor (``temporalio.contrib.opentelemetry``): that one traces
the Temporal calls live (workflow and activity executions, with their retries), in traces of
its own; this one exports the run's record after the fact, with the provenance the interceptor
cannot see. Run both to have both; the ``wfe.workflow_run_id`` attribute on this run's span
names the run whose Temporal workflow is ``wfe-run-<run id>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from engine.core.records import Annotation, OutboxEventRecord, RunRecord, RunStatus, StageRecord
from engine.runtime.plugins import Plugin, define_plugin
from engine.store import SqlStore
from engine.store.contract import AnnotationFilters

__all__ = ["ENDED", "otel_plugin", "otlp_http_exporter", "run_spans", "span_id", "trace_id"]

ENDED = ("workflow:completed", "workflow:failed", "workflow:cancelled")


def trace_id(run_id: str) -> int:
    """The trace id of a run: the first 128 bits of sha256(run id)."""
    return int.from_bytes(hashlib.sha256(f"trace:{run_id}".encode()).digest()[:16], "big")


def span_id(record_id: str) -> int:
    """The span id of a record: the first 64 bits of sha256(record id)."""
    return int.from_bytes(hashlib.sha256(f"span:{record_id}".encode()).digest()[:8], "big")


def _ns(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1_000_000_000)


def _context(run_id: str, record_id: str) -> SpanContext:
    return SpanContext(
        trace_id(run_id),
        span_id(record_id),
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


def _value(value: Any) -> Any:
    """A span attribute value: a scalar as it is, anything else as its JSON."""
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _event(annotation: Annotation) -> Event:
    attributes: dict[str, Any] = {
        "wfe.annotation.key": annotation.key,
        "wfe.annotation.value": _value(annotation.value),
        "wfe.annotation.scope": annotation.scope,
    }
    if annotation.actor_kind is not None:
        attributes["wfe.actor.kind"] = annotation.actor_kind
    if annotation.actor_id is not None:
        attributes["wfe.actor.id"] = annotation.actor_id
    return Event(annotation.key, attributes, _ns(annotation.created_at))


def _status(status: RunStatus, error: str | None) -> Status:
    if status is RunStatus.FAILED:
        return Status(StatusCode.ERROR, error)
    return Status(StatusCode.OK) if status is RunStatus.COMPLETED else Status(StatusCode.UNSET)


def _ai_span(
    run: RunRecord, parent: SpanContext, call: dict[str, Any], resource: Resource
) -> ReadableSpan:
    metadata = call.get("metadata") or {}
    model = str(call["model_id"])
    system = str(metadata.get("provider") or model.split("/", 1)[0].split("-", 1)[0])
    end = _ns(call["created_at"]) or 0
    duration = metadata.get("duration_ms")
    start = end - int(duration) * 1_000_000 if isinstance(duration, int) else end
    attributes: dict[str, Any] = {
        "gen_ai.system": system,
        "gen_ai.operation.name": str(call["call_type"]),
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.usage.input_tokens": int(call["input_tokens"]),
        "gen_ai.usage.output_tokens": int(call["output_tokens"]),
        "wfe.ai.cost": float(call["cost"]),
    }
    return ReadableSpan(
        name=f"{call['call_type']} {model}",
        context=_context(run.id, str(call["id"])),
        parent=parent,
        resource=resource,
        attributes=attributes,
        kind=SpanKind.CLIENT,
        start_time=start,
        end_time=end,
    )


def run_spans(
    run: RunRecord,
    stages: Sequence[StageRecord],
    annotations: Sequence[Annotation],
    ai_calls: Sequence[dict[str, Any]],
    resource: Resource,
) -> list[ReadableSpan]:
    """The spans of a finished run's records (see the module doc)."""
    root = _context(run.id, run.id)
    by_record = {stage.id: stage for stage in stages}
    contexts = {stage.id: _context(run.id, stage.id) for stage in stages}
    by_stage_id = {stage.stage_id: contexts[stage.id] for stage in stages}
    events: dict[str, list[Event]] = {run.id: []}
    for annotation in annotations:
        record = annotation.workflow_stage_record_id
        events.setdefault(record if record in by_record else run.id, []).append(_event(annotation))
    spans = [
        ReadableSpan(
            name=f"run {run.workflow_id}",
            context=root,
            resource=resource,
            attributes={
                "wfe.workflow_run_id": run.id,
                "wfe.workflow_id": run.workflow_id,
                "wfe.status": str(run.status),
                "wfe.total_cost": run.total_cost,
                "wfe.total_tokens": run.total_tokens,
            },
            events=events[run.id],
            kind=SpanKind.INTERNAL,
            status=_status(run.status, None),
            start_time=_ns(run.started_at or run.created_at),
            end_time=_ns(run.completed_at),
        )
    ]
    for stage in stages:
        spans.append(
            ReadableSpan(
                name=f"stage {stage.stage_id}",
                context=contexts[stage.id],
                parent=root,
                resource=resource,
                attributes={
                    "wfe.stage_id": stage.stage_id,
                    "wfe.stage_record_id": stage.id,
                    "wfe.attempt": stage.attempt,
                    "wfe.status": str(stage.status),
                },
                events=events.get(stage.id, []),
                kind=SpanKind.INTERNAL,
                status=_status(stage.status, stage.error_message),
                start_time=_ns(stage.started_at),
                end_time=_ns(stage.completed_at or stage.started_at),
            )
        )
    for call in ai_calls:
        parent = by_stage_id.get(str(call.get("stage_id")), root)
        spans.append(_ai_span(run, parent, call, resource))
    return spans


def otel_plugin(
    store: SqlStore,
    exporter: SpanExporter,
    *,
    service_name: str = "wfe",
    plugin_id: str = "engine.export.otel",
) -> Plugin:
    """A plugin exporting each run that ends as spans through ``exporter``."""
    resource = Resource.create({"service.name": service_name})

    async def handle(event: OutboxEventRecord) -> None:
        run_id = event.workflow_run_id
        run = await store.get_run(run_id)
        stages = await store.list_stages(run_id)
        annotations = await store.list_annotations(run_id, AnnotationFilters(limit=10_000))
        calls = await store.list_ai_calls(run_id)
        spans = run_spans(run, stages, annotations, calls, resource)
        result = await asyncio.to_thread(exporter.export, spans)
        if result != SpanExportResult.SUCCESS:
            raise RuntimeError(f"span export of run {run_id} failed: the event is retried")

    return define_plugin(id=plugin_id, name="OpenTelemetry", on=ENDED, handle=handle)


def otlp_http_exporter(endpoint: str, *, timeout: float = 10.0) -> SpanExporter:
    """An OTLP/HTTP exporter to ``endpoint`` (``http://collector:4318/v1/traces``)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, timeout=timeout)
