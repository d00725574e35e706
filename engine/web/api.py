"""The JSON API under ``/api``: runs, stages, logs, outbox events and annotations.

Every route declares the right it needs (:func:`~engine.web.auth.require`): reads ``read``,
run commands and annotation writes ``write``, ``approval.*`` annotations ``approve`` too.
Annotations written here carry the caller's principal as their actor; an actor named in the
body is kept as ``on_behalf_of``. Lists that grow with a run (logs, events, annotations) come
in pages (``limit``, ``cursor``). Errors answer with an :class:`~engine.web.state.ErrorBody`
naming the field at fault.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response, status
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from temporalio.service import RPCError

from engine.commands import (
    RunCancel,
    RunCancelResult,
    RunCreate,
    RunCreateResult,
    RunRerunFrom,
    RunRerunFromResult,
)
from engine.core.annotations import Actor, RunCreateAnnotation
from engine.core.key_values import parse_value
from engine.core.records import (
    Annotation,
    LogRecord,
    OutboxEventRecord,
    RunRecord,
    RunStatus,
    StageRecord,
)
from engine.errors import AnnotationError, EngineError, InvalidStateError
from engine.runtime.kernel import Kernel
from engine.store.annotation_rows import MAX_QUERY_LIMIT, decode_cursor
from engine.store.run_pages import (
    DEFAULT_PAGE_SIZE,
    InvalidPageError,
    list_events_page,
    list_logs_page,
)
from engine.store.run_queries import (
    MAX_PAGE_SIZE,
    InvalidCursorError,
    RunFilters,
    list_runs,
)
from engine.web.auth import Principal, Right, require
from engine.web.state import (
    ApiError,
    ErrorBody,
    WebState,
    as_utc,
    engine_error,
    get_state,
    parse_annotation_filters,
    validation_error,
)

__all__ = ["router"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": description}
    for code, description in [
        (401, "Missing or wrong bearer token (the server has tokens)"),
        (403, "The token's principal lacks the right (or writes are disabled: no tokens)"),
        (404, "No such run"),
        (422, "A request field is invalid (the body names it)"),
    ]
}
_WRITE_ERRORS = _ERRORS

router = APIRouter(prefix="/api", responses=_ERRORS)
State = Annotated[WebState, Depends(get_state)]
Writer = Annotated[Principal, Depends(require(Right.WRITE))]
"""The caller of a write: its principal is the actor of what it writes."""
_READ = [Depends(require(Right.READ))]
RunId = Annotated[str, Path(description="The run's id.", max_length=64)]
Limit = Query(ge=1, le=MAX_PAGE_SIZE, description=f"Page size (1 to {MAX_PAGE_SIZE}).")
PageLimit = Query(
    ge=1, le=MAX_PAGE_SIZE, description=f"Page size (1 to {MAX_PAGE_SIZE}; default 200)."
)
Cursor = Annotated[str | None, Query(description="next_cursor of the previous page.")]
APPROVAL_PREFIX = "approval."
"""Annotation keys that record approvals: writing them needs the ``approve`` right."""


# -- models -----------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunPageBody(BaseModel):
    """One page of runs, newest first."""

    items: list[RunRecord]
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page; ``null`` on the last page."""


class RunLinks(BaseModel):
    """Where else the run can be seen."""

    viewer: str
    """The run page of the viewer (path on this server)."""
    temporal_ui: str
    """The run's first workflow execution in the Temporal UI."""
    temporal_ui_executions: dict[str, str]
    """Every execution in the Temporal UI: ``"0"`` the first, ``"1"`` its first rerun, ..."""


class RunDetail(BaseModel):
    """One run with its stage records."""

    run: RunRecord
    stages: list[StageRecord]
    links: RunLinks


class StageList(BaseModel):
    """A run's stage records in execution order."""

    items: list[StageRecord]


class LogList(BaseModel):
    """A page of a run's log lines, oldest first."""

    items: list[LogRecord]
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page; ``null`` on the last page."""


class EventList(BaseModel):
    """A page of a run's outbox events in sequence order."""

    items: list[OutboxEventRecord]
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page; ``null`` on the last page."""


class AnnotationList(BaseModel):
    """Annotations, oldest first (a page when listed; the inserted rows when attached)."""

    items: list[Annotation]
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page; ``null`` on the last page."""


class AnnotationPageBody(BaseModel):
    """One page of the cross-run annotation query, oldest first."""

    items: list[Annotation]
    next_cursor: str | None = None


