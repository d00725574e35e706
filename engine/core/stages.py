"""Stage definitions (``define_stage``, ``define_async_batch_stage``) and what stages return."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, overload

import temporalio.common
from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python
from typing_extensions import TypeVar

from engine.errors import WorkflowDefinitionError

__all__ = [
    "ID_PATTERN",
    "CompletionCheck",
    "OnReject",
    "Stage",
    "StageKind",
    "StageResult",
    "Suspend",
    "define_async_batch_stage",
    "define_stage",
]

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""Shape of stage and workflow ids (matched in full).

Ids end up in Temporal workflow ids, storage keys and SQL rows, so they stay short and free of
separators such as ``/`` and whitespace.
"""

DEFAULT_START_TO_CLOSE_TIMEOUT = timedelta(minutes=10)
"""How long one execution of a stage's code may take when the stage does not say."""

StageKind = Literal["sync", "async_batch", "approval"]
"""``sync``: ``execute`` produces the output. ``async_batch``: it may suspend and be polled.
``approval``: it suspends at once and waits for a person's decision (no polling)."""

OnReject = Literal["fail", "continue"]
"""What a rejected approval does: fail the stage (and the run), or complete it with
``approved: false`` so later stages decide."""

# Defaults keep ``Stage`` usable unparameterised, and let mypy settle a parameter that an
# argument left as ``None`` cannot determine.
InT = TypeVar("InT", default=Any)
OutT = TypeVar("OutT", default=Any)
CfgT = TypeVar("CfgT", default=Any)


class StageResult(BaseModel):
    """What ``execute`` may return instead of the bare output, to attach metrics.

    Example:
        ``return StageResult(output=Triage(urgency="low"), custom_metrics={"totalTokens": 812})``
    """

    model_config = ConfigDict(extra="forbid")

    output: Any
    """The stage output, checked against the stage's output model."""
    custom_metrics: dict[str, Any] = {}
    """Flat metrics for the stage record; ``totalCost`` and ``totalTokens`` add up per run."""


class Suspend(BaseModel):
    """Returned by ``execute`` to park the stage until ``check_completion`` reports it ready.

    The stage becomes SUSPENDED, ``state`` is stored and handed to every ``check_completion``
    call (and to ``ctx.resume_state``).
    """

    model_config = ConfigDict(extra="forbid")

    state: dict[str, Any] = {}
    """JSON-able state, e.g. the id of the submitted batch job."""
    poll_interval: timedelta | None = None
    """Time between completion checks; the engine's default (60 s) when ``None``."""
    max_wait: timedelta | None = None
    """How long the stage may stay suspended before it fails; no limit when ``None``."""
    next_poll_at: datetime | None = None
    """When to run the first check; ``now + poll_interval`` when ``None``."""
    custom_metrics: dict[str, Any] = {}
    """Metrics stored on the stage record while it is suspended."""


class CompletionCheck(BaseModel):
    """What ``check_completion`` returns: ready with an output, an error, or not ready yet.

    ``error`` wins over ``ready``: a check carrying an error fails the stage and the run.
    """

    model_config = ConfigDict(extra="forbid")

    ready: bool
    """Whether the suspended work has finished."""
    output: Any = None
    """The stage output when ready, checked against the stage's output model."""
    error: str | None = None
    """Set when the work failed for good; the stage and the run fail with this message."""
    next_check_in: timedelta | None = None
    """When not ready: delay before the next check; the stage's poll interval when ``None``."""
    metrics: dict[str, Any] = {}
    """Metrics merged into the stage record's metrics."""


def _is_model_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _json_default(field: FieldInfo) -> Any:
    value = field.get_default(call_default_factory=True, validated_data={})
    return to_jsonable_python(value)


def _config_key(name: str, field: FieldInfo) -> str:
    # The defaults are fed back through model_validate, which reads the validation alias first.
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    return field.alias if field.alias is not None else name


