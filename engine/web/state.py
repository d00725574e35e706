"""What the API and viewer routes share: app state, JSON errors, parameter parsing."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi import Request
from pydantic import BaseModel

from engine.core.annotations import AnnotationLimits
from engine.core.key_values import parse_key_value
from engine.core.settings import Settings
from engine.errors import (
    AnnotationError,
    EngineError,
    IdempotencyConflictError,
    IdempotencyInProgressError,
    InvalidConfigError,
    InvalidInputError,
    InvalidStateError,
    RunNotFoundError,
    RunStartError,
    StageNotFoundError,
    WorkflowNotFoundError,
)
from engine.runtime.kernel import Kernel, temporal_workflow_id
from engine.runtime.kernel_annotations import KernelAnnotations
from engine.store import SqlStore
from engine.web.auth import Right, require

__all__ = [
    "ApiError",
    "ErrorBody",
    "WebState",
    "as_utc",
    "build_state",
    "engine_error",
    "field_name",
    "get_state",
    "parse_annotation_filters",
    "require_token",
    "validation_error",
]


@dataclass(frozen=True)
class WebState:
    """Everything a request handler needs, built once by ``create_app``."""

    store: SqlStore
    annotations: KernelAnnotations
    settings: Settings
    namespace: str
    """Temporal namespace of the runs (the kernel client's, else the settings')."""
    kernel: Kernel | None = None
    """``None`` when the app serves a bare store: then create, cancel and rerun answer 503."""

    def temporal_url(self, run_id: str, attempt: int = 0) -> str:
        """Link to the Temporal UI page of the run's workflow (``attempt``: its n-th rerun)."""
        base = self.settings.temporal_ui_url.rstrip("/")
        namespace = quote(self.namespace, safe="")
        workflow = quote(temporal_workflow_id(run_id, attempt), safe="")
        return f"{base}/namespaces/{namespace}/workflows/{workflow}"

    def temporal_list_url(self) -> str:
        """Link to the namespace's workflow list in the Temporal UI."""
        base = self.settings.temporal_ui_url.rstrip("/")
        return f"{base}/namespaces/{quote(self.namespace, safe='')}/workflows"


def build_state(source: Kernel | SqlStore, settings: Settings) -> WebState:
    """The state of an app serving a kernel (everything) or a bare store (no run commands)."""
    if isinstance(source, Kernel):
        return WebState(
            store=source.store,
            annotations=source.annotations,
            settings=settings,
            namespace=source.client.namespace,
            kernel=source,
        )
    return WebState(
        store=source,
        annotations=KernelAnnotations(source, AnnotationLimits()),
        settings=settings,
        namespace=settings.namespace,
    )


def get_state(request: Request) -> WebState:
    """The app's :class:`WebState` (a FastAPI dependency)."""
    state: WebState = request.app.state.wfe
    return state


# -- errors -----------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """The JSON body of every error answer."""

    error: str
    """A stable code, e.g. ``invalid_request``, ``run_not_found``, ``unauthorized``."""
    message: str
    field: str | None = None
    """The request field at fault (``limit``, ``attributes``, ``annotations.0.actor.id``)."""
    details: list[dict[str, Any]] | None = None
    """Every problem when there are several (``field``, ``message``)."""
    workflow_run_id: str | None = None
    """The run concerned, when the answer must name it: the run holding a conflicting
    idempotency key, or a stored run whose Temporal start failed (retry it by its id)."""


