"""The side-store's contract: the argument and result types of :class:`SqlStore`'s methods.

Plain frozen dataclasses with no SQL in them, so that callers (the kernel, the activities)
depend on these and on the facade, never on the row builders or the statements behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.core.annotations import AnnotationDraft
from engine.core.payloads import StageSpec
from engine.core.records import RunStartStatus, StageStartAction, StageStatus

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "ActiveRun",
    "AnnotationFilters",
    "CrossRunFilters",
    "NewRun",
    "NewStage",
    "Rerun",
    "RowContext",
    "StageStart",
    "StartedRun",
]

DEFAULT_LIST_LIMIT = 1000
"""Rows ``kernel.annotations.list`` returns when no limit is given."""


@dataclass(frozen=True)
class NewStage:
    """A stage record to open PENDING."""

    stage_id: str
    name: str
    number: int
    group: int
    config: dict[str, Any]

    @classmethod
    def of(cls, spec: StageSpec) -> NewStage:
        """The record to open for a stage spec."""
        return cls(spec.stage_id, spec.name, spec.number, spec.group, spec.config)


@dataclass(frozen=True)
class NewRun:
    """A validated ``RunCreate``, ready to write."""

    workflow_id: str
    workflow_name: str
    input: Any
    config: dict[str, Any]
    priority: int
    metadata: dict[str, Any] | None
    idempotency_key: str
    annotations: Sequence[tuple[list[AnnotationDraft], bool]] = field(default_factory=tuple)


@dataclass(frozen=True)
class StartedRun:
    """What ``start_run`` found."""

    status: RunStartStatus
    run_input: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0


@dataclass(frozen=True)
class Rerun:
    """What a rerun removed and the generation it starts."""

    deleted_stages: list[str]
    attempt: int
    repeated: bool = False
    """An earlier rerun with the same idempotency key did it: nothing was written now."""


@dataclass(frozen=True)
class ActiveRun:
    """A PENDING or RUNNING run as the recovery pass sees it."""

    run_id: str
    workflow_id: str
    temporal_id: str | None
    priority: int
    updated_at: datetime


@dataclass(frozen=True)
class StageStart:
    """What a stage activity finds when it begins.

    Run the stage, return its stored outcome (an earlier delivery committed it), or neither (its
    run or record moved on).
    """

    action: StageStartAction
    record_id: str | None = None
    status: StageStatus | None = None
    output: Any = None
    error: str | None = None


@dataclass(frozen=True)
class RowContext:
    """Where a batch of drafts lands: run, scope and (for stage rows) the stage record."""

    run_id: str
    scope: str
    scope_id: str | None = None
    stage_record_id: str | None = None
    attempt: int = 0


@dataclass(frozen=True)
class AnnotationFilters:
    """Filters of ``kernel.annotations.list``; all given ones must hold (AND)."""

    key: str | None = None
    key_prefix: str | None = None
    scope: str | None = None
    scope_id: str | None = None
    actor_id: str | None = None
    actor_kind: str | None = None
    attempt: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIST_LIMIT
    after: tuple[datetime, str] | None = None
    """Only rows after this ``(created_at, id)``: where the previous page ended."""


@dataclass(frozen=True)
class CrossRunFilters:
    """Filters of the cross-run query."""

    key: str | None = None
    value: Any = None
    key_prefix: str | None = None
    workflow_id: str | None = None
    actor_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
