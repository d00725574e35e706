"""A stage commit always settles: poisoned values, refused rows and retried commits.

On SQLite and PostgreSQL. The stage activity checks its outcome before it commits; these tests
call the store directly, as the workflow's ``wfe.commit_stage`` local activity does with
outcomes the workflow itself built, so the store's own check is what is proven here.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from engine.core.annotations import AnnotationDraft
from engine.core.payloads import LogDraft
from engine.core.records import RunStatus
from engine.store import SqlStore
from engine.store.contract import AnnotationFilters
from engine.store.models import WorkflowAnnotation, WorkflowLog
from tests.store.test_one_statement import last_stage_commit, running_first_stage, stage_commit


async def stage_of(store: SqlStore, run_id: str) -> object:
    (stage,) = [s for s in await store.list_stages(run_id) if s.stage_id == "first"]
    return stage


async def test_a_poisoned_outcome_is_committed_failed_naming_the_place(store: SqlStore) -> None:
    run_id, record_id = await running_first_stage(store)
    commit = last_stage_commit(run_id, record_id, output={"answer": math.nan})

    result = await store.commit_stage(commit)

    assert result.committed and not result.completed_run
    assert result.failed_with is not None and "output.answer is NaN" in result.failed_with
    stage = await stage_of(store, run_id)
    assert stage.status == RunStatus.FAILED  # type: ignore[attr-defined]
    assert stage.error_message == result.failed_with  # type: ignore[attr-defined]
    assert stage.output_data is None  # type: ignore[attr-defined]
    # The storable part of the buffer (its log and annotations) is kept.
    keys = {a.key for a in await store.list_annotations(run_id, AnnotationFilters())}
    assert "decision.outcome" in keys
    assert "thinking" in {log.message for log in await store.list_logs(run_id)}


async def test_an_error_message_with_nul_is_stored_spelled_out(store: SqlStore) -> None:
    run_id, record_id = await running_first_stage(store)
    commit = last_stage_commit(run_id, record_id, status="failed", output=None, error="a\x00b")

    result = await store.commit_stage(commit)

    assert result.committed and result.failed_with is None
    assert (await stage_of(store, run_id)).error_message == "a\\x00b"  # type: ignore[attr-defined]


@pytest.mark.parametrize("last", [True, False], ids=["completing the run", "opening the next"])
async def test_rows_the_database_refuses_fail_the_stage_with_its_reason(
    store: SqlStore, last: bool
) -> None:
    """Refused, not cut short: on PostgreSQL both commits are one statement, whose casts
    must not truncate a string to its column's length."""
    if store.is_sqlite:
        pytest.skip("SQLite does not enforce VARCHAR lengths, so it refuses nothing here")
    run_id, record_id = await running_first_stage(store)
    now = datetime.now(UTC)
    # A log level longer than its VARCHAR(8) column passes the value check (it is valid
    # text) and is refused by PostgreSQL with DataError on every try.
    bad_log = LogDraft(at=now, level="VERBOSE-DEBUG", message="x")
    if last:
        commit = last_stage_commit(run_id, record_id, logs=[bad_log])
    else:
        commit = stage_commit(run_id, record_id)
        commit = commit.model_copy(
            update={"outcome": commit.outcome.model_copy(update={"logs": [bad_log]})}
        )

    result = await store.commit_stage(commit)

    assert result.committed
    assert result.failed_with is not None
    assert result.failed_with.startswith("the side-store refused the stage's outcome:")
    assert "character varying(8)" in result.failed_with
    stage = await stage_of(store, run_id)
    assert stage.status == RunStatus.FAILED  # type: ignore[attr-defined]
    async with store.transaction() as session:
        annotations = await session.scalar(
            select(func.count()).where(WorkflowAnnotation.workflow_stage_record_id == record_id)
        )
        logs = await session.scalar(
            select(func.count()).where(
                WorkflowLog.workflow_run_id == run_id, WorkflowLog.level != "ERROR"
            )
        )
    assert annotations == 0 and logs == 0  # nothing of the refused outcome, all or nothing


async def test_a_commit_retried_after_it_completed_the_run_is_a_duplicate(
    store: SqlStore,
) -> None:
    run_id, record_id = await running_first_stage(store)
    commit = last_stage_commit(run_id, record_id)

    first = await store.commit_stage(commit)
    again = await store.commit_stage(commit)

    assert first.committed and first.completed_run and not first.duplicate
    assert again.committed and again.duplicate and again.completed_run
    run = await store.get_run(run_id)
    assert run.status == RunStatus.COMPLETED
    annotations = await store.list_annotations(run_id, AnnotationFilters())
    assert sum(a.key == "decision.outcome" for a in annotations) == 1


async def test_a_commit_retried_after_its_run_failed_is_a_duplicate(store: SqlStore) -> None:
    run_id, record_id = await running_first_stage(store)
    commit = last_stage_commit(run_id, record_id, status="failed", output=None, error="boom")

    first = await store.commit_stage(commit)
    await store.finalize_run(
        run_id,
        status="FAILED",
        output=None,
        error="boom",
        now=datetime.now(UTC),
        commit_id=f"{run_id}:final",
    )
    again = await store.commit_stage(commit)

    assert first.committed and not first.duplicate
    assert again.committed and again.duplicate and not again.completed_run
    assert (await store.get_run(run_id)).status == RunStatus.FAILED


async def test_a_commit_against_a_cancelled_run_is_not_a_duplicate(store: SqlStore) -> None:
    run_id, record_id = await running_first_stage(store)
    await store.cancel_run(run_id, "stop", causation_id=run_id)

    result = await store.commit_stage(last_stage_commit(run_id, record_id))

    assert not result.committed and not result.duplicate


async def test_a_deep_value_in_a_commit_is_refused_not_stored(store: SqlStore) -> None:
    deep: object = "bottom"
    for _ in range(300):
        deep = [deep]
    run_id, record_id = await running_first_stage(store)
    draft = AnnotationDraft(key="notes.deep", value=deep)
    commit = last_stage_commit(run_id, record_id, annotations=[draft])

    result = await store.commit_stage(commit)

    assert result.failed_with is not None
    assert "annotations[0] (notes.deep) is nested more than 200 levels deep" in result.failed_with
    keys = {a.key for a in await store.list_annotations(run_id, AnnotationFilters())}
    assert "notes.deep" not in keys
