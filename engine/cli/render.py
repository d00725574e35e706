"""Output of the ``wfe`` commands: JSON for machines, plain aligned tables for people.

Tables are plain text rather than rich renderables so that their layout does not depend on the
terminal width: nothing is wrapped or cut differently when the output goes to a pipe or a file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import typer
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from engine.core.presentation import format_actor, format_duration, format_time, value_text
from engine.core.records import Annotation, RunRecord, StageRecord, StageStatus

__all__ = [
    "Echo",
    "annotation_table",
    "dump",
    "emit_json",
    "format_value",
    "masked_url",
    "run_document",
    "run_summary",
    "stage_line",
    "stage_table",
    "table",
    "temporal_ui_url",
]

Echo = Callable[[str], None]
"""Where a command writes a line of (progress) output."""

_VALUE_WIDTH = 60


def dump(value: Any) -> Any:
    """The JSON form of a record (or a list of them), with the record field names."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [dump(item) for item in value]
    if isinstance(value, dict):
        return {key: dump(item) for key, item in value.items()}
    return value


def emit_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    typer.echo(json.dumps(dump(value), indent=2, ensure_ascii=False, default=str))


def masked_url(url: str) -> str:
    """A database URL fit for messages: the password, if any, is hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: show it, it holds no parsed password
        return url


def temporal_ui_url(ui_url: str, namespace: str, temporal_workflow_id: str) -> str:
    """Link to a workflow in the Temporal Web UI."""
    return f"{ui_url.rstrip('/')}/namespaces/{namespace}/workflows/{temporal_workflow_id}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, indent: str = "") -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [len(header) for header in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[index]) for index, cell in enumerate(row)]
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines)


def format_value(value: Any, *, width: int = _VALUE_WIDTH) -> str:
    """Strings as they are, anything else as compact JSON; cut to ``width`` characters."""
    text = " ".join(value_text(value).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _annotation_where(annotation: Annotation) -> str:
    if annotation.scope == "stage" and annotation.scope_id:
        return annotation.scope_id
    if annotation.scope_id:
        return f"{annotation.scope}:{annotation.scope_id}"
    return f"({annotation.scope})"


def annotation_table(annotations: Sequence[Annotation], *, indent: str = "") -> str:
    """The annotation timeline: time, stage (or scope), attempt, key, value, actor."""
    if not annotations:
        return f"{indent}(no annotations)"
    rows = [
        [
            format_time(a.created_at),  # a date and a zone (Z): no guessing
            _annotation_where(a),
            str(a.attempt),
            a.key,
            format_value(a.value),
            format_actor(a),
        ]
        for a in annotations
    ]
    return table(["TIME", "STAGE", "ATTEMPT", "KEY", "VALUE", "ACTOR"], rows, indent=indent)


def stage_table(stages: Sequence[StageRecord], *, indent: str = "") -> str:
    """One line per stage record: group, stage, status, attempt, duration, error."""
    if not stages:
        return f"{indent}(no stages yet)"
    rows = [
        [
            str(s.execution_group),
            s.stage_id,
            s.status.value,
            str(s.attempt),
            format_duration(s.duration_ms),
            format_value(s.error_message, width=80) if s.error_message else "",
        ]
        for s in stages
    ]
    return table(["GROUP", "STAGE", "STATUS", "ATTEMPT", "DURATION", "ERROR"], rows, indent=indent)


def stage_line(stage: StageRecord) -> str:
    """A progress line for one stage whose status changed."""
    parts = [f"{stage.stage_id:<18}", f"{stage.status.value:<10}", f"attempt {stage.attempt}"]
    if stage.duration_ms is not None:
        parts.append(format_duration(stage.duration_ms))
    if stage.status is StageStatus.SUSPENDED and stage.next_poll_at is not None:
        parts.append(f"next check {format_time(stage.next_poll_at, date=False)}")
    if stage.error_message:
        parts.append(format_value(stage.error_message, width=100))
    return "  ".join(parts)


def _last_execution(run: RunRecord) -> str:
    """The last execution's duration, and when it started if a rerun made it."""
    text = format_duration(run.execution_duration_ms)
    if run.execution_started_at is not None and run.execution_started_at != run.started_at:
        text += f" (rerun started {format_time(run.execution_started_at)})"
    return text


def run_summary(
    run: RunRecord, *, temporal_workflow_id: str | None = None, ui_url: str | None = None
) -> str:
    """Key facts of a run, one per line."""
    rows = [
        ("Run", run.id),
        ("Workflow", f"{run.workflow_id} ({run.workflow_name})"),
        ("Status", run.status.value),
        ("Created", format_time(run.created_at)),
        ("Started", format_time(run.started_at)),
        ("Completed", format_time(run.completed_at)),
        ("Last execution", _last_execution(run)),
        ("Run age", format_duration(run.duration_ms)),
        ("Input", format_value(run.input, width=100)),
        ("Output", format_value(run.output, width=100) if run.output is not None else "-"),
    ]
    if temporal_workflow_id:
        rows.append(("Temporal", temporal_workflow_id))
    if ui_url:
        rows.append(("Temporal UI", ui_url))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def run_document(
    run: RunRecord, stages: Sequence[StageRecord], *, temporal_workflow_id: str | None
) -> dict[str, Any]:
    """The ``--json`` form of ``run show``: the run's fields, its stages, its Temporal id."""
    document: dict[str, Any] = dump(run)
    document["temporal_workflow_id"] = temporal_workflow_id
    document["stages"] = dump(list(stages))
    return document
