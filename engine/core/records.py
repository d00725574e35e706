"""Read models returned by the kernel, and the engine's status vocabulary.

The records are runs, stages, logs, outbox events and annotations. Every status a run, a stage
or a step of the run workflow can have is declared here, once, with what it means.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = [
    "Annotation",
    "LogLevel",
    "LogRecord",
    "OutboxEventRecord",
    "RunEnd",
    "RunRecord",
    "RunStartStatus",
    "RunStatus",
    "SettledRunStatus",
    "StageOutcomeStatus",
    "StageRecord",
    "StageStartAction",
    "StageStatus",
    "TERMINAL_STATUSES",
]


class RunStatus(StrEnum):
    """Lifecycle of a run (one execution of a workflow for one input).

    PENDING → RUNNING when its Temporal workflow starts; RUNNING → COMPLETED or FAILED when the
    last group settles; PENDING/RUNNING → CANCELLED by ``RunCancel`` (final); COMPLETED/FAILED →
    RUNNING by ``RunRerunFrom``. A run with a suspended stage stays RUNNING, so SUSPENDED and
    SKIPPED are never written for runs; they exist because the enum is shared with stages.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"


StageStatus = RunStatus
"""Lifecycle of a stage record (same values as :class:`RunStatus`).

PENDING when its group opens; RUNNING while ``execute`` runs; then COMPLETED, FAILED or
SUSPENDED. A SUSPENDED stage is polled until COMPLETED or FAILED. Any non-terminal stage becomes
CANCELLED when its run is cancelled. ``RunRerunFrom`` deletes records and recreates them PENDING.
"""

TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})

SettledRunStatus = Literal[RunStatus.COMPLETED, RunStatus.FAILED]
"""The statuses a run's workflow ends it with (CANCELLED comes from ``RunCancel``)."""


class RunEnd(StrEnum):
    """How an execution of the run workflow ended: its result (the run's status then).

    NOT_RUNNING: the side-store's run was not PENDING or RUNNING when the execution read its
    plan (it was cancelled, or an earlier execution ended it), so it did nothing.
    """

    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    NOT_RUNNING = "NOT_RUNNING"


class StageOutcomeStatus(StrEnum):
    """What one attempt of a stage activity came to, as the workflow receives it.

    Lowercase, unlike :class:`StageStatus`: the values are in recorded workflow histories.
    COMPLETED, FAILED and SUSPENDED become the stage record's status of that name;
    NOT_READY is a poll of a SUSPENDED stage that found its batch unfinished (it stays
    SUSPENDED); SKIPPED means the stage was not run because its run or record is no longer
    RUNNING (nothing to commit but logs).
    """

    COMPLETED = "completed"
    FAILED = "failed"
    SUSPENDED = "suspended"
    NOT_READY = "not_ready"
    SKIPPED = "skipped"


class RunStartStatus(StrEnum):
    """What reading a run's plan (and starting it, when PENDING) found.

    OK: the run is RUNNING and its plan follows; FAILED: the run was failed now (its
    workflow is not registered); NOT_RUNNING: the run is unknown or no longer PENDING or
    RUNNING, so there is nothing to run.
    """

    OK = "ok"
    FAILED = "failed"
    NOT_RUNNING = "not_running"


class StageStartAction(StrEnum):
    """What a stage activity does when it begins, from what the side-store holds.

    RUN: run the stage (its record is RUNNING); SETTLED: return the outcome an earlier delivery
    committed; SKIP: do neither, because the run or the record has moved on.
    """

    RUN = "run"
    SETTLED = "settled"
    SKIP = "skip"


class LogLevel(StrEnum):
    """Severity of a stage log line."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"


class _Record(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class RunRecord(_Record):
    """One run as stored in the side-store."""

    id: str
    workflow_id: str
    workflow_name: str
    status: RunStatus
    input: Any
    output: Any = None
    config: dict[str, Any]
    priority: int
    metadata: dict[str, Any] | None = None
    total_cost: float = 0.0
    total_tokens: int = 0
    created_at: datetime
    started_at: datetime | None = None
    """When the run first started; a rerun keeps it."""
    completed_at: datetime | None = None
    duration_ms: int | None = None
    """How long the run has existed: creation to completion, reruns included."""
    execution_started_at: datetime | None = None
    """When the last execution (the first, or the latest rerun) started."""
    execution_duration_ms: int | None = None
    """How long the last execution took: its start to the run's completion."""

    @model_validator(mode="after")
    def _first_execution(self) -> RunRecord:
        # The column is NULL until a rerun: the last execution is then the first one.
        if self.execution_started_at is None and self.started_at is not None:
            object.__setattr__(self, "execution_started_at", self.started_at)
        return self


class StageRecord(_Record):
    """One stage of one run (one row per run and stage id; reruns replace it)."""

    id: str
    workflow_run_id: str
    stage_id: str
    stage_name: str
    stage_number: int
    execution_group: int
    attempt: int
    status: RunStatus
    input_data: Any = None
    output_data: Any = None
    config: dict[str, Any] | None = None
    suspended_state: Any = None
    next_poll_at: datetime | None = None
    poll_interval_ms: int | None = None
    max_wait_until: datetime | None = None
    metrics: dict[str, Any] | None = None
    error_message: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    waiting_for: str | None = None
    """Approval stages: whom the stage waits for (``None``: anyone with the right)."""
    waiting_since: datetime | None = None
    """Approval stages: when the stage began waiting for a decision."""
    copied_from: str | None = None
    """Forked runs: the id of the source run's stage record this record was copied from."""


class LogRecord(_Record):
    """A log line written by a stage through ``ctx.log``."""

    id: str
    created_at: datetime
    workflow_run_id: str | None
    stage_id: str | None
    level: LogLevel
    message: str
    metadata: dict[str, Any] | None = None


class OutboxEventRecord(_Record):
    """An event written to the outbox in the same transaction as the change it reports."""

    id: str
    workflow_run_id: str
    sequence: int
    event_type: str
    payload: dict[str, Any]
    causation_id: str
    occurred_at: datetime
    published_at: datetime | None = None
    retry_count: int = 0
    dlq_at: datetime | None = None


class Annotation(_Record):
    """One stored (or, for legacy metadata, synthesized) provenance attribute."""

    id: str
    created_at: datetime
    workflow_run_id: str
    workflow_stage_record_id: str | None = None
    attempt: int = 0
    scope: str
    scope_id: str | None = None
    actor_kind: str | None = None
    actor_id: str | None = None
    actor_version: str | None = None
    on_behalf_of_kind: str | None = None
    """Whom the actor says it acted for: the actor an HTTP API caller named in its request,
    kept here because the writer (``actor_*``) is always the caller's token principal."""
    on_behalf_of_id: str | None = None
    on_behalf_of_version: str | None = None
    key: str
    value: Any
    payload: Any = None
    idempotency_key: str | None = None
    stage_record_ref: str | None = None
    """The stage record that produced the row (``workflow_stage_record_id``), kept after a
    rerun deleted that record and NULLed the link."""

    @model_validator(mode="after")
    def _stable_stage_reference(self) -> Annotation:
        if self.stage_record_ref is None and self.workflow_stage_record_id is not None:
            # Frozen record: set while validating, before anyone holds it.
            object.__setattr__(self, "stage_record_ref", self.workflow_stage_record_id)
        return self