class AnnotationEnvelope(_Body):
    """Annotations given at run creation: one row per attribute, sharing actor and payload."""

    attributes: dict[str, Any] = Field(min_length=1)
    actor: Actor | None = None
    """Whom the caller acts for: stored as ``on_behalf_of``; the actor is the caller."""
    payload: Any = None
    idempotency_key: str | None = Field(default=None, max_length=255)
    emit_event: bool = False


class CreateRunBody(_Body):
    """``POST /api/runs``: create a run of a workflow the server's kernel registers."""

    workflow_id: str = Field(min_length=1, max_length=255)
    input: Any = None
    config: dict[str, Any] = Field(default_factory=dict)
    priority: int = 5
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    """Repeats with the same key return the same run."""
    attributes: dict[str, Any] | None = Field(default=None, min_length=1)
    """Annotations at creation, as ``POST /api/runs/{id}/annotations`` and the CLI's ``-a``
    take them: one row per attribute, by ``actor``."""
    actor: Actor | None = None
    """Who gave ``attributes``."""
    annotations: list[AnnotationEnvelope] = Field(default_factory=list)
    """More envelopes, each with its own actor and payload (the earlier shape; still taken)."""

    def envelopes(self, caller: Actor) -> list[RunCreateAnnotation]:
        """Every annotation envelope of the body, ``attributes`` first.

        All are by the ``caller``, on behalf of the body's actors.
        """
        given = [
            RunCreateAnnotation(
                attributes=envelope.attributes,
                actor=caller,
                on_behalf_of=envelope.actor,
                payload=envelope.payload,
                idempotency_key=envelope.idempotency_key,
                emit_event=envelope.emit_event,
            )
            for envelope in self.annotations
        ]
        if self.attributes:
            given.insert(
                0,
                RunCreateAnnotation(
                    attributes=self.attributes, actor=caller, on_behalf_of=self.actor
                ),
            )
        return given


class CancelRunBody(_Body):
    """``POST /api/runs/{run_id}/cancel``."""

    reason: str | None = Field(default=None, max_length=10_000)


class RerunBody(_Body):
    """``POST /api/runs/{run_id}/rerun``: rerun a COMPLETED or FAILED run from a stage on."""

    from_stage_id: str = Field(
        min_length=1,
        max_length=255,
        validation_alias=AliasChoices("from_stage", "from_stage_id"),
    )
    """The stage, as ``from_stage`` (the CLI's ``--from-stage``) or ``from_stage_id``."""
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)


class AttachBody(_Body):
    """``POST /api/runs/{run_id}/annotations``: all attributes are stored, or none."""

    attributes: dict[str, Any] = Field(min_length=1)
    actor: Actor | None = None
    """Whom the caller acts for: stored as ``on_behalf_of``; the actor is the caller."""
    scope: str = "run"
    scope_id: str | None = None
    workflow_stage_record_id: str | None = None
    attempt: int = Field(default=0, ge=0)
    payload: Any = None
    idempotency_key: str | None = None
    """A repeat with the same key (per attribute key) stores nothing and returns the rows
    stored the first time (status 200 instead of 201)."""
    emit_event: bool = False


# -- helpers ----------------------------------------------------------------------------------


def _kernel(state: WebState) -> Kernel:
    if state.kernel is None:
        raise ApiError(
            503,
            "no_temporal_client",
            "this server reads the side-store only: it was started without a Temporal client",
        )
    return state.kernel


def _temporal_unavailable(exc: RPCError) -> ApiError:
    return ApiError(503, "temporal_unavailable", f"Temporal server: {exc.message}")


async def _dispatch(kernel: Kernel, command: Any, *, annotations_field: str | None = None) -> Any:
    try:
        return await kernel.dispatch(command)
    except AnnotationError as exc:
        raise engine_error(exc, field=annotations_field) from None
    except EngineError as exc:
        raise engine_error(exc) from None
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
    except RPCError as exc:
        raise _temporal_unavailable(exc) from None


def _check_approval_right(
    principal: Principal, attributes: dict[str, Any], *, field: str = "attributes"
) -> None:
    """``approval.*`` keys record who approved: only principals with ``approve`` write them."""
    keys = [key for key in attributes if isinstance(key, str) and key.startswith(APPROVAL_PREFIX)]
    if keys and not principal.can(Right.APPROVE):
        raise ApiError(
            403,
            "forbidden",
            f"the token of {principal.name!r} lacks the 'approve' right needed to write "
            f"{keys[0]!r}",
            field=field,
        )


def _page_error(exc: InvalidPageError) -> ApiError:
    return ApiError(422, "invalid_request", str(exc), field=exc.field)


