"""Stage annotations end to end: real Temporal, both side-store backends.

ENGINE-SEMANTICS B50–B57 and B70 through the public API: ``ctx.annotate`` in its three forms,
buffered and committed with every stage outcome (completed, failed, suspended, each poll),
dropped for a cancelled run, attempts across a rerun, and a commit retried after an
infrastructure failure with its buffer intact and nothing written twice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import SearchAttributeKey

from engine import (
    Actor,
    AnnotationError,
    CompletionCheck,
    RunCancel,
    RunCreate,
    RunRerunFrom,
    RunStatus,
    StageContext,
    Suspend,
    define_async_batch_stage,
    define_stage,
    define_workflow,
)
from engine.conventions import Decision
from tests.helpers import running_kernel

WAIT = timedelta(seconds=30)
AGENT = Actor(kind="agent", id="triage-agent", version="v3")


class Probe(BaseModel):
    token: str


class Done(BaseModel):
    token: str


# Per-test state the stage code reaches through the token in its input (the worker runs in
# this process and on this event loop).
PROBES: dict[str, dict[str, Any]] = {}


def probe(token: str) -> dict[str, Any]:
    return PROBES.setdefault(token, {})


def new_token() -> str:
    return uuid.uuid4().hex


def by_key(rows: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for row in rows:
        out.setdefault(row.key, []).append(row)
    return out


def events_of(events: list[Any], event_type: str) -> list[dict[str, Any]]:
    return [e.payload for e in events if e.event_type == event_type]


# -- B50–B53, B60–B63 on the stage path ----------------------------------------------------------


@define_stage(id="forms", input=Probe, output=Done)
async def forms_stage(ctx: StageContext[Probe, None]) -> Done:
    ctx.annotate(Decision.outcome, "low")  # typed key
    ctx.annotate(Decision.confidence, 0.42, emit_event=True)  # typed key, with an event
    ctx.annotate("acme.signoff", "alice@acme.com", actor=Actor(kind="user", id="alice"))
    ctx.annotate(  # batch: one envelope, one row per attribute
        actor=AGENT,
        attributes={
            "decision.rationale": "keyword match",
            "decision.used_fallback": False,
            "decision.alternatives": [],
            "acme.count": 0,
            "acme.note": "",
            "acme.skipped": None,
        },
        payload={"raw_response": {"tokens": 3}},
        idempotency_key="batch-1",
        emit_event=True,
    )
    ctx.annotate("acme.none", None)  # dropped
    ctx.annotate(Decision.outcome, None)  # dropped, and no type error for None
    ctx.annotate("acme.dup", 1, idempotency_key="once", emit_event=True)
    ctx.annotate("acme.dup", 2, idempotency_key="once", emit_event=True)  # deduped: no event
    ctx.annotate("acme.repeat", 1)  # no idempotency key: both kept
    ctx.annotate("acme.repeat", 2, emit_event=True)  # only this one asked for an event
    errors = probe(ctx.input.token).setdefault("type_errors", [])
    for key, value in ((Decision.confidence, "high"), (Decision.used_fallback, 1)):
        try:
            ctx.annotate(key, value)
        except TypeError as exc:
            errors.append(str(exc))
    return Done(token=ctx.input.token)


@define_stage(id="second", input=Done, output=Done)
async def second_stage(ctx: StageContext[Done, None]) -> Done:
    ctx.annotate("second.seen", ctx.require("forms")["token"])
    return Done(token=ctx.input.token)


FORMS_WORKFLOW = (
    define_workflow(id="ann-forms", name="Forms", input=Probe)
    .pipe(forms_stage)
    .pipe(second_stage)
    .build()
)


async def test_stage_annotation_forms_rows_envelopes_and_events(env, store):
    token = new_token()
    async with running_kernel(env, store, FORMS_WORKFLOW) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="ann-forms", input={"token": token}))
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
        assert run.status == RunStatus.COMPLETED, await kernel.list_stages(run.id)
        stages = {s.stage_id: s for s in await kernel.list_stages(run.id)}
        rows = await kernel.annotations.list(run.id)
        events = await kernel.list_outbox_events(run.id)
        temporal_id = await kernel.store.temporal_workflow_id(run.id)
        assert temporal_id is not None
        description = await kernel.client.get_workflow_handle(temporal_id).describe()

    keys = by_key(rows)
    # B50: one row per attribute, whatever the form; B53: None dropped, "", 0, False, [] kept.
    assert Counter(r.key for r in rows) == {
        "decision.outcome": 1,
        "decision.confidence": 1,
        "acme.signoff": 1,
        "decision.rationale": 1,
        "decision.used_fallback": 1,
        "decision.alternatives": 1,
        "acme.count": 1,
        "acme.note": 1,
        "acme.dup": 1,  # B60: same (run, key, idempotency key) → one row
        "acme.repeat": 2,  # B61: no idempotency key → no dedupe
        "second.seen": 1,
    }
    values = {r.key: r.value for r in rows if r.key != "acme.repeat"}
    assert values["decision.outcome"] == "low"
    assert values["decision.confidence"] == 0.42
    assert values["decision.used_fallback"] is False
    assert values["decision.alternatives"] == []
    assert values["acme.count"] == 0 and type(values["acme.count"]) is int
    assert values["acme.note"] == ""
    assert values["acme.dup"] == 1  # the first write wins
    assert sorted(r.value for r in keys["acme.repeat"]) == [1, 2]

    # B51: the batch's rows share actor, payload and idempotency key.
    batch = [r for r in rows if r.idempotency_key == "batch-1"]
    assert len(batch) == 5
    for row in batch:
        assert (row.actor_kind, row.actor_id, row.actor_version) == ("agent", "triage-agent", "v3")
        assert row.payload == {"raw_response": {"tokens": 3}}
    signoff = keys["acme.signoff"][0]
    assert (signoff.actor_kind, signoff.actor_id, signoff.actor_version) == ("user", "alice", None)
    assert signoff.payload is None and signoff.idempotency_key is None
    assert keys["decision.outcome"][0].actor_kind is None

    # B52: stage rows carry scope "stage", the stage id, its record id and its attempt.
    for row in rows:
        stage_id = "second" if row.key == "second.seen" else "forms"
        assert row.scope == "stage"
        assert row.scope_id == stage_id
        assert row.workflow_stage_record_id == stages[stage_id].id
        assert row.attempt == 0 == stages[stage_id].attempt
        assert row.workflow_run_id == run.id

    # Order: created_at, then id (ids sort in insertion order within a run).
    assert [(r.created_at, r.id) for r in rows] == sorted((r.created_at, r.id) for r in rows)
    forms_rows = [r.key for r in rows if r.scope_id == "forms"]
    assert forms_rows[:3] == ["decision.outcome", "decision.confidence", "acme.signoff"]

    # B62/B63: one annotation:created per inserted row that asked for one, nothing for the
    # deduplicated write, nothing for rows that did not ask; in the stage's commit.
    created_events = events_of(events, "annotation:created")
    assert Counter(e["key"] for e in created_events) == {
        "decision.confidence": 1,
        "decision.rationale": 1,
        "decision.used_fallback": 1,
        "decision.alternatives": 1,
        "acme.count": 1,
        "acme.note": 1,
        "acme.dup": 1,
        "acme.repeat": 1,
    }
    rationale = next(e for e in created_events if e["key"] == "decision.rationale")
    assert rationale["value"] == "keyword match"
    assert rationale["scope"] == "stage" and rationale["scope_id"] == "forms"
    assert rationale["actor_kind"] == "agent" and rationale["actor_id"] == "triage-agent"
    assert rationale["actor_version"] == "v3" and rationale["attempt"] == 0
    assert "payload" not in rationale
    assert next(e for e in created_events if e["key"] == "acme.repeat")["value"] == 2
    types = [e.event_type for e in events]
    completed_at = types.index("stage:completed")
    forms_events = [e for e in events if e.causation_id == events[completed_at].causation_id]
    # One commit: the stage's outcome, its annotations, and the start of the next group.
    assert {e.event_type for e in forms_events} == {
        "stage:completed",
        "annotation:created",
        "stage:started",
    }
    assert all(
        e.payload["stage_id"] != "forms" for e in forms_events if e.event_type == "stage:started"
    )

    # A typed key given a wrong type raises TypeError naming the key and the expected type.
    type_errors = PROBES.pop(token)["type_errors"]
    assert len(type_errors) == 2
    assert "decision.confidence" in type_errors[0] and "float" in type_errors[0]
    assert "decision.used_fallback" in type_errors[1] and "bool" in type_errors[1]

    # The Temporal UI sees the latest decision outcome as a search attribute.
    outcome_attribute = SearchAttributeKey.for_keyword("DecisionOutcome")
    assert description.typed_search_attributes.get(outcome_attribute) == "low"


# -- B54 and validation inside ctx.annotate ------------------------------------------------------


@define_stage(id="boom", input=Probe, output=Done)
async def boom_stage(ctx: StageContext[Probe, None]) -> Done:
    ctx.annotate("boom.before", 1)
    ctx.annotate(actor=AGENT, attributes={"boom.reason": "about to fail", "boom.flag": True})
    raise RuntimeError("kaput after annotating")


def bad_annotate_calls() -> list[tuple[str, dict[str, Any]]]:
    """(name, ctx.annotate kwargs) that must raise AnnotationError and buffer nothing."""
    return [
        ("empty key", {"key": "", "value": 1}),
        ("key over 255", {"key": "k" * 256, "value": 1}),
        ("value over 64 KiB", {"key": "big.value", "value": "x" * (64 * 1024 - 1)}),
        ("payload over 1 MiB", {"key": "big.payload", "value": 1, "payload": "x" * 2**20}),
        ("non-JSON value", {"key": "obj.value", "value": object()}),
        ("NaN", {"key": "nan.value", "value": float("nan")}),
        ("infinity", {"key": "inf.value", "value": float("inf")}),
        ("NUL in value", {"key": "nul.value", "value": "a\x00b"}),
        ("NUL in key", {"key": "nul\x00key", "value": 1}),
        ("NUL in payload", {"key": "nul.payload", "value": 1, "payload": {"p": "\x00"}}),
        ("non-JSON payload", {"key": "obj.payload", "value": 1, "payload": {"p": {1, 2}}}),
        (
            "batch with one bad attribute",
            {"attributes": {"batch.good": 1, "batch.bad": {"a", "b"}}},
        ),
        (
            "idempotency key over 255",
            {"key": "idem.long", "value": 1, "idempotency_key": "i" * 256},
        ),
        (
            "actor kind over 64",
            {"key": "actor.long", "value": 1, "actor": Actor(kind="k" * 65, id="a")},
        ),
        (
            "actor id over 255",
            {"key": "actor.id", "value": 1, "actor": Actor(kind="k", id="a" * 256)},
        ),
        ("NUL in actor", {"key": "actor.nul", "value": 1, "actor": Actor(kind="k", id="a\x00")}),
        (
            "stage buffer over budget",  # the payload counts once per attribute
            {"attributes": {"p.1": 1, "p.2": 2}, "payload": "x" * (900 * 1024)},
        ),
    ]


@define_stage(id="bad-annotation", input=Probe, output=Done)
async def bad_annotation_stage(ctx: StageContext[Probe, None]) -> Done:
    ctx.annotate("ok.first", True)
    ctx.annotate("e" * 255, "key of exactly 255 characters")
    ctx.annotate("edge.value", "x" * (64 * 1024 - 2))  # exactly 64 KiB of JSON
    ctx.annotate("edge.payload", 1, payload="x" * (2**20 - 2))  # exactly 1 MiB of JSON
    caught = probe(ctx.input.token).setdefault("caught", {})
    for name, kwargs in bad_annotate_calls():
        try:
            ctx.annotate(**kwargs)
        except AnnotationError as exc:
            caught[name] = exc
    ctx.annotate("ok.last", "after the refused calls")
    ctx.annotate("final.value", float("nan"))  # uncaught: fails the stage
    return Done(token=ctx.input.token)


FAILURES_WORKFLOW = (
    define_workflow(id="ann-failures", name="Failures", input=Probe)
    .parallel([boom_stage, bad_annotation_stage])
    .build()
)


async def test_failed_stages_keep_annotations_made_before_the_failure(env, store):
    token = new_token()
    async with running_kernel(env, store, FAILURES_WORKFLOW) as kernel:
        created = await kernel.dispatch(
            RunCreate(workflow_id="ann-failures", input={"token": token})
        )
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
        stages = {s.stage_id: s for s in await kernel.list_stages(run.id)}
        rows = await kernel.annotations.list(run.id)
        events = await kernel.list_outbox_events(run.id)

    assert run.status == RunStatus.FAILED
    # B54: the annotations made before the exception are stored with the FAILED stage.
    boom = stages["boom"]
    assert boom.status == RunStatus.FAILED
    assert boom.error_message == "kaput after annotating"
    boom_rows = [r for r in rows if r.scope_id == "boom"]
    assert {r.key: r.value for r in boom_rows} == {
        "boom.before": 1,
        "boom.reason": "about to fail",
        "boom.flag": True,
    }
    assert all(r.workflow_stage_record_id == boom.id for r in boom_rows)

    # ctx.annotate refuses each bad call with AnnotationError and buffers nothing of it; an
    # uncaught one fails the stage with a message naming the key.
    bad = stages["bad-annotation"]
    assert bad.status == RunStatus.FAILED
    assert bad.error_message is not None
    assert "final.value" in bad.error_message and "JSON" in bad.error_message
    caught = PROBES.pop(token)["caught"]
    assert set(caught) == {name for name, _ in bad_annotate_calls()}
    for name, exc in caught.items():
        assert isinstance(exc, AnnotationError), name
    assert caught["NaN"].key == "nan.value"
    assert "nan.value" in str(caught["NaN"])
    assert "obj.value" in str(caught["non-JSON value"])
    assert "255" in str(caught["key over 255"])
    assert "big.value" in str(caught["value over 64 KiB"])
    assert "max 1572864" in str(caught["stage buffer over budget"])
    edge_payload = next(r for r in rows if r.key == "edge.payload")
    assert edge_payload.payload == "x" * (2**20 - 2)
    bad_rows = {r.key: r.value for r in rows if r.scope_id == "bad-annotation"}
    assert bad_rows == {
        "ok.first": True,
        "e" * 255: "key of exactly 255 characters",
        "edge.value": "x" * (64 * 1024 - 2),
        "edge.payload": 1,
        "ok.last": "after the refused calls",
    }
    failed_events = events_of(events, "stage:failed")
    assert {e["stage_id"] for e in failed_events} == {"boom", "bad-annotation"}
    assert events_of(events, "workflow:failed")


# -- B55, B56: suspended execute and every poll outcome ----------------------------------------


def batch_stage(stage_id: str, final: str) -> Any:
    async def execute(ctx: StageContext[Probe, None]) -> Suspend:
        ctx.annotate(f"{stage_id}.submitted", ctx.input.token, actor=AGENT)
        return Suspend(state={"token": ctx.input.token}, poll_interval=timedelta(seconds=0.2))

    async def check(state: dict[str, Any], ctx: Any) -> CompletionCheck:
        seen = probe(state["token"])
        kernel = seen["kernel"]
        stage = next(
            s for s in await kernel.list_stages(ctx.workflow_run_id) if s.stage_id == stage_id
        )
        stored = await kernel.annotations.list(ctx.workflow_run_id, scope_id=stage_id)
        seen.setdefault(stage_id, []).append(
            (ctx.poll_count, stage.status, [(r.key, r.value) for r in stored])
        )
        ctx.annotate(f"{stage_id}.poll", ctx.poll_count, emit_event=True)
        if ctx.poll_count == 0:
            return CompletionCheck(ready=False, next_check_in=timedelta(seconds=0.2))
        if final == "error":
            return CompletionCheck(ready=False, error=f"{stage_id} exploded")
        return CompletionCheck(ready=True, output={"token": state["token"]})

    return define_async_batch_stage(
        id=stage_id, input=Probe, output=Done, execute=execute, check_completion=check
    )


BATCH_WORKFLOW = (
    define_workflow(id="ann-batch", name="Batch", input=Probe)
    .parallel([batch_stage("ready-batch", "ready"), batch_stage("error-batch", "error")])
    .build()
)


async def test_suspended_execute_and_every_poll_outcome_store_annotations(env, store):
    token = new_token()
    async with running_kernel(env, store, BATCH_WORKFLOW) as kernel:
        probe(token)["kernel"] = kernel
        created = await kernel.dispatch(RunCreate(workflow_id="ann-batch", input={"token": token}))
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
        stages = {s.stage_id: s for s in await kernel.list_stages(run.id)}
        rows = await kernel.annotations.list(run.id)
        events = await kernel.list_outbox_events(run.id)
    seen = PROBES.pop(token)

    assert run.status == RunStatus.FAILED
    assert stages["ready-batch"].status == RunStatus.COMPLETED
    assert stages["error-batch"].status == RunStatus.FAILED
    assert stages["error-batch"].error_message == "error-batch exploded"
    for stage_id in ("ready-batch", "error-batch"):
        submitted = (f"{stage_id}.submitted", token)
        # B55: while the stage is SUSPENDED, execute's annotations are already stored.
        # B56: the not-ready poll's annotation is stored with it, before the next poll.
        assert seen[stage_id] == [
            (0, RunStatus.SUSPENDED, [submitted]),
            (1, RunStatus.SUSPENDED, [submitted, (f"{stage_id}.poll", 0)]),
        ]
        stage_rows = [r for r in rows if r.scope_id == stage_id]
        # ... and the final poll's (ready, or error) with the stage's last outcome.
        assert [(r.key, r.value) for r in stage_rows] == [
            submitted,
            (f"{stage_id}.poll", 0),
            (f"{stage_id}.poll", 1),
        ]
        record = stages[stage_id]
        for row in stage_rows:
            assert (row.scope, row.workflow_stage_record_id, row.attempt) == ("stage", record.id, 0)
        assert stage_rows[0].actor_id == "triage-agent"
    # Every poll outcome emits what it asked for, the not-ready one included.
    polled = [(e["key"], e["value"]) for e in events_of(events, "annotation:created")]
    assert sorted(polled) == sorted(
        (f"{s}.poll", n) for s in ("ready-batch", "error-batch") for n in (0, 1)
    )


# -- B57: a cancelled run stores none of the running stage's annotations --------------------


@define_stage(id="gated", input=Probe, output=Done)
async def gated_stage(ctx: StageContext[Probe, None]) -> Done:
    gates = probe(ctx.input.token)
    ctx.annotate("gated.before", 1, emit_event=True)
    ctx.report_progress(0.5, "waiting for the gate")
    gates["started"].set()
    await gates["release"].wait()
    ctx.annotate(actor=AGENT, attributes={"gated.after": 2}, emit_event=True)
    gates["finished"].set()
    return Done(token=ctx.input.token)


GATED_WORKFLOW = (
    define_workflow(id="ann-gated", name="Gated", input=Probe).pipe(gated_stage).build()
)


async def test_cancelled_run_stores_none_of_the_running_stage_annotations(env, store):
    token = new_token()
    gates = probe(token)
    gates.update(started=asyncio.Event(), release=asyncio.Event(), finished=asyncio.Event())
    async with running_kernel(env, store, GATED_WORKFLOW) as kernel:
        created = await kernel.dispatch(RunCreate(workflow_id="ann-gated", input={"token": token}))
        run_id = created.workflow_run_id
        await asyncio.wait_for(gates["started"].wait(), timeout=20)
        assert (await kernel.list_stages(run_id))[0].status == RunStatus.RUNNING
        cancelled = await kernel.dispatch(RunCancel(workflow_run_id=run_id, reason="test"))
        assert cancelled.cancelled
        gates["release"].set()
        await asyncio.wait_for(gates["finished"].wait(), timeout=20)
        temporal_id = await kernel.store.temporal_workflow_id(run_id)
        assert temporal_id is not None
        handle = kernel.client.get_workflow_handle(temporal_id)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
        run = await kernel.wait_for_run(run_id, timeout=WAIT)
        stages = await kernel.list_stages(run_id)
        rows = await kernel.annotations.list(run_id)
        events = await kernel.list_outbox_events(run_id)
    PROBES.pop(token)

    assert run.status == RunStatus.CANCELLED
    assert [s.status for s in stages] == [RunStatus.CANCELLED]
    assert stages[0].output_data is None
    assert rows == []
    types = [e.event_type for e in events]
    assert "annotation:created" not in types
    assert "stage:completed" not in types and "stage:progress" not in types
    assert types[-1] == "workflow:cancelled"


# -- B70: reruns ----------------------------------------------------------------------------------


def attempt_stage(stage_id: str) -> Any:
    async def execute(ctx: StageContext[Any, None]) -> dict[str, Any]:
        ctx.annotate(f"{stage_id}.attempt", ctx.attempt)
        ctx.annotate(f"{stage_id}.once", ctx.attempt, idempotency_key="once")
        return {"stage": stage_id}

    return define_stage(id=stage_id, input=None, execute=execute)


RERUN_WORKFLOW = (
    define_workflow(id="ann-rerun", name="Rerun", input=Probe)
    .pipe(attempt_stage("s1"))
    .pipe(attempt_stage("s2"))
    .pipe(attempt_stage("s3"))
    .build()
)


async def test_rerun_annotations_carry_the_new_attempt_and_old_rows_lose_their_link(env, store):
    async with running_kernel(env, store, RERUN_WORKFLOW) as kernel:
        created = await kernel.dispatch(
            RunCreate(workflow_id="ann-rerun", input={"token": new_token()})
        )
        run_id = created.workflow_run_id
        assert (await kernel.wait_for_run(run_id, timeout=WAIT)).status == RunStatus.COMPLETED
        before = {s.stage_id: s for s in await kernel.list_stages(run_id)}
        first_rows = {r.id: r for r in await kernel.annotations.list(run_id)}
        result = await kernel.dispatch(RunRerunFrom(workflow_run_id=run_id, from_stage_id="s2"))
        assert result.deleted_stages == ["s2", "s3"]
        run = await kernel.wait_for_run(run_id, timeout=WAIT)
        after = {s.stage_id: s for s in await kernel.list_stages(run_id)}
        rows = await kernel.annotations.list(run_id)
        rerun_rows = await kernel.annotations.list(run_id, attempt=1)

    assert run.status == RunStatus.COMPLETED
    assert after["s1"].id == before["s1"].id and after["s1"].attempt == 0
    assert after["s2"].attempt == after["s3"].attempt == 1
    assert after["s2"].id != before["s2"].id
    by_id = {r.id: r for r in rows}
    # Old rows are all still there, keep their attempt and scope id; links of deleted
    # records are NULL, s1's link stays.
    assert set(first_rows) <= set(by_id)
    for row_id, old in first_rows.items():
        now = by_id[row_id]
        assert (now.attempt, now.scope_id, now.key, now.value) == (
            0,
            old.scope_id,
            old.key,
            old.value,
        )
        expected_link = before["s1"].id if old.scope_id == "s1" else None
        assert now.workflow_stage_record_id == expected_link
    # New rows carry attempt 1 and the new records; a reused (key, idempotency key) is not
    # stored again (dedupe ignores attempts).
    assert sorted((r.key, r.value, r.attempt) for r in rerun_rows) == [
        ("s2.attempt", 1, 1),
        ("s3.attempt", 1, 1),
    ]
    for row in rerun_rows:
        assert row.workflow_stage_record_id == after[row.scope_id].id
    assert Counter(r.key for r in rows)["s2.once"] == 1
    assert len(rows) == len(first_rows) + 2


# -- the outcome commit retried after infrastructure failures ----------------------------------


@define_stage(id="retried", input=Probe, output=Done)
async def retried_stage(ctx: StageContext[Probe, None]) -> Done:
    ctx.annotate(actor=AGENT, attributes={"r.a": 1, "r.b": "two", "r.c": [3]}, emit_event=True)
    return Done(token=ctx.input.token)


RETRY_WORKFLOW = (
    define_workflow(id="ann-retry", name="Retry", input=Probe).pipe(retried_stage).build()
)


async def test_commit_retried_after_failures_keeps_the_buffer_and_writes_once(env, store):
    original = store.commit_stage
    calls: list[str] = []

    async def flaky_commit(commit: Any) -> Any:
        calls.append(commit.commit_id)
        if len(calls) == 1:
            raise ConnectionError("database unreachable before the commit")
        result = await original(commit)
        if len(calls) == 2:
            raise ConnectionError("connection lost after COMMIT")
        return result

    store.commit_stage = flaky_commit  # what the worker's commit activity calls
    async with running_kernel(env, store, RETRY_WORKFLOW) as kernel:
        created = await kernel.dispatch(
            RunCreate(workflow_id="ann-retry", input={"token": new_token()})
        )
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
        rows = await kernel.annotations.list(run.id)
        events = await kernel.list_outbox_events(run.id)

    assert run.status == RunStatus.COMPLETED
    assert len(calls) >= 3 and len(set(calls[:3])) == 1  # the same commit, retried
    assert sorted((r.key, r.value) for r in rows) == [("r.a", 1), ("r.b", "two"), ("r.c", [3])]
    assert {r.actor_id for r in rows} == {"triage-agent"}
    assert Counter(e.event_type for e in events)["annotation:created"] == 3
    assert Counter(e.event_type for e in events)["stage:completed"] == 1
    sequences = [e.sequence for e in events]
    assert sequences == list(range(1, len(events) + 1))