# eq=False: stages compare and hash by identity, since a RetryPolicy field is unhashable and two
# distinct definitions with equal fields are still two stages.
@dataclass(frozen=True, eq=False)
class Stage(Generic[InT, OutT, CfgT]):
    """One unit of work in a workflow; build it with :func:`define_stage`.

    The type parameters record the input, output and config models for type checkers only.
    """

    id: str
    """Unique id within a workflow (``ID_PATTERN``)."""
    name: str
    """Human-readable name stored on the stage record."""
    execute: Callable[..., Any]
    """Sync or async ``fn(ctx)`` returning the output, a ``StageResult`` or a ``Suspend``."""
    input_model: type[BaseModel] | None
    """Model the stage input is parsed with; ``None``: the stage takes no input."""
    output_model: type[BaseModel] | None
    """Model the output is checked against; ``None``: any JSON-able output."""
    config_model: type[BaseModel] | None
    """Model the stage's config slice is parsed with; ``None``: the stage takes no config."""
    description: str | None = None
    """Optional longer description."""
    dependencies: tuple[str, ...] = ()
    """Ids of stages that must be in earlier groups; checked when the workflow is built."""
    kind: StageKind = "sync"
    """Whether the stage may suspend and be polled (``async_batch``)."""
    check_completion: Callable[..., Any] | None = None
    """For ``async_batch`` stages: ``fn(state, ctx)`` returning a :class:`CompletionCheck`."""
    retry_policy: temporalio.common.RetryPolicy | None = None
    """Retries of the stage's own exceptions; ``None``: an exception fails the stage at once."""
    start_to_close_timeout: timedelta = DEFAULT_START_TO_CLOSE_TIMEOUT
    """Limit on one execution of ``execute`` or ``check_completion``."""
    heartbeat_timeout: timedelta | None = None
    """Fail an execution that has not called ``ctx.heartbeat`` for this long; ``None``: no limit."""
    requested_from: str | None = None
    """Approval stages: whom the decision is asked of (``None``: anyone allowed to approve)."""
    timeout: timedelta | None = None
    """Approval stages: how long to wait for a decision before failing; ``None``: no limit."""
    on_reject: OnReject = "fail"
    """Approval stages: what a rejection does (see :data:`OnReject`)."""

    def __post_init__(self) -> None:
        # Validating here rather than only in define_stage also covers dataclasses.replace().
        if not isinstance(self.id, str) or ID_PATTERN.fullmatch(self.id) is None:
            raise WorkflowDefinitionError(
                f"invalid stage id {self.id!r}: use 1-128 characters from A-Z a-z 0-9 _ . -, "
                "starting with a letter or digit",
                stage_id=self.id if isinstance(self.id, str) else None,
            )
        if not isinstance(self.name, str) or not self.name:
            raise self._error(f"name must be a non-empty string, got {self.name!r}")
        for argument, model in (
            ("input", self.input_model),
            ("output", self.output_model),
            ("config", self.config_model),
        ):
            if model is not None and not _is_model_class(model):
                raise self._error(
                    f"{argument} must be a pydantic BaseModel subclass or None, got {model!r}"
                )
        if not callable(self.execute):
            raise self._error(f"execute must be callable, got {self.execute!r}")
        if self.kind not in ("sync", "async_batch", "approval"):
            raise self._error(
                f"kind must be 'sync', 'async_batch' or 'approval', got {self.kind!r}"
            )
        if self.kind == "async_batch" and self.check_completion is None:
            raise self._error("an async batch stage needs check_completion")
        if self.check_completion is not None and not callable(self.check_completion):
            raise self._error(f"check_completion must be callable, got {self.check_completion!r}")
        if not isinstance(self.dependencies, tuple) or not all(
            isinstance(dep, str) for dep in self.dependencies
        ):
            raise self._error(
                f"dependencies must be a sequence of stage ids, got {self.dependencies!r}"
            )
        if self.retry_policy is not None and not isinstance(
            self.retry_policy, temporalio.common.RetryPolicy
        ):
            raise self._error(
                f"retry_policy must be a temporalio RetryPolicy, got {self.retry_policy!r}"
            )
        for argument, duration in (
            ("start_to_close_timeout", self.start_to_close_timeout),
            ("heartbeat_timeout", self.heartbeat_timeout),
        ):
            if duration is None and argument == "heartbeat_timeout":
                continue
            if not isinstance(duration, timedelta) or duration <= timedelta(0):
                raise self._error(f"{argument} must be a positive timedelta, got {duration!r}")
        if self.timeout is not None and (
            not isinstance(self.timeout, timedelta) or self.timeout <= timedelta(0)
        ):
            raise self._error(f"timeout must be a positive timedelta or None, got {self.timeout!r}")
        if self.on_reject not in ("fail", "continue"):
            raise self._error(f"on_reject must be 'fail' or 'continue', got {self.on_reject!r}")
        if self.requested_from is not None and (
            not isinstance(self.requested_from, str) or not 0 < len(self.requested_from) <= 255
        ):
            raise self._error(
                f"requested_from must be a string of 1-255 characters or None, "
                f"got {self.requested_from!r}"
            )

    def _error(self, problem: str) -> WorkflowDefinitionError:
        return WorkflowDefinitionError(f"stage {self.id!r}: {problem}", stage_id=self.id)

    def default_config(self) -> dict[str, Any]:
        """Return the JSON-able declared defaults of the config model's fields.

        Fields without a default are left out; a stage without a config model gives ``{}``.
        """
        if self.config_model is None:
            return {}
        return {
            _config_key(name, field): _json_default(field)
            for name, field in self.config_model.model_fields.items()
            if field.default is not PydanticUndefined or field.default_factory is not None
        }

    def parse_config(self, raw: dict[str, Any] | None) -> BaseModel | None:
        """Parse the stage's config slice, applying defaults.

        Args:
            raw: The slice ``run.config[stage_id]``; ``None`` counts as ``{}``.

        Returns:
            The config model instance, or ``None`` when the stage has no config model.

        Raises:
            pydantic.ValidationError: The slice does not fit the config model.
        """
        if self.config_model is None:
            return None
        return self.config_model.model_validate({} if raw is None else raw)

    def parse_input(self, raw: Any) -> BaseModel | None:
        """Parse the stage input; unknown keys are dropped, defaults applied.

        Args:
            raw: The run input (group 1) or the previous group's output.

        Returns:
            The input model instance, or ``None`` when the stage takes no input.

        Raises:
            pydantic.ValidationError: The value does not fit the input model.
        """
        if self.input_model is None:
            return None
        return self.input_model.model_validate(raw)

    def parse_output(self, raw: Any) -> Any:
        """Check an output against the output model.

        Args:
            raw: What ``execute`` or ``check_completion`` produced (without a StageResult wrapper).

        Returns:
            ``raw`` itself when there is no output model or it is already an instance of it;
            otherwise the validated model instance.

        Raises:
            pydantic.ValidationError: The value does not fit the output model.
        """
        if self.output_model is None or isinstance(raw, self.output_model):
            return raw
        return self.output_model.model_validate(raw)

    def dump_output(self, value: Any) -> Any:
        """Turn a parsed output into its JSON form (models are dumped, anything else kept)."""
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        return value