async def _existing(state: WebState, run_id: str) -> RunRecord:
    try:
        return await state.store.get_run(run_id)
    except EngineError as exc:
        raise engine_error(exc) from None


# -- runs -------------------------------------------------------------------------------------


@router.get(
    "/runs", response_model=RunPageBody, dependencies=_READ, summary="List runs, newest first"
)
async def get_runs(
    state: State,
    workflow_id: Annotated[str | None, Query(description="Only runs of this workflow.")] = None,
    run_status: Annotated[
        list[RunStatus] | None,
        Query(alias="status", description="Only runs in any of these statuses (repeatable)."),
    ] = None,
    created_after: Annotated[
        datetime | None, Query(description="Created at or after (ISO 8601; no zone: UTC).")
    ] = None,
    created_before: Annotated[
        datetime | None, Query(description="Created before (ISO 8601; no zone: UTC).")
    ] = None,
    annotation: Annotated[
        list[str] | None,
        Query(
            description="key=value: only runs carrying this annotation (repeatable, all must "
            'hold). The value is JSON when it parses (true, 4, "4"), else text.'
        ),
    ] = None,
    limit: Annotated[int, Limit] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> RunPageBody:
    """Runs matching every given filter, newest first, one page at a time."""
    filters = RunFilters(
        workflow_id=workflow_id,
        statuses=tuple(run_status or ()),
        created_after=as_utc(created_after),
        created_before=as_utc(created_before),
        annotations=parse_annotation_filters(annotation or (), field="annotation"),
    )
    try:
        page = await list_runs(state.store, filters, limit=limit, cursor=cursor)
    except InvalidCursorError as exc:
        raise ApiError(422, "invalid_request", str(exc), field="cursor") from None
    return RunPageBody(items=page.items, next_cursor=page.next_cursor)


@router.post(
    "/runs",
    status_code=status.HTTP_201_CREATED,
    response_model=RunCreateResult,
    response_model_by_alias=False,
    responses={
        **_WRITE_ERRORS,
        409: {"model": ErrorBody, "description": "Idempotency key used for another request"},
        503: {
            "model": ErrorBody,
            "description": "Temporal unavailable (a stored run not started: its id is in "
            "workflow_run_id)",
        },
    },
    summary="Create a run",
)
async def create_run(state: State, principal: Writer, body: CreateRunBody) -> RunCreateResult:
    """Create a run and start its Temporal workflow (``RunCreate`` through ``kernel.dispatch``).

    Everything is validated (workflow, input, config, annotations) before anything is written.
    The annotations' actor is the caller's principal (a body ``actor``: ``on_behalf_of``).
    """
    for index, envelope in enumerate(body.annotations):
        _check_approval_right(principal, envelope.attributes, field=f"annotations.{index}")
    if body.attributes:
        _check_approval_right(principal, body.attributes, field="attributes")
    kernel = _kernel(state)
    command = RunCreate(
        workflow_id=body.workflow_id,
        input=body.input,
        config=body.config,
        priority=body.priority,
        idempotency_key=body.idempotency_key,
        annotations=body.envelopes(principal.actor),
    )
    result: RunCreateResult = await _dispatch(kernel, command, annotations_field="annotations")
    return result


@router.get(
    "/runs/{run_id}",
    response_model=RunDetail,
    dependencies=_READ,
    summary="One run with its stages",
)
async def get_run(state: State, run_id: RunId) -> RunDetail:
    """The run, its stage records in execution order, and links to the viewer and Temporal."""
    run = await _existing(state, run_id)
    stages = await state.store.list_stages(run_id)
    last = max((stage.attempt for stage in stages), default=0)
    return RunDetail(
        run=run,
        stages=stages,
        links=RunLinks(
            viewer=f"/runs/{run_id}",
            temporal_ui=state.temporal_url(run_id),
            temporal_ui_executions={
                str(attempt): state.temporal_url(run_id, attempt) for attempt in range(last + 1)
            },
        ),
    )


@router.get(
    "/runs/{run_id}/stages", response_model=StageList, dependencies=_READ, summary="A run's stages"
)
async def get_stages(state: State, run_id: RunId) -> StageList:
    """The run's stage records in execution order."""
    try:
        return StageList(items=await state.store.list_stages(run_id))
    except EngineError as exc:
        raise engine_error(exc) from None


@router.get(
    "/runs/{run_id}/logs", response_model=LogList, dependencies=_READ, summary="A run's logs"
)
async def get_logs(
    state: State,
    run_id: RunId,
    limit: Annotated[int, PageLimit] = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> LogList:
    """The run's log lines (``ctx.log``), oldest first, one page at a time."""
    try:
        page = await list_logs_page(state.store, run_id, limit=limit, cursor=cursor)
    except InvalidPageError as exc:
        raise _page_error(exc) from None
    except EngineError as exc:
        raise engine_error(exc) from None
    return LogList(items=page.items, next_cursor=page.next_cursor)


@router.get(
    "/runs/{run_id}/events",
    response_model=EventList,
    dependencies=_READ,
    summary="A run's outbox events",
)
async def get_events(
    state: State,
    run_id: RunId,
    limit: Annotated[int, PageLimit] = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> EventList:
    """The run's outbox events in sequence order, published or not, one page at a time."""
    try:
        page = await list_events_page(state.store, run_id, limit=limit, cursor=cursor)
    except InvalidPageError as exc:
        raise _page_error(exc) from None
    except EngineError as exc:
        raise engine_error(exc) from None
    return EventList(items=page.items, next_cursor=page.next_cursor)


@router.post(
    "/runs/{run_id}/cancel",
    response_model=RunCancelResult,
    response_model_by_alias=False,
    dependencies=[Depends(require(Right.WRITE))],
    responses={**_WRITE_ERRORS, 409: {"model": ErrorBody, "description": "Run already over"}},
    summary="Cancel a run",
)
async def cancel_run(
    state: State, run_id: RunId, body: CancelRunBody | None = None
) -> RunCancelResult:
    """Cancel a PENDING or RUNNING run.

    A run already terminal answers 409 ``invalid_state`` saying its status (as ``wfe run cancel``
    exits 1).
    """
    kernel = _kernel(state)
    await _existing(state, run_id)
    command = RunCancel(workflow_run_id=run_id, reason=body.reason if body else None)
    result: RunCancelResult = await _dispatch(kernel, command)
    if not result.cancelled:
        raise ApiError(409, "invalid_state", result.reason or f"run {run_id} is not active")
    return result


@router.post(
    "/runs/{run_id}/rerun",
    response_model=RunRerunFromResult,
    response_model_by_alias=False,
    dependencies=[Depends(require(Right.WRITE))],
    responses={**_WRITE_ERRORS, 409: {"model": ErrorBody, "description": "Run not rerunnable"}},
    summary="Rerun a run from a stage",
)
async def rerun_run(state: State, run_id: RunId, body: RerunBody) -> RunRerunFromResult:
    """Rerun a COMPLETED or FAILED run from ``from_stage_id``'s group on (a new attempt)."""
    kernel = _kernel(state)
    await _existing(state, run_id)
    command = RunRerunFrom(
        workflow_run_id=run_id,
        from_stage_id=body.from_stage_id,
        idempotency_key=body.idempotency_key,
    )
    result: RunRerunFromResult = await _dispatch(kernel, command)
    return result


# -- annotations ------------------------------------------------------------------------------


@router.get(
    "/runs/{run_id}/annotations",
    response_model=AnnotationList,
    dependencies=_READ,
    summary="A run's annotations",
)
async def get_annotations(
    state: State,
    run_id: RunId,
    key: Annotated[str | None, Query(description="Exactly this key.")] = None,
    key_prefix: Annotated[
        str | None, Query(description="Keys starting with this (literal, case-sensitive).")
    ] = None,
    scope: Annotated[str | None, Query(description='"run" or "stage".')] = None,
    scope_id: Annotated[str | None, Query(description="E.g. the stage id.")] = None,
    actor_id: Annotated[str | None, Query()] = None,
    actor_kind: Annotated[str | None, Query()] = None,
    attempt: Annotated[int | None, Query(ge=0, description="Rerun generation.")] = None,
    since: Annotated[datetime | None, Query(description="Created at or after.")] = None,
    until: Annotated[datetime | None, Query(description="Created at or before.")] = None,
    limit: Annotated[int, PageLimit] = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> AnnotationList:
    """The run's annotations matching every given filter, oldest first, one page at a time."""
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except AnnotationError:
            raise ApiError(422, "invalid_request", "invalid cursor", field="cursor") from None
    try:
        page = await state.annotations.page(
            run_id,
            key=key,
            key_prefix=key_prefix,
            scope=scope,
            scope_id=scope_id,
            actor_id=actor_id,
            actor_kind=actor_kind,
            attempt=attempt,
            since=as_utc(since),
            until=as_utc(until),
            limit=limit,
            cursor=cursor,
        )
    except EngineError as exc:
        raise engine_error(exc) from None
    return AnnotationList(items=page.items, next_cursor=page.next_cursor)


@router.post(
    "/runs/{run_id}/annotations",
    status_code=status.HTTP_201_CREATED,
    response_model=AnnotationList,
    responses=_WRITE_ERRORS,
    summary="Attach annotations to a run",
)
async def attach_annotations(
    state: State, principal: Writer, run_id: RunId, body: AttachBody, response: Response
) -> AnnotationList:
    """Attach annotations to a run of any status in one transaction (``annotations.attach``).

    The rows' actor is the caller's principal; an ``actor`` in the body is stored as
    ``on_behalf_of``. ``approval.*`` keys need the ``approve`` right. Returns the rows
    inserted (201); a repeat with the same ``idempotency_key`` inserts nothing and returns the
    rows the first request stored (200).
    """
    _check_approval_right(principal, body.attributes)
    await _existing(state, run_id)
    if body.workflow_stage_record_id is not None:
        records = {stage.id for stage in await state.store.list_stages(run_id)}
        if body.workflow_stage_record_id not in records:
            raise ApiError(
                422,
                "invalid_request",
                f"run {run_id} has no stage record {body.workflow_stage_record_id!r}",
                field="workflow_stage_record_id",
            )
    try:
        inserted = await state.annotations.attach(
            run_id,
            attributes=body.attributes,
            actor=principal.actor,
            on_behalf_of=body.actor,
            scope=body.scope,
            scope_id=body.scope_id,
            workflow_stage_record_id=body.workflow_stage_record_id,
            attempt=body.attempt,
            payload=body.payload,
            idempotency_key=body.idempotency_key,
            emit_event=body.emit_event,
        )
    except InvalidStateError as exc:  # the stage record went away (a rerun) meanwhile
        raise engine_error(exc, field="workflow_stage_record_id") from None
    except EngineError as exc:
        raise engine_error(exc) from None
    if body.idempotency_key is not None and len(inserted) < len(body.attributes):
        stored = await _stored_rows(state, run_id, body.idempotency_key, list(body.attributes))
        if not inserted:
            response.status_code = status.HTTP_200_OK
        return AnnotationList(items=sorted([*inserted, *stored], key=lambda row: row.key))
    return AnnotationList(items=inserted)


async def _stored_rows(
    state: WebState, run_id: str, idempotency_key: str, keys: list[str]
) -> list[Any]:
    """The rows an earlier attach with ``idempotency_key`` stored under ``keys``."""
    rows = []
    for key in keys:
        found = await state.annotations.list(run_id, key=key, limit=MAX_PAGE_SIZE)
        rows += [row for row in found if row.idempotency_key == idempotency_key]
    return rows


@router.get(
    "/annotations",
    response_model=AnnotationPageBody,
    dependencies=_READ,
    summary="Query annotations across runs",
)
async def query_annotations(
    state: State,
    key: Annotated[str | None, Query(description="Exactly this key.")] = None,
    value: Annotated[
        str | None,
        Query(description='With key: this value (JSON when it parses: true, 4, "4"; else text).'),
    ] = None,
    key_prefix: Annotated[str | None, Query(description="Keys starting with this.")] = None,
    workflow_id: Annotated[str | None, Query(description="Only runs of this workflow.")] = None,
    actor_id: Annotated[str | None, Query()] = None,
    since: Annotated[datetime | None, Query(description="Created at or after.")] = None,
    until: Annotated[datetime | None, Query(description="Created at or before.")] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_QUERY_LIMIT, description="Page size (1 to 1000).")
    ] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> AnnotationPageBody:
    """Annotations across runs, oldest first (``annotations.query``)."""
    typed: Any = None
    if value is not None:
        typed = parse_value(value)
        if isinstance(typed, dict | list) or typed is None:
            raise ApiError(
                422,
                "invalid_request",
                f"value compares as a string, number or boolean, got {value!r}",
                field="value",
            )
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except AnnotationError:
            raise ApiError(422, "invalid_request", "invalid cursor", field="cursor") from None
    try:
        page = await state.annotations.query(
            key=key,
            value=typed,
            key_prefix=key_prefix,
            workflow_id=workflow_id,
            actor_id=actor_id,
            since=as_utc(since),
            until=as_utc(until),
            limit=limit,
            cursor=cursor,
        )
    except EngineError as exc:
        raise engine_error(exc, field="value") from None
    return AnnotationPageBody(items=page.items, next_cursor=page.next_cursor)
