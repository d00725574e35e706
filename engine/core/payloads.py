"""Pydantic models carried between the run workflow and its activities (one per call).

They live in the engine package because both sides of the wire (the side-store writes and the
workflow) depend on them; ``temporal_workflows.payloads`` re-exports them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from engine.core.ai_calls import AICall
from engine.core.annotations import AnnotationDraft
from engine.core.records import RunStartStatus, SettledRunStatus, StageOutcomeStatus
from engine.core.values import json_problem, locate_problem

__all__ = [
    "LEGACY_WORKFLOW_TYPE",
    "CarriedGroup",
    "CommitResult",
    "FinalizeRun",
    "LogDraft",
    "ParkedStage",
    "ProgressDraft",
    "ResumeRequest",
    "RetrySpec",
    "RunPlan",
    "RunWorkflowInput",
    "StageCommit",
    "StageOutcome",
    "StageSpec",
    "StageTask",
    "StartRun",
]


LEGACY_WORKFLOW_TYPE = "wfe.run"
"""The one Workflow Type of every run started before each engine workflow got its own
(``temporal_workflows.pipeline``); workers still run and replay it."""


class RetrySpec(BaseModel):
    """A stage's declared Temporal retry policy, in a form that crosses the wire."""

    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = 2.0
    maximum_interval: timedelta | None = None
    maximum_attempts: int = 0
    non_retryable_error_types: list[str] = Field(default_factory=list)


class StageSpec(BaseModel):
    """What the workflow needs to know of one stage to schedule it."""

    stage_id: str
    name: str
    number: int
    group: int
    kind: Literal["sync", "async_batch", "approval"]
    config: dict[str, Any] = Field(default_factory=dict)
    start_to_close_timeout: timedelta
    heartbeat_timeout: timedelta | None = None
    retry: RetrySpec | None = None


class RunWorkflowInput(BaseModel):
    """Input of the run workflow: which run, and where to start (1 unless rerun)."""

    run_id: str
    workflow_id: str
    start_group: int = 1
    search_attributes: bool = False
    """Whether the engine's custom search attributes are registered on the server."""
    outputs: dict[str, Any] | None = None
    """Outputs carried over by continue-as-new; ``None`` loads them from the side-store."""
    carried: CarriedGroup | None = None
    """The group in progress when the previous execution continued as new."""
    continue_as_new_after_events: int = 10_000
    """Continue as new once the history is this long (or the server suggests it)."""
    projected_keys: dict[str, str] = Field(default_factory=dict)
    """Annotation keys shown as Keyword search attributes, e.g. ``decision.outcome`` →
    ``DecisionOutcome``."""
    details: dict[str, str] = Field(default_factory=dict)
    """Latest decision annotations shown in the Temporal UI (carried over)."""
    plan: RunPlan | None = None
    """The plan, when the kernel knew it at creation: the first group's activities then
    start the run themselves, and no ``wfe.start_run`` local activity runs first."""


class ParkedStage(BaseModel):
    """A suspended stage handed to the next execution by continue-as-new."""

    stage_record_id: str | None
    state: Any = None
    next_poll_at: datetime
    max_wait: timedelta | None = None
    max_wait_until: datetime | None = None
    interval: timedelta
    polls: int = 0


class CarriedGroup(BaseModel):
    """The group in progress at continue-as-new: settled outcomes and parked stages."""

    settled: dict[str, StageOutcome] = Field(default_factory=dict)
    parked: dict[str, ParkedStage] = Field(default_factory=dict)
    resumes: dict[str, ResumeRequest] = Field(default_factory=dict)
    """Resumes accepted for parked stages and not yet acted on: the next execution's parked
    stage takes its resume first, so an accepted resume is never lost to continue-as-new."""


class StartRun(BaseModel):
    """Local activity input: mark the run RUNNING and open its first group."""

    run_id: str
    workflow_id: str
    start_group: int


class RunPlan(BaseModel):
    """What ``start_run`` found: the stages to run, the run input and earlier outputs."""

    status: RunStartStatus
    groups: list[list[StageSpec]] = Field(default_factory=list)
    run_input: Any = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    """Outputs of COMPLETED stages before ``start_group`` (kept by a rerun)."""
    attempt: int = 0
    """Rerun generation of the stages about to run."""


