"""Workflow definitions: the ``define_workflow`` builder and the execution plan it produces."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from engine.core.stages import ID_PATTERN, Stage
from engine.errors import InvalidConfigError, InvalidInputError, WorkflowDefinitionError

__all__ = [
    "ConfigIssue",
    "ConfigValidation",
    "Workflow",
    "WorkflowBuilder",
    "define_workflow",
]


class ConfigIssue(BaseModel):
    """One stage whose config slice failed validation."""

    stage_id: str
    """The stage (or the unknown id) the slice was given for."""
    error: str
    """``Config validation failed: path: message; ...``."""


class ConfigValidation(BaseModel):
    """Outcome of :meth:`Workflow.validate_config`."""

    valid: bool
    """Whether every slice fits its stage's config model."""
    errors: list[ConfigIssue]
    """One entry per failing stage, in definition order; empty when ``valid``."""


def _validation_messages(exc: ValidationError) -> list[str]:
    return [
        f"{'.'.join(str(part) for part in err['loc']) or '(root)'}: {err['msg']}"
        for err in exc.errors()
    ]


def _quoted(ids: Iterable[str]) -> str:
    listed = ", ".join(repr(stage_id) for stage_id in ids)
    return listed or "(none)"


def _field_keys(name: str, info: FieldInfo) -> set[str]:
    # Any spelling pydantic may read or write for the field counts: the check is only meant to
    # catch definitions that cannot work, not to second-guess alias settings.
    keys = {name}
    for alias in (info.alias, info.validation_alias, info.serialization_alias):
        if isinstance(alias, str):
            keys.add(alias)
    return keys


def _missing_required(model: type[BaseModel], provided: set[str]) -> list[str]:
    return [
        name
        for name, info in model.model_fields.items()
        if info.is_required() and not (_field_keys(name, info) & provided)
    ]


def _provided_by_model(model: type[BaseModel]) -> set[str]:
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        keys |= _field_keys(name, info)
    return keys


def _check_id(workflow_id: object) -> str:
    if not isinstance(workflow_id, str) or ID_PATTERN.fullmatch(workflow_id) is None:
        raise WorkflowDefinitionError(
            f"invalid workflow id {workflow_id!r}: use 1-128 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit"
        )
    return workflow_id


def _check_model(workflow_id: str, argument: str, model: object) -> type[BaseModel] | None:
    if model is None:
        return None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model
    raise WorkflowDefinitionError(
        f"workflow {workflow_id!r}: {argument} must be a pydantic BaseModel subclass or None, "
        f"got {model!r}"
    )


def _check_group(
    workflow_id: str,
    input_model: type[BaseModel] | None,
    earlier: tuple[tuple[Stage[Any, Any, Any], ...], ...],
    group: tuple[object, ...],
) -> tuple[Stage[Any, Any, Any], ...]:
    """Check a group about to be appended after ``earlier``; return it typed."""
    number = len(earlier) + 1
    if not group:
        # The original accepted an empty group, which silently ended the run at that point.
        raise WorkflowDefinitionError(
            f"workflow {workflow_id!r}: parallel() needs at least one stage "
            f"(group {number} would be empty)"
        )
    stages: list[Stage[Any, Any, Any]] = []
    for member in group:
        if not isinstance(member, Stage):
            raise WorkflowDefinitionError(
                f"workflow {workflow_id!r}: group {number}: expected a Stage made by "
                f"define_stage or define_async_batch_stage, got {member!r}"
            )
        stages.append(member)

    earlier_ids = [stage.id for grp in earlier for stage in grp]
    seen = set(earlier_ids)
    for stage in stages:
        if stage.id in seen:
            raise WorkflowDefinitionError(
                f"workflow {workflow_id!r}: duplicate stage id {stage.id!r}", stage_id=stage.id
            )
        seen.add(stage.id)

    group_ids = {stage.id for stage in stages}
    for stage in stages:
        missing = [dep for dep in stage.dependencies if dep not in earlier_ids]
        if missing:
            hint = (
                " (a stage cannot depend on a member of its own parallel group)"
                if any(dep in group_ids for dep in missing)
                else ""
            )
            raise WorkflowDefinitionError(
                f"workflow {workflow_id!r}: stage {stage.id!r} depends on {_quoted(missing)}, "
                f"not added by an earlier pipe()/parallel() call{hint}; "
                f"stages so far: {_quoted(earlier_ids)}",
                stage_id=stage.id,
            )

    for stage in stages:
        _check_input_fits(workflow_id, input_model, earlier, stage)
    return tuple(stages)


