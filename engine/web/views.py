"""The viewer: server-rendered HTML pages of runs and their provenance (no front-end build).

``/`` lists runs (filters: workflow, status, annotation ``key=value``); ``/runs/{id}`` shows
one run: a header linking to its Temporal workflow, a timeline of its stages, and its
annotations grouped by stage and attempt or in one chronological timeline, filterable by key
prefix and actor. Every stored
value is escaped by Jinja2's autoescaping, and the pages carry a Content-Security-Policy that
allows no script at all, so a stored ``<script>`` renders as inert text.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from engine.core.presentation import format_actor, format_duration, format_time, value_text
from engine.core.records import Annotation, RunRecord, RunStatus, StageRecord
from engine.errors import AnnotationError, RunNotFoundError
from engine.store.run_pages import InvalidPageError, list_logs_page
from engine.store.run_queries import (
    InvalidCursorError,
    RunFilters,
    list_runs,
    list_workflow_ids,
)
from engine.web.auth import Right, require
from engine.web.chronology import chronology
from engine.web.state import ApiError, WebState, get_state, parse_annotation_filters

__all__ = ["CONTENT_SECURITY_POLICY", "html_error", "router"]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
"""No scripts at all: the pages work without them, and injected markup cannot run."""

RUNS_PER_PAGE = 50
ANNOTATIONS_SHOWN = 1000
"""Annotations read to count them and list their actors (the filter's choices)."""
ANNOTATIONS_PER_PAGE = 200
"""Annotations shown per page of the run page's annotation section."""
LOGS_PER_PAGE = 200
"""Log lines shown per page of the run page's log section."""
LONG_VALUE = 160
"""Values longer than this (as text) are shown folded, expandable."""
MISSING = "—"
"""What a page shows for a time or a duration that is not known (yet)."""

# Every page shows run data: all need the read right (see engine.web.auth).
router = APIRouter(include_in_schema=False, dependencies=[Depends(require(Right.READ))])
State = Annotated[WebState, Depends(get_state)]

_templates = Environment(
    loader=PackageLoader("engine.web", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


# -- formatting -------------------------------------------------------------------------------


def to_json(value: Any, *, pretty: bool = False) -> str:
    """A value as JSON text (pretty: indented), for display."""
    if pretty:
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return json.dumps(value, ensure_ascii=False, default=str)


_templates.filters.update(
    time=functools.partial(format_time, missing=MISSING),
    duration=functools.partial(format_duration, missing=MISSING),
    json=to_json,
    value_text=value_text,
)
_templates.globals.update(
    LONG_VALUE=LONG_VALUE, actor_label=functools.partial(format_actor, missing="")
)


def render(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page, with headers that forbid scripts, framing and MIME sniffing."""
    body = _templates.get_template(template).render(**context)
    return HTMLResponse(
        body,
        status_code=status_code,
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def html_error(state: WebState, status_code: int, title: str, message: str) -> HTMLResponse:
    """An error page (unknown run, bad filter)."""
    return render(
        "error.html", status_code, state=state, title=title, message=message, page="error"
    )


def run_path(run_id: str) -> str:
    """The viewer path of a run."""
    return f"/runs/{quote(run_id, safe='')}"


# -- runs list --------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def runs_page(
    state: State,
    workflow: str = "",
    status: str = "",
    annotation: Annotated[list[str] | None, Query()] = None,
    cursor: str | None = None,
) -> HTMLResponse:
    """The runs list, newest first, with filters."""
    annotations = [item for item in (annotation or []) if item.strip()]
    error = None
    statuses: tuple[RunStatus, ...] = ()
    if status:
        try:
            statuses = (RunStatus(status),)
        except ValueError:
            error = f"unknown status {status!r}"
    pairs: dict[str, Any] = {}
    if error is None:
        try:
            pairs = parse_annotation_filters(annotations, field="annotation")
        except ApiError as exc:
            error = exc.body.message
    runs: list[RunRecord] = []
    next_url = None
    if error is None:
        filters = RunFilters(workflow_id=workflow or None, statuses=statuses, annotations=pairs)
        try:
            page = await list_runs(state.store, filters, limit=RUNS_PER_PAGE, cursor=cursor)
        except InvalidCursorError as exc:
            error = str(exc)
        else:
            runs = page.items
            if page.next_cursor is not None:
                query = _query(
                    workflow=workflow,
                    status=status,
                    annotation=annotations,
                    cursor=page.next_cursor,
                )
                next_url = f"/?{query}"
    return render(
        "runs.html",
        400 if error else 200,
        state=state,
        page="runs",
        runs=[
            {
                "run": run,
                "path": run_path(run.id),
                "temporal_url": state.temporal_url(run.id),
            }
            for run in runs
        ],
        workflow_ids=await list_workflow_ids(state.store),
        statuses=[s.value for s in RunStatus],
        filters={"workflow": workflow, "status": status, "annotation": ", ".join(annotations)},
        annotation_values=annotations,
        error=error,
        next_url=next_url,
        first_page_url=(
            f"/?{_query(workflow=workflow, status=status, annotation=annotations)}"
            if cursor
            else None
        ),
    )


def _query(**params: Any) -> str:
    return urlencode({k: v for k, v in params.items() if v}, doseq=True)


# -- one run ----------------------------------------------------------------------------------


@dataclass
class TimelineRow:
    """One stage in the timeline, with its bar's position (percent of the run's span)."""

    stage: StageRecord
    left: float
    width: float
    running: bool
    waited_ms: int | None = None
    """Wall time from start to end when it exceeds the recorded duration by more than half a
    second (an async-batch stage's suspension), else ``None``."""


@dataclass
class AnnotationGroup:
    """Annotations of one scope (the run, or one stage) and one attempt."""

    title: str
    scope: str
    scope_id: str | None
    attempt: int
    annotations: list[Annotation] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        """An id for the group's section (a fragment link)."""
        safe = "".join(c if c.isalnum() else "-" for c in (self.scope_id or self.scope))
        return f"{self.scope}-{safe}-attempt-{self.attempt}"


def timeline(stages: Sequence[StageRecord], now: datetime) -> tuple[list[TimelineRow], str]:
    """Timeline rows and the span they cover (``"2.4 s"``)."""
    starts = [s.started_at for s in stages if s.started_at is not None]
    if not starts:
        return [TimelineRow(stage=s, left=0.0, width=0.0, running=False) for s in stages], "—"
    begin = min(starts)
    ends = [s.completed_at or now for s in stages if s.started_at is not None]
    end = max(ends)
    span = max((end - begin).total_seconds(), 0.001)
    rows = []
    for stage in stages:
        if stage.started_at is None:
            rows.append(TimelineRow(stage=stage, left=0.0, width=0.0, running=False))
            continue
        stop = stage.completed_at or now
        left = (stage.started_at - begin).total_seconds() / span * 100
        width = max((stop - stage.started_at).total_seconds() / span * 100, 0.6)
        wall_ms = int((stop - stage.started_at).total_seconds() * 1000)
        waited = wall_ms - (stage.duration_ms or 0) > 500
        rows.append(
            TimelineRow(
                stage=stage,
                left=round(min(left, 99.4), 2),
                width=round(min(width, 100 - min(left, 99.4)), 2),
                running=stage.completed_at is None,
                waited_ms=wall_ms if waited else None,
            )
        )
    return rows, format_duration(span * 1000, missing=MISSING)


def group_annotations(
    annotations: Iterable[Annotation], stages: Sequence[StageRecord]
) -> list[AnnotationGroup]:
    """Group by (scope, scope id, attempt): the run first, then stages in timeline order."""
    order = {stage.stage_id: index for index, stage in enumerate(stages)}
    names = {stage.stage_id: stage.stage_name for stage in stages}
    groups: dict[tuple[str, str | None, int], AnnotationGroup] = {}
    for annotation in annotations:
        where = (annotation.scope, annotation.scope_id, annotation.attempt)
        if where not in groups:
            if annotation.scope == "run":
                title = "Run"
            elif annotation.scope == "stage" and annotation.scope_id is not None:
                name = names.get(annotation.scope_id, annotation.scope_id)
                title = f"Stage {name}"
                if name != annotation.scope_id:
                    title += f" ({annotation.scope_id})"
            else:
                title = f"{annotation.scope} {annotation.scope_id or ''}".strip()
            groups[where] = AnnotationGroup(
                title=title,
                scope=annotation.scope,
                scope_id=annotation.scope_id,
                attempt=annotation.attempt,
            )
        groups[where].annotations.append(annotation)

    def rank(group: AnnotationGroup) -> tuple[int, int, int, str]:
        if group.scope == "run":
            return (0, 0, group.attempt, "")
        if group.scope == "stage" and group.scope_id in order:
            return (1, order[group.scope_id], group.attempt, "")
        return (2, 0, group.attempt, f"{group.scope}/{group.scope_id}")

    return sorted(groups.values(), key=rank)


def actors_of(annotations: Iterable[Annotation]) -> list[tuple[str, str]]:
    """(actor id, label) of every actor in the annotations, sorted by label."""
    seen: dict[str, str] = {}
    for annotation in annotations:
        if annotation.actor_id is not None and annotation.actor_id not in seen:
            seen[annotation.actor_id] = f"{annotation.actor_kind or '?'}:{annotation.actor_id}"
    return sorted(seen.items(), key=lambda pair: pair[1])


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run_page(
    state: State,
    run_id: str,
    key_prefix: str = "",
    actor: str = "",
    annotations_cursor: str | None = None,
    logs_cursor: str | None = None,
    decided: str = "",
    view: str = "",
) -> HTMLResponse:
    """One run: header, stage timeline, annotations by stage and attempt, logs.

    With ``view=time`` the annotations are in one chronological timeline with the stages' starts
    and ends; the last two (annotations and logs) come a page at a time.
    """
    try:
        run = await state.store.get_run(run_id)
    except RunNotFoundError:
        return html_error(state, 404, "Run not found", f"There is no run {run_id!r}.")
    stages = await state.store.list_stages(run_id)
    every = await state.annotations.list(run_id, limit=ANNOTATIONS_SHOWN)
    filtered = key_prefix != "" or actor != ""
    try:
        shown_page = await state.annotations.page(
            run_id,
            key_prefix=key_prefix or None,
            actor_id=actor or None,
            limit=ANNOTATIONS_PER_PAGE,
            cursor=annotations_cursor or None,
        )
        logs_page = await list_logs_page(
            state.store, run_id, limit=LOGS_PER_PAGE, cursor=logs_cursor or None
        )
    except (AnnotationError, InvalidPageError):
        return html_error(state, 400, "Bad request", "This page link is invalid or altered.")
    shown = shown_page.items
    logs = logs_page.items
    here = {"key_prefix": key_prefix, "actor": actor, "view": view}
    next_annotations_url = (
        f"{run_path(run.id)}?{_query(**here, annotations_cursor=shown_page.next_cursor)}"
        "#annotations"
        if shown_page.next_cursor
        else None
    )
    next_logs_url = (
        f"{run_path(run.id)}?{_query(**here, logs_cursor=logs_page.next_cursor)}#logs"
        if logs_page.next_cursor
        else None
    )
    rows, span = timeline(stages, datetime.now(UTC))
    last_attempt = max((stage.attempt for stage in stages), default=0)
    executions = [
        (
            "first execution" if attempt == 0 else f"rerun {attempt}",
            state.temporal_url(run_id, attempt),
        )
        for attempt in range(last_attempt + 1)
    ]
    return render(
        "run.html",
        state=state,
        page="run",
        run=run,
        run_path=run_path(run.id),
        api_path=f"/api/runs/{quote(run.id, safe='')}",
        temporal_url=state.temporal_url(run.id),
        executions=executions,
        timeline=rows,
        span=span,
        groups=group_annotations(shown, stages),
        view="time" if view == "time" else "groups",
        chronology=chronology(run, stages, shown) if view == "time" else [],
        shown_count=len(shown),
        total_count=len(every),
        truncated=len(every) >= ANNOTATIONS_SHOWN,
        next_annotations_url=next_annotations_url,
        next_logs_url=next_logs_url,
        paged=annotations_cursor is not None or logs_cursor is not None,
        actors=actors_of(every),
        filters={"key_prefix": key_prefix, "actor": actor},
        filtered=filtered,
        logs=logs,
        stage_counts=counts_by_status(stages),
        lineage=await lineage(state, run_id, every),
        decided=decided,
    )


async def lineage(state: WebState, run_id: str, annotations: Iterable[Annotation]) -> Any:
    """Where the run was forked from (and why), and the runs forked from it."""
    revision = {
        a.key: a.value
        for a in annotations
        if a.scope == "run" and a.key in ("revision.previous_run_id", "revision.reason")
    }
    previous = revision.get("revision.previous_run_id")
    forks = await state.store.forks_of(run_id)
    return {
        "source": (previous, run_path(previous)) if isinstance(previous, str) else None,
        "reason": revision.get("revision.reason"),
        "forks": [(fork, run_path(fork)) for fork in forks],
    }


def counts_by_status(stages: Iterable[StageRecord]) -> Mapping[str, int]:
    """How many stages are in each status (for the run header)."""
    counts: dict[str, int] = {}
    for stage in stages:
        counts[stage.status.value] = counts.get(stage.status.value, 0) + 1
    return counts