class StageTask(BaseModel):
    """Activity input: run one stage's ``execute`` (or ``check_completion``)."""

    run_id: str
    workflow_id: str
    stage: StageSpec
    attempt: int
    input: Any = None
    context: dict[str, Any] = Field(default_factory=dict)
    stage_record_id: str | None = None
    """The stage's record when the workflow knows it: opened RUNNING by the commit before,
    so a first attempt of ``execute`` begins nothing (otherwise it begins the stage)."""
    suspended_state: Any = None
    poll_count: int = 0
    resume_data: Any = None
    """Data handed in by an external resume, passed to ``check_completion``."""
    resume_output: Any = None
    """Output handed in by an external resume: validated and completes the stage."""
    starts_run: list[StageSpec] = Field(default_factory=list)
    """The run's first group, when this activity may have to start the run (mark it RUNNING
    and open the group's records) before it begins its stage."""
    open_next: list[StageSpec] = Field(default_factory=list)
    """The next group, opened by the commit that completes this stage's group."""
    group_size: int = 1
    completes_run: bool = False
    """The stage is in the run's last group: the commit that completes it completes the run."""
    report_keys: list[str] = Field(default_factory=list)
    """Annotation keys (besides ``decision.*``) whose written values the commit reports."""


class LogDraft(BaseModel):
    """A buffered ``ctx.log`` line."""

    at: datetime
    level: str
    message: str
    metadata: dict[str, Any] | None = None


class ProgressDraft(BaseModel):
    """A buffered ``ctx.report_progress`` call (becomes a ``stage:progress`` event)."""

    progress: float
    message: str
    details: Any = None


class StageOutcome(BaseModel):
    """What a stage activity produced, before it is committed."""

    status: StageOutcomeStatus
    stage_record_id: str | None = None
    output: Any = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    suspended_state: Any = None
    poll_interval: timedelta | None = None
    max_wait: timedelta | None = None
    next_check_in: timedelta | None = None
    started_at: datetime | None = None
    duration_ms: int = 0
    logs: list[LogDraft] = Field(default_factory=list)
    annotations: list[AnnotationDraft] = Field(default_factory=list)
    progress: list[ProgressDraft] = Field(default_factory=list)
    ai_calls: list[AICall] = Field(default_factory=list)
    commit: CommitResult | None = None
    """Set when the stage activity committed the outcome itself (its buffers are then
    dropped from the outcome); ``None`` leaves the commit to the workflow's local activity."""

    def storage_problem(self) -> str | None:
        """The first value of this outcome that no side-store backend can hold, or ``None``.

        That is NaN, ±Infinity, NUL or a lone surrogate in text, or nesting too deep; the message
        names its place.

        One encoding of everything at C speed in the common case; the walk that names the
        place runs only for an outcome that has a problem.
        """
        values = self._stored_values()
        if json_problem([value for _, value in values]) is None:
            return None
        for where, value in values:
            problem = locate_problem(value, where)
            if problem is not None:
                return problem
        return None  # pragma: no cover - the combined check and the parts agree

    def refused(self, problem: str) -> StageOutcome:
        """This outcome turned FAILED because ``problem`` cannot be stored.

        What can be stored of its buffers is kept (they say what the stage did before it went
        wrong), the rest is dropped, and the message names the place.
        """

        def storable(items: list[Any]) -> list[Any]:
            return [item for item in items if json_problem(_stored_part(item)) is None]

        return self.model_copy(
            update={
                "status": StageOutcomeStatus.FAILED,
                "output": None,
                "metrics": {},
                "suspended_state": None,
                "error": f"the stage produced a value the side-store cannot hold: {problem}",
                "logs": storable(self.logs),
                "annotations": storable(self.annotations),
                "progress": storable(self.progress),
                "ai_calls": storable(self.ai_calls),
            }
        )

    def _stored_values(self) -> list[tuple[str, Any]]:
        values: list[tuple[str, Any]] = [
            ("output", self.output),
            ("metrics", self.metrics),
            ("suspended_state", self.suspended_state),
        ]
        for i, log in enumerate(self.logs):
            values += [(f"logs[{i}].message", log.message), (f"logs[{i}].metadata", log.metadata)]
        for i, step in enumerate(self.progress):
            values.append((f"progress[{i}]", _stored_part(step)))
        for i, call in enumerate(self.ai_calls):
            values.append((f"ai_calls[{i}]", _stored_part(call)))
        for i, draft in enumerate(self.annotations):
            values.append((f"annotations[{i}] ({draft.key})", _stored_part(draft)))
        return values


