"""The tamper-evident record chain (engine.store.chain) on both backends, at the store level.

Every write path appends its links; ``verify_chain`` passes on what the engine wrote and
names the first record that was changed, deleted or inserted by hand in SQL afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from engine.core.annotations import AnnotationDraft
from engine.core.evidence import (
    ChainVerification,
    canonical_json,
    link_hash,
    link_records,
    normal,
    reference,
    timestamp,
)
from engine.core.records import RunStatus
from engine.store import SqlStore
from engine.store.chain import (
    ANNOTATION_FIELDS,
    annotation_link,
    annotation_references,
    annotation_text,
    annotation_texts,
    stage_link,
    write_link,
)
from engine.store.contract import NewStage, RowContext
from engine.store.models import ChainLink, WorkflowAnnotation
from tests.store.test_one_statement import (
    FIRST,
    SECOND,
    _without_run_ids,
    counted,
    last_stage_commit,
    running_first_stage,
    stage_commit,
)
from tests.store.test_one_statement import (
    written as written_rows,
)

CREATED = 1
"""Links of a new run: one write, of the run and its two annotations."""
CREATED_RECORDS = 3


async def _sql(store: SqlStore, statement: str, **params: Any) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(text(statement), params)


async def committed_run(store: SqlStore) -> str:
    """A run whose first stage committed (one statement on PostgreSQL) with 4 annotations."""
    run_id, record_id = await running_first_stage(store)
    result = await store.commit_stage(stage_commit(run_id, record_id))
    assert result.committed
    return run_id


async def test_canonical_json_is_sorted_compact_utf8_and_numbers_normal() -> None:
    assert canonical_json({"b": 1.0, "a": "é", "c": [1e300, 0.1, None, True]}) == (
        '{"a":"é","b":1,"c":[1' + "0" * 300 + ",0.1,null,true]}"
    )
    assert link_hash(None, "{}") == link_hash("", "{}")


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def annotation_rows(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {
        name: draw(st.none() | st.booleans() | st.integers() | st.text())
        for name in ANNOTATION_FIELDS
    }
    row["created_at"] = draw(
        st.datetimes(timezones=st.sampled_from([UTC, None])) | st.text(min_size=1)
    )
    row["value"], row["payload"] = draw(_JSON), draw(_JSON)
    row["value_number"] = draw(
        st.none() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    )
    # A typed column holding the very value object, as draft_rows writes it: its text is the
    # value's, taken rather than encoded again.
    for column in draw(st.sets(st.sampled_from(["value_text", "value_number", "value_bool"]))):
        row[column] = row["value"]
    return row


def _defined(value: Any) -> str:
    """Canonical JSON as the module doc of ``engine.core.evidence`` defines it: the encoder
    over the normal form, with none of the shortcuts the engine takes."""
    return json.dumps(
        normal(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


@given(_JSON)
@settings(max_examples=300, deadline=None)
def test_canonical_json_is_the_defined_form(value: Any) -> None:
    assert canonical_json(value) == _defined(value)


@given(
    st.integers(min_value=-(2**60), max_value=2**60).map(float)
    | st.floats(allow_nan=False, allow_infinity=False).filter(float.is_integer)
    | st.sampled_from([2.0**53, -(2.0**53), 2.0**53 + 2, 1e16, 1e300, -0.0])
)
@settings(max_examples=300, deadline=None)
def test_an_integral_float_is_the_integer_its_shortest_decimal_reads(value: float) -> None:
    # The definition: the shortest decimal that reads back as the double, as an integer (1e300
    # is 1 and 300 zeros, not the double's exact binary value); int() is taken below 2**53.
    assert canonical_json(value) == str(int(Decimal(repr(value))))


@given(annotation_rows())
@settings(max_examples=300, deadline=None)
def test_an_annotations_link_text_is_its_canonical_json(row: dict[str, Any]) -> None:
    # The link text is written out field by field for speed; this is the definition it must
    # match byte for byte, or a third party recomputing the chain would get other hashes.
    fields = {name: row[name] for name in ANNOTATION_FIELDS}
    created = row["created_at"]
    fields["created_at"] = timestamp(created) if isinstance(created, datetime) else created
    assert annotation_text(row) == _defined({**fields, "kind": "annotation"})


@st.composite
def annotation_batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Rows written together: each takes some of its fields from the row before (the runs that
    ``annotation_texts`` encodes once), as it is or as an equal value of another type."""
    rows = [draw(annotation_rows())]
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        row = draw(annotation_rows())
        for name in ANNOTATION_FIELDS:
            kept = rows[-1][name]
            choice = draw(st.sampled_from(["own", "kept", "equal"]))
            if choice == "kept":
                row[name] = kept
            elif choice == "equal" and type(kept) in (int, bool):
                row[name] = bool(kept) if type(kept) is int else int(kept)
        rows.append(row)
    return rows