def _check_input_fits(
    workflow_id: str,
    input_model: type[BaseModel] | None,
    earlier: tuple[tuple[Stage[Any, Any, Any], ...], ...],
    stage: Stage[Any, Any, Any],
) -> None:
    """Reject a stage whose input model needs fields its predecessor can never provide."""
    if stage.input_model is None:
        return
    source: str
    if not earlier:
        if input_model is None:
            return
        provided = _provided_by_model(input_model)
        source = f"the workflow input model {input_model.__name__}"
    elif len(earlier[-1]) == 1:
        previous = earlier[-1][0]
        if previous.output_model is None:
            return
        provided = _provided_by_model(previous.output_model)
        source = f"the output of stage {previous.id!r} ({previous.output_model.__name__})"
    else:
        member_ids = [member.id for member in earlier[-1]]
        provided = set(member_ids)
        source = f"the parallel group {_quoted(member_ids)} (output keyed by stage id)"
    missing = _missing_required(stage.input_model, provided)
    if missing:
        raise WorkflowDefinitionError(
            f"workflow {workflow_id!r}: stage {stage.id!r} needs input field(s) "
            f"{_quoted(missing)} of {stage.input_model.__name__} that {source} lacks",
            stage_id=stage.id,
        )


@dataclass(frozen=True)
class _Slot:
    stage: Stage[Any, Any, Any]
    group: int
    """1-based execution group."""
    index: int
    """0-based position in definition order."""


