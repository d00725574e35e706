"""Commands accepted by ``Kernel.dispatch`` and the results they return.

``dispatch`` takes these models or plain dicts with a ``"type"`` and fields in snake_case or
the original engine's camelCase (``{"type": "run.create", "workflowId": ...}``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

from engine.core.annotations import RunCreateAnnotation, text_problem
from engine.core.records import RunStatus

__all__ = [
    "Command",
    "CommandResult",
    "OutboxFlush",
    "OutboxFlushResult",
    "PluginReplayDLQ",
    "PluginReplayDLQResult",
    "RunCancel",
    "RunCancelResult",
    "RunClaimPending",
    "RunClaimPendingResult",
    "RunCreate",
    "RunCreateResult",
    "RunFork",
    "RunForkResult",
    "RunRerunFrom",
    "RunRerunFromResult",
    "parse_command",
]


def _storable(text: str) -> str:
    problem = text_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text


IdempotencyKey = Annotated[str, Field(max_length=255), AfterValidator(_storable)]
"""A key stored in a 255-character column: no NUL, no lone surrogates (PostgreSQL would
refuse them where SQLite stores them)."""


class _Message(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid"
    )


class RunCreate(_Message):
    """Create a run of a registered workflow and start its Temporal workflow."""

    type: Literal["run.create"] = "run.create"
    workflow_id: str
    input: Any
    idempotency_key: IdempotencyKey | None = None
    """Repeats with the same key return the same run; a fresh key is made when absent."""
    config: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=5, ge=-(2**31), le=2**31 - 1)
    metadata: dict[str, Any] | None = None
    """Deprecated: use ``annotations``. Still stored on the run and listed as
    ``legacy.metadata.*`` annotations."""
    annotations: list[RunCreateAnnotation] = Field(default_factory=list)


class RunCreateResult(_Message):
    """The run a ``RunCreate`` made (or found through its idempotency key)."""

    workflow_run_id: str
    status: RunStatus


class RunCancel(_Message):
    """Cancel a PENDING or RUNNING run."""

    type: Literal["run.cancel"] = "run.cancel"
    workflow_run_id: str
    reason: str | None = None


class RunCancelResult(_Message):
    """Whether the run was cancelled (False for unknown or terminal runs), and why not."""

    cancelled: bool
    reason: str | None = None
    """Why nothing was cancelled, e.g. ``run R is COMPLETED: only PENDING or RUNNING runs can
    be cancelled`` (``None`` when ``cancelled``)."""


class RunRerunFrom(_Message):
    """Rerun a COMPLETED or FAILED run from one stage's group on."""

    type: Literal["run.rerunFrom"] = "run.rerunFrom"
    workflow_run_id: str
    from_stage_id: str
    idempotency_key: IdempotencyKey | None = None


class RunRerunFromResult(_Message):
    """Which stage records the rerun deleted."""

    workflow_run_id: str
    from_stage_id: str
    deleted_stages: list[str]


class RunFork(_Message):
    """Create a new run of a terminal run's workflow that starts at one stage's group.

    The groups before it are not run again: their records are copied from the source
    (COMPLETED, with their outputs, each naming the record it was copied from). The source is
    not changed in any way.
    """

    type: Literal["run.fork"] = "run.fork"
    workflow_run_id: str
    """The source run (COMPLETED, FAILED or CANCELLED)."""
    from_stage_id: str
    input: Any = None
    """The fork's run input; the source's when ``None``."""
    config: dict[str, Any] | None = None
    """Merged over the source's config, stage by stage."""
    reason: str | None = Field(default=None, max_length=1024)
    """Stored as ``revision.reason``; ``fork from <stage>`` when ``None``."""
    idempotency_key: IdempotencyKey | None = None
    """Repeats with the same key return the same fork."""


class RunForkResult(_Message):
    """The fork a ``RunFork`` made (or found through its idempotency key)."""

    workflow_run_id: str
    source_run_id: str
    from_stage_id: str


class RunClaimPending(_Message):
    """Recover runs whose Temporal workflow is missing.

    Start the Temporal workflow of PENDING runs whose start was lost, and restart RUNNING runs
    whose Temporal execution is gone (terminated by an operator, timed out, deleted).
    """

    type: Literal["run.claimPending"] = "run.claimPending"
    max_claims: int = Field(default=10, ge=1, le=1000)


class RunClaimPendingResult(_Message):
    """Runs whose workflow this call started, and RUNNING runs it restarted."""

    started: list[str]
    restarted: list[str] = Field(default_factory=list)


class OutboxFlush(_Message):
    """Publish unpublished outbox events to the kernel's event sink."""

    type: Literal["outbox.flush"] = "outbox.flush"
    max_events: int = Field(default=100, ge=1, le=10_000)


class OutboxFlushResult(_Message):
    """How many events were published."""

    published: int


class PluginReplayDLQ(_Message):
    """Put dead-lettered outbox events back for publishing."""

    type: Literal["plugin.replayDLQ"] = "plugin.replayDLQ"
    max_events: int = Field(default=100, ge=1, le=10_000)


class PluginReplayDLQResult(_Message):
    """How many events were put back."""

    replayed: int


Command = Annotated[
    RunCreate
    | RunCancel
    | RunRerunFrom
    | RunFork
    | RunClaimPending
    | OutboxFlush
    | PluginReplayDLQ,
    Field(discriminator="type"),
]
_command_adapter: TypeAdapter[Command] = TypeAdapter(Command)

CommandResult = (
    RunCreateResult
    | RunCancelResult
    | RunRerunFromResult
    | RunForkResult
    | RunClaimPendingResult
    | OutboxFlushResult
    | PluginReplayDLQResult
)
"""What ``Kernel.dispatch`` returns: the result model of the command it ran."""


def parse_command(raw: Any) -> Command:
    """A command model from a model or a dict; raises pydantic's ValidationError naming fields."""
    if isinstance(raw, RunCreate | RunCancel | RunRerunFrom | RunClaimPending | OutboxFlush):
        return raw
    if isinstance(raw, PluginReplayDLQ | RunFork):
        return raw
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    return _command_adapter.validate_python(raw)