def _dependencies(stage_id: str, dependencies: Iterable[str] | None) -> tuple[str, ...]:
    if dependencies is None:
        return ()
    # A bare string is iterable too, and would silently become one dependency per character.
    if isinstance(dependencies, str):
        raise WorkflowDefinitionError(
            f"stage {stage_id!r}: dependencies must be a list of stage ids, not a string",
            stage_id=stage_id,
        )
    return tuple(dependencies)


def _build(
    *,
    id: str,
    name: str | None,
    execute: Callable[..., Any],
    input: Any,
    output: Any,
    config: Any,
    description: str | None,
    dependencies: Iterable[str] | None,
    kind: StageKind,
    check_completion: Callable[..., Any] | None,
    retry_policy: temporalio.common.RetryPolicy | None,
    start_to_close_timeout: timedelta | None,
    heartbeat_timeout: timedelta | None,
    requested_from: str | None = None,
    timeout: timedelta | None = None,
    on_reject: OnReject = "fail",
) -> Stage[Any, Any, Any]:
    # Re-checked in Stage.__post_init__; checked here first so the message names the keyword
    # the caller used rather than the field name.
    for argument, model in (("input", input), ("output", output), ("config", config)):
        if model is not None and not _is_model_class(model):
            raise WorkflowDefinitionError(
                f"stage {id!r}: {argument} must be a pydantic BaseModel subclass or None, "
                f"got {model!r}",
                stage_id=id if isinstance(id, str) else None,
            )
    return Stage(
        id=id,
        name=id if name is None else name,
        execute=execute,
        input_model=input,
        output_model=output,
        config_model=config,
        description=description,
        dependencies=_dependencies(id, dependencies),
        kind=kind,
        check_completion=check_completion,
        retry_policy=retry_policy,
        start_to_close_timeout=(
            DEFAULT_START_TO_CLOSE_TIMEOUT
            if start_to_close_timeout is None
            else start_to_close_timeout
        ),
        heartbeat_timeout=heartbeat_timeout,
        requested_from=requested_from,
        timeout=timeout,
        on_reject=on_reject,
    )


@overload
def define_stage(
    *,
    id: str,
    execute: Callable[..., Any],
    input: type[InT] | None = None,
    output: type[OutT] | None = None,
    config: type[CfgT] | None = None,
    name: str | None = None,
    description: str | None = None,
    dependencies: Iterable[str] | None = None,
    retry_policy: temporalio.common.RetryPolicy | None = None,
    start_to_close_timeout: timedelta | None = None,
    heartbeat_timeout: timedelta | None = None,
) -> Stage[InT, OutT, CfgT]: ...


@overload
def define_stage(
    *,
    id: str,
    execute: None = None,
    input: type[InT] | None = None,
    output: type[OutT] | None = None,
    config: type[CfgT] | None = None,
    name: str | None = None,
    description: str | None = None,
    dependencies: Iterable[str] | None = None,
    retry_policy: temporalio.common.RetryPolicy | None = None,
    start_to_close_timeout: timedelta | None = None,
    heartbeat_timeout: timedelta | None = None,
) -> Callable[[Callable[..., Any]], Stage[InT, OutT, CfgT]]: ...