@given(annotation_batches())
@settings(max_examples=300, deadline=None)
def test_the_link_texts_of_rows_written_together_are_each_rows_own(
    rows: list[dict[str, Any]],
) -> None:
    assert annotation_texts(rows) == [annotation_text(row) for row in rows]
    for row, written in zip(rows, annotation_texts(rows), strict=True):
        fields = {name: row[name] for name in ANNOTATION_FIELDS}
        created = row["created_at"]
        fields["created_at"] = timestamp(created) if isinstance(created, datetime) else created
        assert written == _defined({**fields, "kind": "annotation"})


def _records(found: ChainVerification) -> list[str]:
    """The kinds of the records the links cover, in order."""
    return [kind for link in found.links for kind, _ in link_records(link)]


@given(annotation_batches())
@settings(max_examples=200, deadline=None)
def test_a_writes_references_to_annotations_are_the_defined_form(
    rows: list[dict[str, Any]],
) -> None:
    for row, written in zip(rows, annotation_references(rows), strict=True):
        text = annotation_text(row)
        assert written == reference("annotation", str(row["id"]), text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        assert json.loads(written) == {"id": str(row["id"]), "kind": "annotation", "sha256": digest}


async def test_every_write_adds_a_link_and_the_chain_verifies(store: SqlStore) -> None:
    run_id = await committed_run(store)
    found = await store.verify_chain(run_id)
    assert found.ok, found.first_bad
    # one write each: the run with its 2 annotations; the outcome with its 4
    assert found.links_checked == CREATED + 1
    assert [link["kind"] for link in found.links] == ["write", "write"]
    assert _records(found) == ["run", *["annotation"] * 2, "stage", *["annotation"] * 4]
    assert found.records_checked == CREATED_RECORDS + 5
    await store.attach_annotations(
        run_id, [AnnotationDraft(key="review.ok", value=True)], RowContext(run_id, "run"), "c1"
    )
    found = await store.verify_chain(run_id)
    assert found.ok and found.links_checked == CREATED + 2
    assert found.links[-1]["kind"] == "annotation"  # a write of one record: its own link


@pytest.mark.parametrize("last", [True, False], ids=["completing the run", "opening the next"])
async def test_the_benchmarks_chain_off_commit_writes_the_same_without_links(
    store: SqlStore, last: bool
) -> None:
    """``bench.chain_off``, the counterfactual issue 21's budget is judged on, commits what
    the engine commits (the run completed, or the next stage opened) and adds no link."""
    from bench.chain_off import chain_off

    make = last_stage_commit if last else stage_commit
    chained, unchained = await running_first_stage(store), await running_first_stage(store)
    assert (await store.commit_stage(make(*chained))).committed
    with chain_off():
        result = await store.commit_stage(make(*unchained))
    assert result.committed and result.completed_run == last
    assert set(result.opened) == (set() if last else {"second"})

    async def rows(run_id: str) -> Any:
        found = await written_rows(store, run_id)
        found["run"] = [run[:-1] for run in found["run"]]  # all but the chain's length
        found["events"] = [(seq, kind) for seq, kind, _ in found["events"]]  # (durations)
        return _without_run_ids(found, run_id)

    assert await rows(chained[0]) == await rows(unchained[0])
    status = (await written_rows(store, unchained[0]))["run"][0][3]
    assert status == (RunStatus.COMPLETED if last else RunStatus.RUNNING)
    assert len(await _links(store, chained[0])) == len(await _links(store, unchained[0])) + 1


async def _links(store: SqlStore, run_id: str) -> list[ChainLink]:
    """The run's link rows, in order."""
    async with store.sessions() as session:
        found = await session.scalars(
            select(ChainLink)
            .where(ChainLink.workflow_run_id == run_id)
            .order_by(ChainLink.sequence)
        )
        return list(found.all())


async def test_a_writes_link_is_the_defined_text(store: SqlStore) -> None:
    """A third party recomputes a write's link from the definition in engine.core.evidence."""
    run_id = await committed_run(store)
    links = await _links(store, run_id)
    async with store.sessions() as session:
        rows = (
            (
                await session.execute(
                    select(*(WorkflowAnnotation.__table__.c[n] for n in ANNOTATION_FIELDS))
                    .where(WorkflowAnnotation.workflow_run_id == run_id)
                    .where(WorkflowAnnotation.scope == "stage")
                )
            )
            .mappings()
            .all()
        )
    commit = links[CREATED]
    members = json.loads(commit.body or "")
    stage, references = members[0], members[1:]
    # The link's record is the stage record its outcome applied to (the statement's own row).
    assert (commit.kind, commit.record_id) == ("write", stage["id"])
    by_id = {row["id"]: row for row in rows}
    expected = [stage]
    for ref in references:
        text = _defined({**_fields(by_id[ref["id"]]), "kind": "annotation"})
        assert ref == {
            "id": ref["id"],
            "kind": "annotation",
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
        expected.append(ref)
    assert commit.body == _defined(expected)
    assert commit.hash == hashlib.sha256((links[0].hash + _defined(expected)).encode()).hexdigest()


def test_a_write_of_one_record_keeps_its_own_link() -> None:
    link = stage_link("r1", "s1", 1, "COMPLETED", {"x": 1}, None)
    assert write_link([link]) is link
    row = {name: None for name in ANNOTATION_FIELDS} | {"id": "a1", "key": "k"}
    assert write_link([annotation_link(row)]).kind == "annotation"


def _fields(row: Any) -> dict[str, Any]:
    fields = {name: row[name] for name in ANNOTATION_FIELDS}
    fields["created_at"] = timestamp(row["created_at"])
    return fields


async def test_a_failed_and_a_general_commit_verify(store: SqlStore) -> None:
    run_id, record_id = await running_first_stage(store)
    commit = stage_commit(run_id, record_id, "failed")
    # An idempotency key keeps it off the one-statement path: the general commit.
    drafts = [AnnotationDraft(key="k.keyed", value=[1, 2.5], idempotency_key="once")]
    commit = commit.model_copy(
        update={"outcome": commit.outcome.model_copy(update={"annotations": drafts})}
    )
    assert (await store.commit_stage(commit)).committed
    found = await store.verify_chain(run_id)
    assert found.ok and found.links_checked == CREATED + 1
    assert _records(found)[CREATED_RECORDS:] == ["stage", "annotation"]


async def test_concurrent_attaches_make_one_chain(store: SqlStore) -> None:
    run_id = await committed_run(store)

    async def attach(number: int) -> None:
        draft = AnnotationDraft(key=f"c.k{number}", value=number)
        await store.attach_annotations(run_id, [draft], RowContext(run_id, "run"), f"c{number}")

    await asyncio.gather(*(attach(n) for n in range(20)))
    found = await store.verify_chain(run_id)
    assert found.ok, found.first_bad
    assert found.links_checked == CREATED + 1 + 20


async def test_rerun_keeps_the_chain_valid(store: SqlStore) -> None:
    run_id, record_id = await running_first_stage(store)
    commit = stage_commit(run_id, record_id, "failed")
    assert (await store.commit_stage(commit)).committed
    await store.finalize_run(
        run_id, status="FAILED", output=None, error="boom", now=datetime.now(UTC), commit_id="f1"
    )
    await store.rerun_from(
        run_id,
        target_group=1,
        groups_before=[],
        target_stages=[NewStage(FIRST.stage_id, FIRST.name, 1, 1, FIRST.config)],
        temporal_workflow_id="wfe-run-{attempt}",
        causation_id="rerun-1",
    )
    found = await store.verify_chain(run_id)
    assert found.ok, found.first_bad
    assert found.links[-1]["kind"] == "rerun"


def _bad(found: ChainVerification) -> Any:
    assert not found.ok and found.first_bad is not None
    return found.first_bad


async def test_a_changed_annotation_is_named(store: SqlStore) -> None:
    run_id = await committed_run(store)
    await _sql(
        store,
        "UPDATE workflow_annotations SET value_text = 'no' WHERE key = 'decision.outcome'",
    )
    bad = _bad(await store.verify_chain(run_id))
    assert (bad.kind, bad.label) == ("annotation", "decision.outcome")
    assert bad.holds["value_text"] == "no"
    assert "decision.outcome" in bad.describe()


async def test_a_deleted_annotation_is_named(store: SqlStore) -> None:
    run_id = await committed_run(store)
    async with store.sessions() as session:
        row_id = await session.scalar(
            select(WorkflowAnnotation.id).where(WorkflowAnnotation.key == "quality.score")
        )
    await _sql(store, "DELETE FROM workflow_annotations WHERE id = :id", id=row_id)
    bad = _bad(await store.verify_chain(run_id))
    assert (bad.kind, bad.record_id, bad.sequence) == ("annotation", row_id, CREATED + 1)


async def test_an_inserted_annotation_is_named(store: SqlStore) -> None:
    run_id = await committed_run(store)
    await _sql(
        store,
        "INSERT INTO workflow_annotations (id, created_at, workflow_run_id, attempt, scope, "
        "key, value) VALUES ('forged', :now, :run, 0, 'run', 'decision.forged', '\"x\"')",
        now="2026-12-07 00:00:00",
        run=run_id,
    )
    bad = _bad(await store.verify_chain(run_id))
    assert (bad.kind, bad.record_id, bad.label) == ("annotation", "forged", "decision.forged")


async def test_a_changed_stage_outcome_is_named(store: SqlStore) -> None:
    run_id, record_id = await running_first_stage(store)
    assert (await store.commit_stage(stage_commit(run_id, record_id, "failed"))).committed
    await _sql(
        store,
        "UPDATE workflow_stages SET status = 'COMPLETED', error_message = NULL WHERE id = :id",
        id=record_id,
    )
    bad = _bad(await store.verify_chain(run_id))
    assert (bad.kind, bad.record_id, bad.label) == ("stage", record_id, FIRST.stage_id)
    assert bad.holds["status"] == "COMPLETED"


async def test_a_changed_input_is_named(store: SqlStore) -> None:
    run_id = await committed_run(store)
    await _sql(store, "UPDATE workflow_runs SET input = '{\"x\": 2}' WHERE id = :id", id=run_id)
    bad = _bad(await store.verify_chain(run_id))
    assert (bad.kind, bad.sequence) == ("run", 1)


async def _attach(store: SqlStore, run_id: str, number: int) -> None:
    draft = AnnotationDraft(key=f"c.k{number}", value=number)
    await store.attach_annotations(run_id, [draft], RowContext(run_id, "run"), f"c{number}")


async def test_deleted_inserted_and_rewritten_links_are_named(store: SqlStore) -> None:
    run_id = await committed_run(store)
    for number in range(2):
        await _attach(store, run_id, number)
    last = CREATED + 3
    await _sql(store, "DELETE FROM workflow_chain_links WHERE sequence = :n", n=last)
    assert _bad(await store.verify_chain(run_id)).kind == "head"
    await _sql(store, "DELETE FROM workflow_chain_links WHERE sequence = 2")
    assert _bad(await store.verify_chain(run_id)).sequence == 2
    await _sql(
        store,
        "INSERT INTO workflow_chain_links (workflow_run_id, sequence, kind, record_id, body, "
        "hash) VALUES (:run, 2, 'rerun', :run, '{}', 'ab')",
        run=run_id,
    )
    bad = _bad(await store.verify_chain(run_id))
    assert (bad.sequence, bad.kind) == (2, "rerun")


async def test_a_stage_link_rewritten_with_a_fresh_hash_breaks_the_next(store: SqlStore) -> None:
    """Rewriting a link's record and hash consistently still breaks the link after it."""
    run_id = await committed_run(store)
    await _attach(store, run_id, 0)
    links = await _links(store, run_id)
    stage = links[CREATED]
    assert stage.kind == "write" and stage.body is not None and "COMPLETED" in stage.body
    forged = stage.body.replace("COMPLETED", "FAILED")
    await _sql(
        store,
        "UPDATE workflow_chain_links SET body = :body, hash = :hash "
        "WHERE workflow_run_id = :run AND sequence = :n",
        body=forged,
        hash=link_hash(links[CREATED - 1].hash, forged),
        run=run_id,
        n=stage.sequence,
    )
    bad = _bad(await store.verify_chain(run_id))
    assert bad.sequence == stage.sequence + 1


async def test_the_second_stage_links_after_the_first(store: SqlStore) -> None:
    run_id, record_id = await running_first_stage(store)
    first = await store.commit_stage(stage_commit(run_id, record_id))
    commit = stage_commit(run_id, first.opened[SECOND.stage_id])
    commit = commit.model_copy(update={"stage": SECOND, "open_next": [], "completes_run": True})
    assert (await store.commit_stage(commit)).committed
    found = await store.verify_chain(run_id)
    assert found.ok, found.first_bad
    assert _records(found).count("stage") == 2


async def test_the_postgresql_commit_stays_one_statement(store: SqlStore) -> None:
    if store.is_sqlite:
        return
    run_id, record_id = await running_first_stage(store)
    with counted(store) as statements:
        assert (await store.commit_stage(stage_commit(run_id, record_id))).committed
    assert len(statements) == 1
    assert (await store.verify_chain(run_id)).ok


async def test_a_one_statement_commit_racing_attaches_makes_one_chain(store: SqlStore) -> None:
    """The commit's head, read under the run's lock after waiting for an attach, is the
    attach's: the links follow it (or the statement collides and the general commit runs)."""
    for _ in range(3):
        run_id, record_id = await running_first_stage(store)

        async def attach(number: int, run_id: str = run_id) -> None:
            draft = AnnotationDraft(key=f"c.k{number}", value=number)
            await store.attach_annotations(run_id, [draft], RowContext(run_id, "run"), f"c{number}")

        commit = store.commit_stage(stage_commit(run_id, record_id))
        results = await asyncio.gather(attach(0), attach(1), commit, attach(2), attach(3))
        assert results[2].committed
        found = await store.verify_chain(run_id)
        assert found.ok, found.first_bad
        assert found.links_checked == CREATED + 1 + 4


async def test_the_legacy_migration_is_chained(store: SqlStore) -> None:
    run_id, _ = await running_first_stage(store)  # its run has metadata {"legacy": True}
    assert await store.migrate_legacy_metadata() >= 1
    found = await store.verify_chain(run_id)
    assert found.ok, found.first_bad
    assert found.links_checked == CREATED + 1
