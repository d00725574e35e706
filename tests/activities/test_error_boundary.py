"""Engine errors leave an activity as ``ApplicationError``s typed by their class name:
non-retryable where no retry can help, retryable otherwise; database errors are untouched."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import OperationalError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

# The engine package first: its __init__ imports the worker, which imports the activities, so
# importing activities.run first would meet it half-initialized.
import engine  # noqa: F401

# isort: split
from activities.run import RunActivities
from activities.stage import StageActivities
from engine.core.records import StageOutcomeStatus
from engine.core.workflows import Workflow
from engine.errors import (
    AnnotationError,
    CommitRefusedError,
    InvalidInputError,
    InvalidStateError,
    RunNotFoundError,
    SchemaOutOfDateError,
)
from engine.store import SqlStore
from temporal_workflows.payloads import FinalizeRun, StageCommit, StageOutcome, StageTask
from tests.helpers import stage_spec


class _Strict(BaseModel):
    count: int


def _validation_error() -> ValidationError:
    try:
        _Strict.model_validate({"count": "many"})
    except ValidationError as error:
        return error
    raise AssertionError("the model took a bad count")


class _FailingStore:
    """A side-store whose writes raise ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def commit_stage(self, commit: StageCommit) -> Any:
        raise self.error

    async def finalize_run(self, run_id: str, **fields: Any) -> bool:
        raise self.error

    async def begin_stage(self, *args: Any) -> Any:
        raise self.error


def _commit() -> StageCommit:
    return StageCommit(
        run_id="run-1",
        stage=stage_spec("only", 1, 1),
        attempt=0,
        commit_id="commit-1",
        outcome=StageOutcome(status=StageOutcomeStatus.COMPLETED, output={"a": 1}),
        now=datetime.now(UTC),
    )


async def _commit_through_activity(error: BaseException) -> None:
    activities = RunActivities(cast(SqlStore, _FailingStore(error)), {})
    await ActivityEnvironment().run(activities.commit_stage, _commit())


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(InvalidInputError("input: field required"), id="invalid-input"),
        pytest.param(AnnotationError("bad key 'x y'"), id="annotation"),
        pytest.param(InvalidStateError("run is CANCELLED"), id="invalid-state"),
        pytest.param(RunNotFoundError("Run run-1 not found"), id="run-not-found"),
        pytest.param(CommitRefusedError("refused"), id="commit-refused"),
    ],
)
async def test_an_engine_error_no_retry_can_help_is_non_retryable(error: Exception) -> None:
    with pytest.raises(ApplicationError) as raised:
        await _commit_through_activity(error)

    assert raised.value.type == type(error).__name__
    assert raised.value.non_retryable
    assert raised.value.message == str(error)
    assert raised.value.__cause__ is error  # the original stays on the chain for the logs


async def test_a_validation_error_is_non_retryable_and_names_the_field() -> None:
    error = _validation_error()

    with pytest.raises(ApplicationError) as raised:
        await _commit_through_activity(error)

    assert raised.value.type == "ValidationError"
    assert raised.value.non_retryable
    assert raised.value.message.startswith("invalid _Strict: count: ")


async def test_an_engine_error_a_retry_may_cure_stays_retryable() -> None:
    with pytest.raises(ApplicationError) as raised:
        await _commit_through_activity(SchemaOutOfDateError("schema behind: run wfe db upgrade"))

    assert raised.value.type == "SchemaOutOfDateError"
    assert not raised.value.non_retryable


async def test_a_database_error_leaves_untouched_and_retries() -> None:
    error = OperationalError("UPDATE ...", {}, Exception("server closed the connection"))

    with pytest.raises(OperationalError) as raised:
        await _commit_through_activity(error)

    assert raised.value is error


async def test_every_run_activity_translates() -> None:
    activities = RunActivities(cast(SqlStore, _FailingStore(InvalidStateError("no"))), {})
    final = FinalizeRun(
        run_id="run-1",
        commit_id="final-1",
        status="FAILED",  # type: ignore[arg-type]
        error="boom",
        now=datetime.now(UTC),
    )

    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.finalize_run, final)

    assert raised.value.type == "InvalidStateError" and raised.value.non_retryable


async def test_the_stage_activity_translates_the_engine_errors_around_the_stage() -> None:
    store = cast(SqlStore, _FailingStore(InvalidStateError("run run-1 is CANCELLED")))
    activities = StageActivities(store, {"wf": cast(Workflow, object())})
    task = StageTask(run_id="run-1", workflow_id="wf", stage=stage_spec("only", 1, 1), attempt=0)

    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.execute_stage, task)

    assert raised.value.type == "InvalidStateError" and raised.value.non_retryable