def define_stage(
    *,
    id: str,
    execute: Callable[..., Any] | None = None,
    input: type[InT] | None = None,
    output: type[OutT] | None = None,
    config: type[CfgT] | None = None,
    name: str | None = None,
    description: str | None = None,
    dependencies: Iterable[str] | None = None,
    retry_policy: temporalio.common.RetryPolicy | None = None,
    start_to_close_timeout: timedelta | None = None,
    heartbeat_timeout: timedelta | None = None,
) -> Stage[InT, OutT, CfgT] | Callable[[Callable[..., Any]], Stage[InT, OutT, CfgT]]:
    """Define a sync stage, as a decorator or directly with ``execute=``.

    Example:
        ``@define_stage(id="classify", input=Ticket, output=Triage, config=TriageConfig)``
        above ``async def classify(ctx: StageContext[Ticket, TriageConfig]) -> Triage``.

    Args:
        id: Unique id within the workflow (``ID_PATTERN``).
        execute: The stage code ``fn(ctx)``, sync or async; omit it to get a decorator.
        input: Input model; ``None`` means the stage takes no input (``ctx.input`` is ``None``).
        output: Output model; ``None`` accepts any JSON-able output.
        config: Config model; its field defaults make up the stage's default config.
        name: Human-readable name; the id when omitted.
        description: Optional longer description.
        dependencies: Ids of stages that must be added to the workflow before this one.
        retry_policy: Temporal retry policy for the stage's own exceptions; without one an
            exception fails the stage on the first try.
        start_to_close_timeout: Limit on one execution; 10 minutes when omitted.
        heartbeat_timeout: Fail an execution silent for this long (see ``ctx.heartbeat``).

    Returns:
        The :class:`Stage` when ``execute`` is given, else a decorator that makes one.

    Raises:
        WorkflowDefinitionError: The id, a model argument or ``execute`` is not valid.
    """

    def make(fn: Callable[..., Any]) -> Stage[InT, OutT, CfgT]:
        return _build(
            id=id,
            name=name,
            execute=fn,
            input=input,
            output=output,
            config=config,
            description=description,
            dependencies=dependencies,
            kind="sync",
            check_completion=None,
            retry_policy=retry_policy,
            start_to_close_timeout=start_to_close_timeout,
            heartbeat_timeout=heartbeat_timeout,
        )

    if execute is None:
        return make
    return make(execute)


def define_async_batch_stage(
    *,
    id: str,
    execute: Callable[..., Any],
    check_completion: Callable[..., Any] | None = None,
    input: type[InT] | None = None,
    output: type[OutT] | None = None,
    config: type[CfgT] | None = None,
    name: str | None = None,
    description: str | None = None,
    dependencies: Iterable[str] | None = None,
    retry_policy: temporalio.common.RetryPolicy | None = None,
    start_to_close_timeout: timedelta | None = None,
    heartbeat_timeout: timedelta | None = None,
) -> Stage[InT, OutT, CfgT]:
    """Define a stage whose work finishes outside the worker, polled until it is done.

    ``execute(ctx)`` returns the output at once or a :class:`Suspend`; while suspended,
    ``check_completion(state, ctx)`` is called every poll interval and returns a
    :class:`CompletionCheck`.

    Args:
        id: Unique id within the workflow (``ID_PATTERN``).
        execute: Submits the work, sync or async.
        check_completion: Checks on the work, sync or async; required (it is a keyword with
            a ``None`` default only so that leaving it out raises the engine's own error).
        input: Input model, or ``None`` for no input.
        output: Output model, or ``None`` for any JSON-able output.
        config: Config model, or ``None`` for no config.
        name: Human-readable name; the id when omitted.
        description: Optional longer description.
        dependencies: Ids of stages that must be added to the workflow before this one.
        retry_policy: Temporal retry policy for the stage's own exceptions.
        start_to_close_timeout: Limit on one execution or check; 10 minutes when omitted.
        heartbeat_timeout: Fail an execution silent for this long.

    Returns:
        The :class:`Stage`, of kind ``async_batch``.

    Raises:
        WorkflowDefinitionError: An argument is not valid or ``check_completion`` is missing.
    """
    return _build(
        id=id,
        name=name,
        execute=execute,
        input=input,
        output=output,
        config=config,
        description=description,
        dependencies=dependencies,
        kind="async_batch",
        check_completion=check_completion,
        retry_policy=retry_policy,
        start_to_close_timeout=start_to_close_timeout,
        heartbeat_timeout=heartbeat_timeout,
    )
