"""Stage and workflow definitions: builder rules, execution plan, config and input handling."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError
from temporalio.common import RetryPolicy

from engine.core.stages import (
    CompletionCheck,
    Stage,
    StageResult,
    Suspend,
    define_async_batch_stage,
    define_stage,
)
from engine.core.workflows import ConfigIssue, Workflow, define_workflow
from engine.errors import InvalidConfigError, InvalidInputError, WorkflowDefinitionError


class Ticket(BaseModel):
    text: str
    channel: str = "email"


class Triage(BaseModel):
    urgency: str


class TriageConfig(BaseModel):
    threshold: float = 0.6
    labels: list[str] = Field(default_factory=lambda: ["low", "high"])


class Color(Enum):
    RED = "red"


class RichConfig(BaseModel):
    model: str
    since: datetime = datetime(2026, 1, 2, 3, 4, 5)
    color: Color = Color.RED
    max_tokens: int = Field(default=256, alias="maxTokens")


class Routed(BaseModel):
    queue: str


class FanIn(BaseModel):
    notify: Any
    enrich: Any = None


def _noop(ctx: Any) -> None:
    return None


def stage(
    stage_id: str,
    *,
    input: type[BaseModel] | None = None,
    output: type[BaseModel] | None = None,
    config: type[BaseModel] | None = None,
    dependencies: list[str] | None = None,
) -> Stage:
    return define_stage(
        id=stage_id,
        input=input,
        output=output,
        config=config,
        dependencies=dependencies,
        execute=_noop,
    )


def triage_workflow() -> Workflow:
    return (
        define_workflow(id="ticket-triage", name="Ticket triage", input=Ticket)
        .pipe(stage("classify", input=Ticket, output=Triage, config=TriageConfig))
        .parallel([stage("notify"), stage("enrich", config=RichConfig)])
        .pipe(stage("route", input=FanIn, output=Routed, dependencies=["classify"]))
        .build()
    )


# --- stages -------------------------------------------------------------------------------------


def test_decorator_form_returns_a_stage() -> None:
    @define_stage(
        id="classify-urgency",
        name="Classify urgency",
        input=Ticket,
        output=Triage,
        config=TriageConfig,
        description="Labels urgency.",
        dependencies=["x"],
    )
    async def classify(ctx: Any) -> Triage:
        return Triage(urgency="low")

    assert isinstance(classify, Stage)
    assert classify.id == "classify-urgency"
    assert classify.name == "Classify urgency"
    assert classify.description == "Labels urgency."
    assert classify.input_model is Ticket
    assert classify.output_model is Triage
    assert classify.config_model is TriageConfig
    assert classify.dependencies == ("x",)
    assert classify.kind == "sync"
    assert classify.check_completion is None
    assert classify.retry_policy is None
    assert classify.start_to_close_timeout == timedelta(minutes=10)
    assert classify.heartbeat_timeout is None


def test_call_form_returns_a_stage_and_name_defaults_to_id() -> None:
    policy = RetryPolicy(maximum_attempts=3)
    made = define_stage(
        id="enrich",
        input=None,
        output=None,
        config=None,
        execute=_noop,
        retry_policy=policy,
        start_to_close_timeout=timedelta(seconds=30),
        heartbeat_timeout=timedelta(seconds=5),
    )
    assert made.name == "enrich"
    assert made.execute is _noop
    assert made.input_model is None
    assert made.retry_policy is policy
    assert made.start_to_close_timeout == timedelta(seconds=30)
    assert made.heartbeat_timeout == timedelta(seconds=5)
    # Identity semantics: usable in sets even though RetryPolicy is unhashable.
    assert len({made, dataclasses.replace(made)}) == 2


@pytest.mark.parametrize(
    "bad_id",
    ["", "-leading-dash", "has space", "slash/inside", "x" * 129, "trailing\n", 7],
)
def test_invalid_stage_id_is_rejected(bad_id: Any) -> None:
    with pytest.raises(WorkflowDefinitionError, match="invalid stage id") as info:
        define_stage(id=bad_id, execute=_noop)
    assert repr(bad_id) in str(info.value)


def test_longest_stage_id_is_accepted() -> None:
    assert define_stage(id="a" * 128, execute=_noop).id == "a" * 128


@pytest.mark.parametrize("argument", ["input", "output", "config"])
@pytest.mark.parametrize("value", [dict, Ticket(text="x"), "Ticket"])
def test_model_arguments_must_be_model_classes(argument: str, value: Any) -> None:
    with pytest.raises(WorkflowDefinitionError, match=f"{argument} must be a pydantic BaseModel"):
        define_stage(id="s", execute=_noop, **{argument: value})


def test_execute_must_be_callable() -> None:
    with pytest.raises(WorkflowDefinitionError, match="execute must be callable"):
        define_stage(id="s", execute="not a function")  # type: ignore[call-overload]


def test_dependencies_as_a_string_is_rejected() -> None:
    with pytest.raises(WorkflowDefinitionError, match="not a string"):
        define_stage(id="s", execute=_noop, dependencies="other")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start_to_close_timeout": timedelta(0)},
        {"heartbeat_timeout": timedelta(seconds=-1)},
        {"retry_policy": {"maximum_attempts": 3}},
    ],
)
def test_invalid_execution_options_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(WorkflowDefinitionError, match=next(iter(kwargs))):
        define_stage(id="s", execute=_noop, **kwargs)


def test_async_batch_stage() -> None:
    async def submit(ctx: Any) -> Suspend:
        return Suspend(state={"batch": "b1"}, poll_interval=timedelta(seconds=5))

    async def check(state: dict[str, Any], ctx: Any) -> CompletionCheck:
        return CompletionCheck(ready=True, output={"urgency": "low"})

    made = define_async_batch_stage(
        id="batch-score",
        input=None,
        output=Triage,
        config=None,
        execute=submit,
        check_completion=check,
    )
    assert made.kind == "async_batch"
    assert made.check_completion is check
    assert made.name == "batch-score"


def test_async_batch_stage_needs_check_completion() -> None:
    with pytest.raises(WorkflowDefinitionError, match="check_completion") as info:
        define_async_batch_stage(id="batch", execute=_noop)
    assert info.value.stage_id == "batch"


def test_default_config_is_json_able_defaults_of_fields_with_defaults() -> None:
    assert stage("a", config=TriageConfig).default_config() == {
        "threshold": 0.6,
        "labels": ["low", "high"],
    }
    # The required "model" is left out; the alias is what model_validate reads back.
    assert stage("b", config=RichConfig).default_config() == {
        "since": "2026-01-02T03:04:05",
        "color": "red",
        "maxTokens": 256,
    }
    assert stage("c").default_config() == {}


def test_parse_config() -> None:
    s = stage("a", config=TriageConfig)
    assert s.parse_config(None) == TriageConfig()
    assert s.parse_config({"threshold": 0.9}) == TriageConfig(threshold=0.9)
    with pytest.raises(ValidationError):
        s.parse_config({"threshold": "high"})
    assert stage("b").parse_config({"anything": 1}) is None


def test_parse_input_strips_extras_and_applies_defaults() -> None:
    s = stage("a", input=Ticket)
    parsed = s.parse_input({"text": "hi", "extra": 1})
    assert parsed == Ticket(text="hi", channel="email")
    assert not hasattr(parsed, "extra")
    with pytest.raises(ValidationError):
        s.parse_input({"channel": "chat"})
    assert stage("b").parse_input({"text": "ignored"}) is None


def test_parse_and_dump_output() -> None:
    s = stage("a", output=Triage)
    instance = Triage(urgency="low")
    assert s.parse_output(instance) is instance
    assert s.parse_output({"urgency": "high"}) == Triage(urgency="high")
    with pytest.raises(ValidationError):
        s.parse_output({"level": "high"})
    with pytest.raises(ValidationError):
        s.parse_output(Routed(queue="q"))
    assert s.dump_output(instance) == {"urgency": "low"}
    untyped = stage("b")
    assert untyped.parse_output([1, 2]) == [1, 2]
    assert untyped.dump_output({"k": "v"}) == {"k": "v"}


def test_result_values() -> None:
    assert StageResult(output=1).custom_metrics == {}
    suspend = Suspend()
    assert (suspend.state, suspend.poll_interval, suspend.max_wait) == ({}, None, None)
    assert (suspend.next_poll_at, suspend.custom_metrics) == (None, {})
    check = CompletionCheck(ready=False)
    assert (check.output, check.error, check.next_check_in, check.metrics) == (None, None, None, {})
    with pytest.raises(ValidationError):
        Suspend(poll_intervall=timedelta(seconds=1))  # type: ignore[call-arg]


# --- workflows: plan and lookups ----------------------------------------------------------------


def test_execution_plan_and_lookups() -> None:
    wf = triage_workflow()
    assert (wf.id, wf.name, wf.description) == ("ticket-triage", "Ticket triage", None)
    assert wf.input_model is Ticket
    assert wf.get_stage_ids() == ["classify", "notify", "enrich", "route"]
    assert wf.get_execution_plan() == [["classify"], ["notify", "enrich"], ["route"]]
    assert [s.id for s in wf.stages] == wf.get_stage_ids()
    assert wf.get_stage("enrich").id == "enrich"
    assert wf.has_stage("route") and not wf.has_stage("nope")
    assert [s.id for s in wf.get_stages_in_execution_group(2)] == ["notify", "enrich"]
    assert wf.get_stages_in_execution_group(0) == []
    assert wf.get_stages_in_execution_group(4) == []
    assert [wf.get_stage_index(i) for i in ("classify", "enrich", "route", "nope")] == [0, 2, 3, -1]
    assert [wf.get_execution_group_index(i) for i in wf.get_stage_ids()] == [1, 2, 2, 3]
    assert [wf.stage_number(i) for i in wf.get_stage_ids()] == [1, 2, 3, 4]


@pytest.mark.parametrize("method", ["get_stage", "get_execution_group_index", "stage_number"])
def test_unknown_stage_lookups_raise_key_error(method: str) -> None:
    with pytest.raises(KeyError, match="nope"):
        getattr(triage_workflow(), method)("nope")


def test_workflow_name_defaults_to_id() -> None:
    wf = define_workflow("w", description="d").pipe(stage("a")).build()
    assert (wf.name, wf.description, wf.input_model, wf.output_model) == ("w", "d", None, None)


def test_builder_calls_do_not_change_the_builder() -> None:
    base = define_workflow("w").pipe(stage("a"))
    first = base.pipe(stage("b")).build()
    second = base.pipe(stage("c")).build()
    assert first.get_stage_ids() == ["a", "b"]
    assert second.get_stage_ids() == ["a", "c"]
    assert base.build().get_stage_ids() == ["a"]


# --- workflows: definition errors ---------------------------------------------------------------


def test_duplicate_stage_id_across_groups() -> None:
    with pytest.raises(WorkflowDefinitionError, match="duplicate stage id 'a'") as info:
        define_workflow("w").pipe(stage("a")).parallel([stage("b"), stage("a")])
    assert info.value.stage_id == "a"


def test_duplicate_stage_id_within_a_parallel_group() -> None:
    with pytest.raises(WorkflowDefinitionError, match="duplicate stage id 'b'"):
        define_workflow("w").parallel([stage("b"), stage("b")])


def test_same_stage_object_twice_is_a_duplicate() -> None:
    a = stage("a")
    with pytest.raises(WorkflowDefinitionError, match="duplicate stage id 'a'"):
        define_workflow("w").pipe(a).pipe(a)


def test_dependency_on_a_later_or_unknown_stage() -> None:
    builder = define_workflow("w").pipe(stage("a")).pipe(stage("b"))
    with pytest.raises(WorkflowDefinitionError) as info:
        builder.pipe(stage("c", dependencies=["a", "zz", "yy"]))
    message = str(info.value)
    assert "stage 'c' depends on 'zz', 'yy'" in message
    assert "stages so far: 'a', 'b'" in message
    assert info.value.stage_id == "c"


def test_dependency_in_the_first_group_lists_no_stages() -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"stages so far: \(none\)"):
        define_workflow("w").pipe(stage("a", dependencies=["b"]))


def test_parallel_members_cannot_depend_on_each_other() -> None:
    with pytest.raises(WorkflowDefinitionError, match="its own parallel group"):
        define_workflow("w").parallel([stage("a"), stage("b", dependencies=["a"])])


def test_dependency_on_an_earlier_group_is_fine() -> None:
    wf = (
        define_workflow("w")
        .pipe(stage("a"))
        .parallel([stage("b", dependencies=["a"]), stage("c", dependencies=["a"])])
        .pipe(stage("d", dependencies=["a", "b", "c"]))
        .build()
    )
    assert wf.get_execution_plan() == [["a"], ["b", "c"], ["d"]]


def test_empty_workflow_fails_at_build() -> None:
    builder = define_workflow("w")
    with pytest.raises(WorkflowDefinitionError, match="'w' has no stages"):
        builder.build()


def test_empty_parallel_group_fails_at_the_call() -> None:
    with pytest.raises(WorkflowDefinitionError, match="at least one stage"):
        define_workflow("w").pipe(stage("a")).parallel([])


@pytest.mark.parametrize("not_a_stage", [_noop, "a", None])
def test_non_stages_are_rejected(not_a_stage: Any) -> None:
    with pytest.raises(WorkflowDefinitionError, match="expected a Stage"):
        define_workflow("w").pipe(not_a_stage)
    with pytest.raises(WorkflowDefinitionError, match="expected a Stage"):
        define_workflow("w").parallel([stage("a"), not_a_stage])


def test_parallel_needs_a_list() -> None:
    with pytest.raises(WorkflowDefinitionError, match="use pipe"):
        define_workflow("w").parallel(stage("a"))  # type: ignore[arg-type]
    with pytest.raises(WorkflowDefinitionError, match="takes a list of stages"):
        define_workflow("w").parallel(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad_id", ["", "white space", "-x", "x" * 129, None])
def test_invalid_workflow_id(bad_id: Any) -> None:
    with pytest.raises(WorkflowDefinitionError, match="invalid workflow id"):
        define_workflow(bad_id)


@pytest.mark.parametrize("argument", ["input", "output"])
def test_workflow_models_must_be_model_classes(argument: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match=f"{argument} must be a pydantic BaseModel"):
        kwargs: dict[str, Any] = {argument: dict}
        define_workflow("w", **kwargs)


def test_workflow_constructed_directly_is_checked_too() -> None:
    a = stage("a")
    with pytest.raises(WorkflowDefinitionError, match="duplicate stage id"):
        Workflow(
            id="w",
            name="w",
            description=None,
            input_model=None,
            output_model=None,
            groups=((a,), (a,)),
        )
    with pytest.raises(WorkflowDefinitionError, match="no stages"):
        Workflow(id="w", name="w", description=None, input_model=None, output_model=None, groups=())


# --- workflows: input model fit -----------------------------------------------------------------


def test_input_needing_fields_the_previous_output_lacks() -> None:
    builder = define_workflow("w").pipe(stage("classify", output=Triage))
    with pytest.raises(WorkflowDefinitionError) as info:
        builder.pipe(stage("route", input=Ticket))
    message = str(info.value)
    assert "stage 'route'" in message
    assert "stage 'classify'" in message
    assert "'text'" in message
    assert "'channel'" not in message  # optional fields are not required
    assert info.value.stage_id == "route"


def test_input_fitting_the_previous_output() -> None:
    class UrgencyOnly(BaseModel):
        urgency: str
        note: str = ""

    wf = (
        define_workflow("w")
        .pipe(stage("classify", output=Triage))
        .pipe(stage("route", input=UrgencyOnly))
        .build()
    )
    assert wf.get_stage_ids() == ["classify", "route"]


def test_input_field_matched_through_alias() -> None:
    class Aliased(BaseModel):
        level: str = Field(alias="urgency")

    builder = define_workflow("w").pipe(stage("classify", output=Triage))
    assert builder.pipe(stage("route", input=Aliased)).build().has_stage("route")


def test_after_parallel_required_fields_must_be_member_ids() -> None:
    builder = define_workflow("w").parallel([stage("enrich"), stage("audit")])
    with pytest.raises(WorkflowDefinitionError, match="'notify'") as info:
        builder.pipe(stage("route", input=FanIn))
    assert "parallel group 'enrich', 'audit'" in str(info.value)
    # FanIn.enrich has a default, so a group without "enrich" still fits.
    ok = define_workflow("w").parallel([stage("notify"), stage("audit")])
    assert ok.pipe(stage("route", input=FanIn)).build().has_stage("route")


def test_first_group_input_checked_against_workflow_input() -> None:
    with pytest.raises(WorkflowDefinitionError, match="workflow input model Routed"):
        define_workflow("w", input=Routed).pipe(stage("classify", input=Ticket))
    with pytest.raises(WorkflowDefinitionError, match="'text'"):
        define_workflow("w", input=Routed).parallel([stage("a"), stage("b", input=Ticket)])


def test_input_check_skipped_when_a_model_is_missing() -> None:
    wf = (
        define_workflow("w")
        .pipe(stage("first", input=Ticket))  # no workflow input model
        .pipe(stage("second", input=Routed))  # "first" declares no output model
        .pipe(stage("third", output=Triage))
        .pipe(stage("fourth"))  # no input model
        .build()
    )
    assert len(wf.get_execution_plan()) == 4


# --- workflows: config and input ----------------------------------------------------------------


def test_default_config_covers_every_stage() -> None:
    assert triage_workflow().get_default_config() == {
        "classify": {"threshold": 0.6, "labels": ["low", "high"]},
        "notify": {},
        "enrich": {"since": "2026-01-02T03:04:05", "color": "red", "maxTokens": 256},
        "route": {},
    }


def test_validate_config_valid() -> None:
    result = triage_workflow().validate_config(
        {"classify": {"threshold": 0.9}, "enrich": {"model": "m"}}
    )
    assert result.valid
    assert result.errors == []


def test_validate_config_reports_each_failing_stage() -> None:
    result = triage_workflow().validate_config(
        {"classify": {"threshold": "high", "labels": [1]}, "ghost": {}}
    )
    assert not result.valid
    assert [issue.stage_id for issue in result.errors] == ["classify", "enrich", "ghost"]
    classify, enrich, ghost = result.errors
    assert classify.error == (
        "Config validation failed: threshold: Input should be a valid number, unable to parse "
        "string as a number; labels.0: Input should be a valid string"
    )
    # A stage without a slice is validated against {}: its required field is reported.
    assert enrich == ConfigIssue(
        stage_id="enrich", error="Config validation failed: model: Field required"
    )
    assert ghost.error.startswith("Config validation failed: ")
    assert "'ghost'" in ghost.error


def test_validate_config_non_object_slice() -> None:
    result = triage_workflow().validate_config({"classify": 3, "enrich": {"model": "m"}})
    assert [issue.error for issue in result.errors] == [
        "Config validation failed: (root): expected an object, got int"
    ]


def test_parse_input() -> None:
    wf = triage_workflow()
    assert wf.parse_input({"text": "hi", "junk": 1}) == Ticket(text="hi")
    with pytest.raises(InvalidInputError) as info:
        wf.parse_input({"channel": 5})
    assert str(info.value) == (
        "Invalid workflow input: text: Field required; channel: Input should be a valid string"
    )
    with pytest.raises(InvalidInputError, match=r"^Invalid workflow input: \(root\): "):
        wf.parse_input("not an object")
    untyped = define_workflow("w").pipe(stage("a")).build()
    raw = {"anything": [1]}
    assert untyped.parse_input(raw) is raw


def test_merge_config_applies_defaults_per_stage() -> None:
    merged = triage_workflow().merge_config(
        {"classify": {"threshold": 0.9}, "enrich": {"model": "m"}}
    )
    assert merged == {
        "classify": {"threshold": 0.9, "labels": ["low", "high"]},
        "notify": {},
        "enrich": {"since": "2026-01-02T03:04:05", "color": "red", "maxTokens": 256, "model": "m"},
        "route": {},
    }


def test_merge_config_none_means_defaults() -> None:
    wf = define_workflow("w").pipe(stage("a", config=TriageConfig)).build()
    assert wf.merge_config(None) == wf.get_default_config()
    assert wf.merge_config({}) == wf.get_default_config()


def test_merge_config_rejects_invalid_slices() -> None:
    with pytest.raises(InvalidConfigError) as info:
        triage_workflow().merge_config({"classify": {"threshold": "high"}})
    assert str(info.value) == (
        "Invalid workflow config: classify: threshold: Input should be a valid number, unable to "
        "parse string as a number, enrich: model: Field required"
    )
    assert info.value.stage_id == "classify"


def test_merge_config_rejects_a_non_object_slice() -> None:
    with pytest.raises(InvalidConfigError, match="enrich: \\(root\\): expected an object") as info:
        triage_workflow().merge_config({"enrich": ["m"]})
    assert info.value.stage_id == "enrich"


def test_merge_config_rejects_unknown_stage_ids() -> None:
    with pytest.raises(InvalidConfigError, match="^Invalid workflow config: 'ghost'") as info:
        triage_workflow().merge_config({"enrich": {"model": "m"}, "ghost": {}})
    assert info.value.stage_id == "ghost"
    assert "'classify'" in str(info.value)