def _stored_part(item: BaseModel) -> Any:
    """What the side-store keeps of a buffered item, as Python values.

    Not JSON mode, which would turn NaN into ``null`` and hide it.
    """
    if isinstance(item, LogDraft):
        return [item.message, item.metadata]
    if isinstance(item, ProgressDraft):
        return {"progress": item.progress, "message": item.message, "details": item.details}
    if isinstance(item, AnnotationDraft):  # model_dump() of each cost as much as the check
        actor = item.actor
        return {
            "key": item.key,
            "value": item.value,
            "payload": item.payload,
            "idempotency_key": item.idempotency_key,
            "actor": None if actor is None else [actor.kind, actor.id, actor.version],
        }
    return item.model_dump()


class StageCommit(BaseModel):
    """Local activity input: write one stage outcome in one transaction."""

    run_id: str
    stage: StageSpec
    attempt: int
    commit_id: str
    """Deterministic token: a retried or duplicated commit with it writes nothing twice."""
    outcome: StageOutcome
    now: datetime
    next_poll_at: datetime | None = None
    max_wait_until: datetime | None = None
    open_next: list[StageSpec] = Field(default_factory=list)
    """The next group: opened (RUNNING) by the commit that completes this stage's group."""
    group_size: int = 1
    """Members of the stage's group; with more than one, the commit checks its siblings."""
    completes_run: bool = False
    """The stage is in the run's last group: completing the group completes the run."""
    after_suspend: bool = False
    """The outcome comes from ``check_completion`` (or a resume) of a SUSPENDED stage."""
    poll_count: int = 0
    """Polls committed before this one: a commit after a suspension applies only on this
    count, so a retried poll commit cannot count twice."""
    report_keys: list[str] = Field(default_factory=list)
    """Annotation keys (besides ``decision.*``) whose written values the result reports."""


class CommitResult(BaseModel):
    """Whether the commit landed, and the decision-style annotations it wrote."""

    committed: bool
    """False when the run was no longer RUNNING: nothing but logs was written."""
    decisions: list[tuple[str, str]] = Field(default_factory=list)
    opened: dict[str, str] = Field(default_factory=dict)
    """Stage id → record id of the next group's records, when this commit opened them."""
    completed_run: bool = False
    """This commit completed the last group, and with it the run (``workflow:completed``)."""
    duplicate: bool = False
    """The outcome had been committed already (by an earlier delivery): nothing was written."""
    failed_with: str | None = None
    """Set when the outcome could not be stored as it was (a value no backend holds, or rows
    the database refused for good): the stage was committed FAILED with this message."""


class FinalizeRun(BaseModel):
    """Local activity input: end the run COMPLETED or FAILED."""

    run_id: str
    commit_id: str
    status: SettledRunStatus
    output: Any = None
    error: str | None = None
    now: datetime


class ResumeRequest(BaseModel):
    """Update input: resume a suspended stage from outside."""

    stage_id: str
    output: Any = None
    data: Any = None
    annotations: list[AnnotationDraft] = Field(default_factory=list)
    decision: bool = False
    """A person's decision on an approval stage: it completes the stage with ``output`` (or
    fails it with ``error``) and the Update returns once that outcome is committed."""
    error: str | None = None
    """With ``decision``: fail the stage with this message (a rejection)."""


RunWorkflowInput.model_rebuild()
CarriedGroup.model_rebuild()
StageOutcome.model_rebuild()