class ApiError(Exception):
    """An error answered as ``status`` with an :class:`ErrorBody`."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        field: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        workflow_run_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(
            error=error,
            message=message,
            field=field,
            details=details,
            workflow_run_id=workflow_run_id,
        )
        self.headers = dict(headers) if headers is not None else None


_ENGINE_ERRORS: list[tuple[type[EngineError], int, str, str | None]] = [
    (RunNotFoundError, 404, "run_not_found", "run_id"),
    (WorkflowNotFoundError, 422, "workflow_not_found", "workflow_id"),
    (StageNotFoundError, 422, "stage_not_found", "from_stage_id"),
    (InvalidInputError, 422, "invalid_input", "input"),
    (InvalidConfigError, 422, "invalid_config", "config"),
    (AnnotationError, 422, "invalid_annotation", "attributes"),
    (InvalidStateError, 409, "invalid_state", None),
    (IdempotencyInProgressError, 409, "idempotency_in_progress", "idempotency_key"),
    (IdempotencyConflictError, 409, "idempotency_conflict", "idempotency_key"),
    (RunStartError, 503, "run_not_started", None),
]
_NAMING_THE_RUN = (IdempotencyConflictError, RunStartError)

_ANNOTATION_FIELD = re.compile(
    r"^(?:annotation )?(scope_id|scope|payload|idempotency_key|actor\.(?:kind|id|version))\b"
)


def engine_error(exc: EngineError, *, field: str | None = None) -> ApiError:
    """The answer to an engine error; ``field`` overrides the field it is reported on."""
    for kind, status, code, default_field in _ENGINE_ERRORS:
        if isinstance(exc, kind):
            where = field or default_field
            if isinstance(exc, AnnotationError):
                named = _ANNOTATION_FIELD.match(exc.message)
                if named is not None and field is None:
                    where = named.group(1)
            run_id = exc.workflow_run_id if isinstance(exc, _NAMING_THE_RUN) else None
            return ApiError(status, code, exc.message, field=where, workflow_run_id=run_id)
    return ApiError(400, "engine_error", exc.message, field=field)


def field_name(location: Sequence[Any]) -> str:
    """The field a validation problem is about.

    ``("body", "annotations", 0, "actor")`` → ``annotations.0.actor``; ``("query", "limit")``
    → ``limit``.
    """
    parts = [str(part) for part in location]
    if len(parts) > 1 and parts[0] in ("query", "path", "header"):
        return parts[1]  # a repeated parameter's index (``status.0``) says nothing more
    if len(parts) > 1 and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_error(problems: Iterable[Mapping[str, Any]], *, prefix: str = "") -> ApiError:
    """The 422 answer to pydantic / FastAPI validation problems, naming each field."""
    details = []
    for problem in problems:
        name = field_name(problem.get("loc", ()))
        details.append({"field": f"{prefix}{name}" if prefix else name, "message": problem["msg"]})
    if not details:
        details = [{"field": prefix or "body", "message": "invalid request"}]
    first = details[0]
    message = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return ApiError(422, "invalid_request", message, field=str(first["field"]), details=details)


# -- auth -------------------------------------------------------------------------------------

require_token = require(Right.WRITE)
"""The write right (a FastAPI dependency returning the caller's principal); see
:mod:`engine.web.auth` for :func:`~engine.web.auth.require` and the other rights."""


# -- parameters -------------------------------------------------------------------------------


def as_utc(moment: datetime | None) -> datetime | None:
    """A query-string time; one without a zone is taken as UTC."""
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_annotation_filters(items: Iterable[str], *, field: str) -> dict[str, Any]:
    """``key=value`` filters as a dict of typed values.

    Raises:
        ApiError: 422 naming ``field`` for an item without ``=``, an empty key, or a value that
            is not a string, number or boolean.
    """
    pairs: dict[str, Any] = {}
    for item in items:
        try:
            key, value = parse_key_value(item)
        except ValueError:
            raise ApiError(
                422,
                "invalid_request",
                f"{field} must be key=value (e.g. decision.outcome=low), got {item!r}",
                field=field,
            ) from None
        if isinstance(value, dict | list) or value is None:
            raw = item.partition("=")[2]
            raise ApiError(
                422,
                "invalid_request",
                f"{field} {key!r}: values compare as a string, number or boolean, got {raw!r}",
                field=field,
            )
        pairs[key] = value
    return pairs