@dataclass(frozen=True)
class Workflow:
    """A built workflow: stages in execution groups that run strictly in order.

    Build one with :func:`define_workflow`. Groups are 1-based, as in the original engine:
    ``pipe`` adds a one-stage group, ``parallel`` a group whose members may run concurrently.
    """

    id: str
    """Registry id; ``RunCreate.workflow_id`` refers to it."""
    name: str
    """Human-readable name, stored on each run."""
    description: str | None
    """Optional longer description."""
    input_model: type[BaseModel] | None
    """Model the run input must fit; ``None`` accepts any input."""
    output_model: type[BaseModel] | None
    """Declared model of the final output (documentation only, as in the original)."""
    groups: tuple[tuple[Stage[Any, Any, Any], ...], ...]
    """Stages per execution group, in order."""
    search_attributes: Mapping[str, str] | None = None
    """Annotation keys projected into Keyword search attributes of the run's executions
    (``{"decision.outcome": "DecisionOutcome"}``); ``None``: the kernel's ``projected_keys``.
    The worker checks at start that the server has them
    (see :mod:`engine.core.search_attributes`)."""
    _slots: dict[str, _Slot] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Re-checked here so that a Workflow built by hand meets the builder's rules too.
        _check_id(self.id)
        _check_model(self.id, "input", self.input_model)
        _check_model(self.id, "output", self.output_model)
        if not self.groups:
            raise WorkflowDefinitionError(f"workflow {self.id!r} has no stages")
        checked: tuple[tuple[Stage[Any, Any, Any], ...], ...] = ()
        for group in self.groups:
            checked += (_check_group(self.id, self.input_model, checked, tuple(group)),)
        slots: dict[str, _Slot] = {}
        for number, group in enumerate(checked, start=1):
            for stage in group:
                slots[stage.id] = _Slot(stage=stage, group=number, index=len(slots))
        object.__setattr__(self, "groups", checked)
        object.__setattr__(self, "_slots", slots)
        if self.search_attributes is not None:
            object.__setattr__(
                self, "search_attributes", _check_projection(self.id, self.search_attributes)
            )

    @property
    def stages(self) -> tuple[Stage[Any, Any, Any], ...]:
        """All stages in definition order."""
        return tuple(slot.stage for slot in self._slots.values())

    def get_stage_ids(self) -> list[str]:
        """Return the stage ids in definition order."""
        return list(self._slots)

    def get_execution_plan(self) -> list[list[str]]:
        """Return the stage ids of each execution group, groups in order."""
        return [[stage.id for stage in group] for group in self.groups]

    def get_stage(self, stage_id: str) -> Stage[Any, Any, Any]:
        """Return the stage with this id.

        Raises:
            KeyError: The workflow has no such stage.
        """
        return self._slot(stage_id).stage

    def has_stage(self, stage_id: str) -> bool:
        """Return whether the workflow has a stage with this id."""
        return stage_id in self._slots

    def get_stages_in_execution_group(self, group: int) -> list[Stage[Any, Any, Any]]:
        """Return the stages of a 1-based execution group (``[]`` if there is no such group)."""
        if 1 <= group <= len(self.groups):
            return list(self.groups[group - 1])
        return []

    def get_stage_index(self, stage_id: str) -> int:
        """Return the 0-based position of the stage in definition order, or -1 if unknown."""
        slot = self._slots.get(stage_id)
        return -1 if slot is None else slot.index

    def get_execution_group_index(self, stage_id: str) -> int:
        """Return the 1-based execution group of the stage.

        Raises:
            KeyError: The workflow has no such stage.
        """
        return self._slot(stage_id).group

    def stage_number(self, stage_id: str) -> int:
        """Return the 1-based position of the stage in definition order (``stage_number``).

        Raises:
            KeyError: The workflow has no such stage.
        """
        return self._slot(stage_id).index + 1

    def get_default_config(self) -> dict[str, dict[str, Any]]:
        """Return ``{stage_id: JSON-able config defaults}`` for every stage."""
        return {stage_id: slot.stage.default_config() for stage_id, slot in self._slots.items()}

    def validate_config(self, cfg: Mapping[str, Any]) -> ConfigValidation:
        """Check each stage's slice of ``cfg`` against its config model.

        A stage without a slice is checked against ``{}`` (so required config fields without a
        default are reported). Ids in ``cfg`` that are not stages of this workflow are reported
        too, since :meth:`merge_config` rejects them.

        Args:
            cfg: ``{stage_id: config slice}``.

        Returns:
            Whether all slices are valid, and an issue per failing stage.
        """
        issues = [
            ConfigIssue(stage_id=stage_id, error="Config validation failed: " + "; ".join(errors))
            for stage_id, slot in self._slots.items()
            if (errors := _slice_errors(slot.stage, cfg.get(stage_id)))
        ]
        issues += [
            ConfigIssue(
                stage_id=unknown,
                error=f"Config validation failed: workflow {self.id!r} has no stage {unknown!r}",
            )
            for unknown in cfg
            if unknown not in self._slots
        ]
        return ConfigValidation(valid=not issues, errors=issues)

    def parse_input(self, raw: Any) -> Any:
        """Check run input against the workflow's input model.

        Args:
            raw: The input as submitted.

        Returns:
            The input model instance, or ``raw`` when the workflow has no input model.

        Raises:
            InvalidInputError: The input does not fit the model; the message lists each field.
        """
        if self.input_model is None:
            return raw
        try:
            return self.input_model.model_validate(raw)
        except ValidationError as exc:
            raise InvalidInputError(
                "Invalid workflow input: " + "; ".join(_validation_messages(exc))
            ) from exc

    def merge_config(self, cfg: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
        """Merge run config over the defaults and validate every stage's slice.

        Each stage gets ``{**defaults, **supplied}`` (a shallow merge per stage, so the stored
        run config shows every effective top-level value); stages without a supplied slice get
        their defaults.

        Args:
            cfg: ``{stage_id: config slice}``, or ``None`` for all defaults.

        Returns:
            ``{stage_id: merged slice}`` for every stage, in definition order.

        Raises:
            InvalidConfigError: ``cfg`` names stages the workflow does not have, or a slice does
                not fit its config model; ``stage_id`` is the first offending stage.
        """
        supplied: Mapping[str, Any] = {} if cfg is None else cfg
        if not isinstance(supplied, Mapping):
            raise InvalidConfigError(
                "Invalid workflow config: expected an object keyed by stage id, "
                f"got {type(supplied).__name__}"
            )
        unknown = [stage_id for stage_id in supplied if stage_id not in self._slots]
        if unknown:
            raise InvalidConfigError(
                f"Invalid workflow config: {_quoted(unknown)} not stage(s) of workflow "
                f"{self.id!r} (stages: {_quoted(self._slots)})",
                stage_id=str(unknown[0]),
            )
        merged: dict[str, dict[str, Any]] = {}
        problems: list[tuple[str, str]] = []
        for stage_id, slot in self._slots.items():
            given = supplied.get(stage_id)
            if given is not None and not isinstance(given, Mapping):
                problems.append((stage_id, _not_an_object(given)))
                continue
            merged[stage_id] = {**slot.stage.default_config(), **(given or {})}
            problems += [(stage_id, error) for error in _slice_errors(slot.stage, merged[stage_id])]
        if problems:
            raise InvalidConfigError(
                "Invalid workflow config: "
                + ", ".join(f"{stage_id}: {error}" for stage_id, error in problems),
                stage_id=problems[0][0],
            )
        return merged

    def _slot(self, stage_id: str) -> _Slot:
        try:
            return self._slots[stage_id]
        except KeyError:
            raise KeyError(f"workflow {self.id!r} has no stage {stage_id!r}") from None


def _not_an_object(value: object) -> str:
    return f"(root): expected an object, got {type(value).__name__}"


def _slice_errors(stage: Stage[Any, Any, Any], raw: object) -> list[str]:
    if raw is not None and not isinstance(raw, Mapping):
        return [_not_an_object(raw)]
    try:
        stage.parse_config(None if raw is None else dict(raw))
    except ValidationError as exc:
        return _validation_messages(exc)
    return []


class WorkflowBuilder:
    """Accumulates execution groups; each call returns a new builder, leaving this one as is.

    Every ``pipe``/``parallel`` call checks its stages at once (ids, dependencies, input fit),
    so a definition error points at the call that caused it.
    """

    def __init__(
        self,
        *,
        id: str,
        name: str,
        description: str | None,
        input_model: type[BaseModel] | None,
        output_model: type[BaseModel] | None,
        groups: tuple[tuple[Stage[Any, Any, Any], ...], ...] = (),
        search_attributes: Mapping[str, str] | None = None,
    ) -> None:
        """Create a builder; use :func:`define_workflow` instead of calling this directly."""
        self._search_attributes = search_attributes
        self._id = id
        self._name = name
        self._description = description
        self._input_model = input_model
        self._output_model = output_model
        self._groups = groups

    def pipe(self, stage: Stage[Any, Any, Any]) -> WorkflowBuilder:
        """Add a group with one stage; it gets the previous group's output as input.

        Raises:
            WorkflowDefinitionError: Not a stage, a duplicate id, an unmet dependency, or an
                input model that the previous output cannot satisfy.
        """
        return self._with_group((stage,))

    def parallel(self, stages: Iterable[Stage[Any, Any, Any]]) -> WorkflowBuilder:
        """Add a group whose stages run concurrently; the next group gets ``{stage_id: output}``.

        Raises:
            WorkflowDefinitionError: An empty group, or any problem :meth:`pipe` reports.
        """
        if isinstance(stages, Stage):
            raise WorkflowDefinitionError(
                f"workflow {self._id!r}: parallel() takes a list of stages, got one stage "
                f"{stages.id!r} (use pipe() for a single stage)",
                stage_id=stages.id,
            )
        try:
            group = tuple(stages)
        except TypeError:
            raise WorkflowDefinitionError(
                f"workflow {self._id!r}: parallel() takes a list of stages, got {stages!r}"
            ) from None
        return self._with_group(group)

    def build(self) -> Workflow:
        """Return the finished :class:`Workflow`.

        Raises:
            WorkflowDefinitionError: The workflow has no stages.
        """
        return Workflow(
            id=self._id,
            name=self._name,
            description=self._description,
            input_model=self._input_model,
            output_model=self._output_model,
            groups=self._groups,
            search_attributes=self._search_attributes,
        )

    def _with_group(self, group: tuple[object, ...]) -> WorkflowBuilder:
        checked = _check_group(self._id, self._input_model, self._groups, group)
        return WorkflowBuilder(
            id=self._id,
            name=self._name,
            description=self._description,
            input_model=self._input_model,
            output_model=self._output_model,
            groups=(*self._groups, checked),
            search_attributes=self._search_attributes,
        )


def define_workflow(
    id: str,
    name: str | None = None,
    description: str | None = None,
    input: type[BaseModel] | None = None,
    output: type[BaseModel] | None = None,
    search_attributes: Mapping[str, str] | None = None,
) -> WorkflowBuilder:
    """Start defining a workflow; chain ``.pipe``/``.parallel`` and finish with ``.build()``.

    Example:
        ``define_workflow(id="ticket-triage", input=Ticket).pipe(classify).build()``

    Args:
        id: Registry id (1-128 characters from A-Z a-z 0-9 _ . -).
        name: Human-readable name; the id when omitted.
        description: Optional longer description.
        input: Model the run input must fit; ``None`` accepts any input.
        output: Declared model of the final output.
        search_attributes: Annotation key → Keyword search attribute its latest value is
            projected to in Temporal (default: the kernel's, ``decision.outcome`` →
            ``DecisionOutcome``); ``{}`` projects nothing.

    Returns:
        An empty :class:`WorkflowBuilder`.

    Raises:
        WorkflowDefinitionError: The id or a model argument is not valid.
    """
    workflow_id = _check_id(id)
    return WorkflowBuilder(
        id=workflow_id,
        name=workflow_id if name is None else name,
        description=description,
        input_model=_check_model(workflow_id, "input", input),
        output_model=_check_model(workflow_id, "output", output),
        search_attributes=(
            None if search_attributes is None else _check_projection(workflow_id, search_attributes)
        ),
    )


_ATTRIBUTE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_RESERVED_ATTRIBUTES = ("WfeRunStatus", "WfeWorkflowId", "WfeRunId", "WfeAttempt")


def _check_projection(workflow_id: str, projection: Mapping[str, str]) -> dict[str, str]:
    """A copy of a declared projection, or the error naming its first bad entry."""
    if not isinstance(projection, Mapping):
        raise WorkflowDefinitionError(
            f"workflow {workflow_id!r}: search_attributes must map annotation keys to "
            f"attribute names, got {projection!r}"
        )
    checked: dict[str, str] = {}
    for key, attribute in projection.items():
        if not isinstance(key, str) or not key:
            raise WorkflowDefinitionError(
                f"workflow {workflow_id!r}: search_attributes key {key!r} is not an annotation key"
            )
        if not isinstance(attribute, str) or not _ATTRIBUTE_NAME.fullmatch(attribute):
            raise WorkflowDefinitionError(
                f"workflow {workflow_id!r}: search attribute name {attribute!r} for {key!r} must "
                "be a letter then up to 63 letters, digits or _"
            )
        if attribute in _RESERVED_ATTRIBUTES:
            raise WorkflowDefinitionError(
                f"workflow {workflow_id!r}: search attribute {attribute!r} is the engine's own"
            )
        checked[key] = attribute
    return checked
