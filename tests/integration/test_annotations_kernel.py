"""Run-level annotations end to end: RunCreate, attach, list, the legacy metadata shim.

ENGINE-SEMANTICS B53 and B58–B69, B73 through the public API with real Temporal, on both
side-store backends, plus the legacy migration (``kernel.annotations.migrate_legacy``).
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import func, select
from temporalio.client import WorkflowExecutionStatus

import engine.store.legacy
import engine.store.runs
import engine.store.sql_store
from engine import (
    Actor,
    AnnotationError,
    InvalidConfigError,
    InvalidInputError,
    RunCreate,
    RunCreateAnnotation,
    RunNotFoundError,
    RunStatus,
    StageContext,
    WorkflowNotFoundError,
    define_stage,
    define_workflow,
)
from engine.store.models import IdempotencyKey, OutboxEvent, WorkflowAnnotation, WorkflowRun
from tests.helpers import running_kernel

WAIT = timedelta(seconds=30)
AGENT = Actor(kind="agent", id="triage-agent", version="v3")


class Probe(BaseModel):
    token: str


class SimpleConfig(BaseModel):
    level: int = 1


@define_stage(id="only", input=Probe, config=SimpleConfig)
async def only_stage(ctx: StageContext[Probe, SimpleConfig]) -> dict[str, Any]:
    ctx.annotate("stage.k", "from-stage", idempotency_key="shared", emit_event=True)
    ctx.annotate("stage.plain", 1)
    return {"token": ctx.input.token}


SIMPLE = define_workflow(id="ann-simple", name="Simple", input=Probe).pipe(only_stage).build()


async def counts(store: Any) -> dict[str, int]:
    """Row counts of the tables a failed write must leave untouched."""
    out = {}
    async with store.sessions() as session:
        for model in (WorkflowRun, WorkflowAnnotation, OutboxEvent, IdempotencyKey):
            out[model.__tablename__] = await session.scalar(select(func.count()).select_from(model))
    return out


async def completed_run(kernel: Any, **fields: Any) -> Any:
    created = await kernel.dispatch(
        RunCreate(workflow_id="ann-simple", input={"token": uuid.uuid4().hex}, **fields)
    )
    run = await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
    assert run.status == RunStatus.COMPLETED
    return run


def created_events(events: list[Any]) -> list[dict[str, Any]]:
    return [e.payload for e in events if e.event_type == "annotation:created"]


# -- B58, B53, B60 on the run.create path -------------------------------------------------------


async def test_run_create_annotations_are_run_scoped_and_committed_with_the_run(env, store):
    async with running_kernel(env, store, SIMPLE) as kernel:
        created = await kernel.dispatch(
            RunCreate(
                workflow_id="ann-simple",
                input={"token": "t"},
                idempotency_key="create-1",
                annotations=[
                    RunCreateAnnotation(
                        actor=Actor(kind="system", id="zendesk"),
                        attributes={
                            "trigger.source": "webhook:zendesk",
                            "trigger.reason": None,  # dropped
                            "trigger.flag": False,
                            "trigger.items": [],
                            "trigger.count": 0,
                            "trigger.note": "",
                        },
                        payload={"hook": {"id": 7}},
                        emit_event=True,
                    ),
                    RunCreateAnnotation(
                        attributes={"stage.k": "from-create", "trigger.parent_run_id": "r0"},
                        idempotency_key="shared",
                    ),
                    RunCreateAnnotation(attributes={"trigger.all_none": None}),
                ],
            )
        )
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
        assert run.status == RunStatus.COMPLETED
        rows = await kernel.annotations.list(run.id)
        events = await kernel.list_outbox_events(run.id)
        # The same (run, key, idempotency key) from attach is deduplicated against the rows
        # of run.create and of the stage: nothing inserted, nothing emitted.
        again = await kernel.annotations.attach(
            run.id, attributes={"stage.k": "from-attach"}, idempotency_key="shared", emit_event=True
        )
        assert again == []
        assert await kernel.list_outbox_events(run.id) == events
        # A dict command in the original camelCase spelling works the same.
        camel = await kernel.dispatch(
            {
                "type": "run.create",
                "workflowId": "ann-simple",
                "input": {"token": "c"},
                "annotations": [
                    {
                        "attributes": {"trigger.source": "cli"},
                        "actor": {"kind": "user", "id": "bob"},
                        "idempotencyKey": "camel",
                        "emitEvent": True,
                    }
                ],
            }
        )
        await kernel.wait_for_run(camel.workflow_run_id, timeout=WAIT)
        camel_rows = await kernel.annotations.list(camel.workflow_run_id, scope="run")
        camel_events = created_events(await kernel.list_outbox_events(camel.workflow_run_id))

    run_rows = [r for r in rows if r.scope == "run"]
    # B58: scope "run", no scope id, no stage link, attempt 0, in the run's transaction.
    assert {r.key: r.value for r in run_rows} == {
        "trigger.source": "webhook:zendesk",
        "trigger.flag": False,
        "trigger.items": [],
        "trigger.count": 0,
        "trigger.note": "",
        "stage.k": "from-create",
        "trigger.parent_run_id": "r0",
    }
    for row in run_rows:
        assert (row.scope_id, row.workflow_stage_record_id, row.attempt) == (None, None, 0)
        assert row.created_at == run.created_at
    first = [r for r in run_rows if r.key.startswith("trigger.") and r.actor_id == "zendesk"]
    assert len(first) == 5
    assert all(r.payload == {"hook": {"id": 7}} and r.actor_kind == "system" for r in first)
    # B60 across paths: the stage's write of (stage.k, "shared") was deduplicated.
    stage_rows = [r for r in rows if r.scope == "stage"]
    assert [(r.key, r.value) for r in stage_rows] == [("stage.plain", 1)]
    # Events: workflow:created first, then one annotation:created per emitted row, all with
    # the command's causation id; the deduped stage write emitted nothing.
    assert [e.event_type for e in events[:6]] == ["workflow:created"] + ["annotation:created"] * 5
    assert {e.causation_id for e in events[:6]} == {"create-1"}
    assert events[0].sequence == 1
    emitted = created_events(events)
    assert len(emitted) == 5
    assert {e["key"] for e in emitted} == {r.key for r in first}
    assert all(e["scope"] == "run" and e["attempt"] == 0 for e in emitted)
    assert all("scope_id" not in e and e["actor_id"] == "zendesk" for e in emitted)

    assert [(r.key, r.value, r.idempotency_key, r.actor_id) for r in camel_rows] == [
        ("trigger.source", "cli", "camel", "bob")
    ]
    assert [e["key"] for e in camel_events] == ["trigger.source", "stage.k"]


async def test_failed_run_create_writes_nothing(env, store, monkeypatch):
    good = RunCreateAnnotation(attributes={"trigger.source": "webhook"}, emit_event=True)
    async with running_kernel(env, store, SIMPLE) as kernel:
        before = await counts(store)
        with pytest.raises(WorkflowNotFoundError):
            await kernel.dispatch(RunCreate(workflow_id="nope", input={}, annotations=[good]))
        with pytest.raises(InvalidInputError, match="^Invalid workflow input"):
            await kernel.dispatch(
                RunCreate(workflow_id="ann-simple", input={"wrong": 1}, annotations=[good])
            )
        with pytest.raises(InvalidConfigError, match="only"):
            await kernel.dispatch(
                RunCreate(
                    workflow_id="ann-simple",
                    input={"token": "t"},
                    config={"only": {"level": "not a number"}},
                    annotations=[good],
                )
            )
        # A bad annotation in any envelope refuses the whole command before writing.
        for name, attributes, options in BAD_ENVELOPES:
            with pytest.raises(AnnotationError):
                await kernel.dispatch(
                    RunCreate(
                        workflow_id="ann-simple",
                        input={"token": "t"},
                        idempotency_key=f"bad-{name}",
                        annotations=[good, RunCreateAnnotation(attributes=attributes, **options)],
                    )
                )
        assert await counts(store) == before

        # A failure inside the transaction, after the run and its annotations were inserted,
        # rolls all of it back (and frees the idempotency key).
        def broken_events(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("outbox write failed")

        with monkeypatch.context() as patch:
            # The general transaction (the one-statement insert on PostgreSQL is atomic by
            # itself: tests/store/test_one_statement.py).
            patch.setattr(engine.store.sql_store, "create_in_one_statement", lambda *a: None)
            patch.setattr(engine.store.runs, "append_events", broken_events)
            with pytest.raises(RuntimeError, match="outbox write failed"):
                await kernel.dispatch(
                    RunCreate(
                        workflow_id="ann-simple",
                        input={"token": "t"},
                        idempotency_key="rolled-back",
                        annotations=[good],
                    )
                )
        assert await counts(store) == before
        page = await kernel.annotations.query(key="trigger.source")
        assert page.items == []
        # The key is free again: the retry creates the run with its annotation.
        retried = await kernel.dispatch(
            RunCreate(
                workflow_id="ann-simple",
                input={"token": "t"},
                idempotency_key="rolled-back",
                annotations=[good],
            )
        )
        await kernel.wait_for_run(retried.workflow_run_id, timeout=WAIT)
        rows = await kernel.annotations.list(retried.workflow_run_id, key="trigger.source")
        assert [r.value for r in rows] == ["webhook"]


def _nested(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"next": value}
    return value


# Bad envelopes refused on every path: (name, attributes, envelope options).
BAD_ENVELOPES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("empty-key", {"": 1}, {}),
    ("long-key", {"k" * 256: 1}, {}),
    ("big-value", {"big": "x" * (64 * 1024 - 1)}, {}),
    ("big-payload", {"p": 1}, {"payload": "x" * 2**20}),
    ("non-json", {"good": 1, "obj": object()}, {}),
    ("nan", {"good": 1, "nan": float("nan")}, {}),
    ("nul-value", {"nul": "a\x00b"}, {}),
    ("nul-key", {"nul\x00": 1}, {}),
    ("nul-payload", {"p": 1}, {"payload": {"a": "\x00"}}),
    ("long-idempotency-key", {"p": 1}, {"idempotency_key": "i" * 256}),
    ("long-actor-kind", {"p": 1}, {"actor": Actor(kind="k" * 65, id="a")}),
    ("long-actor-version", {"p": 1}, {"actor": Actor(kind="k", id="a", version="v" * 256)}),
    ("nul-actor", {"p": 1}, {"actor": Actor(kind="k\x00", id="a")}),
    # Past the nesting limit that run input, outputs and logs share: stored, the value could
    # not be read back (the API answered 500, `annotations list --json` crashed).
    ("deep-value", {"deep": _nested(300)}, {}),
    ("deep-payload", {"p": 1}, {"payload": _nested(300)}),
]


# -- B59, B53, B60–B63 on the attach path -------------------------------------------------------


async def test_attach_defaults_all_or_none_and_closed_workflows(env, store, monkeypatch):
    async with running_kernel(env, store, SIMPLE) as kernel:
        run = await completed_run(kernel)
        temporal_id = await kernel.store.temporal_workflow_id(run.id)
        assert temporal_id is not None
        handle = kernel.client.get_workflow_handle(temporal_id)
        # The run completes in the last stage's commit; its execution closes just after.
        assert await handle.result() == run.output  # the execution's result is the run's
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        record = (await kernel.list_stages(run.id))[0]

        # B59 defaults: scope "run", no scope id, no stage link, attempt 0 — on a COMPLETED
        # run whose Temporal workflow is closed. B53: None dropped; "", 0, False, [] kept.
        inserted = await kernel.annotations.attach(
            run.id,
            attributes={"a.none": None, "a.zero": 0, "a.false": False, "a.empty": "", "a.list": []},
        )
        assert [(r.key, r.value) for r in inserted] == [
            ("a.zero", 0),
            ("a.false", False),
            ("a.empty", ""),
            ("a.list", []),
        ]
        for row in inserted:
            assert (row.scope, row.scope_id, row.workflow_stage_record_id, row.attempt) == (
                "run",
                None,
                None,
                0,
            )
            assert row.actor_kind is None and row.payload is None and row.idempotency_key is None
            assert row.created_at > run.completed_at
        assert await kernel.annotations.list(run.id, key_prefix="a.") == inserted
        events_before = await kernel.list_outbox_events(run.id)
        # emit_event defaults to False: only the stage's own event is there.
        assert [e["key"] for e in created_events(events_before)] == ["stage.k"]

        # Every field given explicitly is stored as given; the event carries the envelope.
        explicit = await kernel.annotations.attach(
            run.id,
            attributes={"ai.model": "gpt", "ai.tokens": 812},
            actor=AGENT,
            scope="ai_call",
            scope_id="call-1",
            workflow_stage_record_id=record.id,
            attempt=3,
            payload={"prompt": "…"},
            idempotency_key="ai-1",
            emit_event=True,
        )
        assert [(r.scope, r.scope_id, r.workflow_stage_record_id, r.attempt) for r in explicit] == [
            ("ai_call", "call-1", record.id, 3)
        ] * 2
        assert {(r.actor_kind, r.actor_id, r.actor_version) for r in explicit} == {
            ("agent", "triage-agent", "v3")
        }
        new_events = (await kernel.list_outbox_events(run.id))[len(events_before) :]
        assert [e.event_type for e in new_events] == ["annotation:created"] * 2
        assert {e.causation_id for e in new_events} == {"ai-1"}
        assert new_events[0].payload == {
            "type": "annotation:created",
            "timestamp": new_events[0].payload["timestamp"],
            "workflow_run_id": run.id,
            "key": "ai.model",
            "value": "gpt",
            "scope": "ai_call",
            "scope_id": "call-1",
            "attempt": 3,
            "actor_kind": "agent",
            "actor_id": "triage-agent",
            "actor_version": "v3",
        }
        assert [e.sequence for e in new_events] == [
            events_before[-1].sequence + 1,
            events_before[-1].sequence + 2,
        ]

        # Nothing left after dropping None: no rows, no events.
        before = await counts(store)
        assert await kernel.annotations.attach(run.id, attributes={"x": None}) == []
        # All or none: one bad attribute refuses the whole call, on every kind of mistake.
        for name, attributes, options in [
            *BAD_ENVELOPES,
            ("long-scope", {"s": 1}, {"scope": "s" * 65}),
            ("long-scope-id", {"s": 1}, {"scope_id": "s" * 256}),
            ("nul-scope", {"s": 1}, {"scope": "a\x00"}),
        ]:
            with pytest.raises(AnnotationError):
                await kernel.annotations.attach(
                    run.id, attributes={"good.first": 1, **attributes}, **options
                )
            assert await counts(store) == before, name
        # ... and a failure inside the transaction rolls every attribute back.

        def broken_events(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("outbox write failed")

        with monkeypatch.context() as patch:
            patch.setattr(engine.store.sql_store, "append_events", broken_events)
            with pytest.raises(RuntimeError):
                await kernel.annotations.attach(
                    run.id, attributes={"tx.a": 1, "tx.b": 2}, emit_event=True
                )
        assert await counts(store) == before
        # Unknown run: RunNotFoundError, nothing written.
        with pytest.raises(RunNotFoundError):
            await kernel.annotations.attach("no-such-run", attributes={"a": 1})
        with pytest.raises(RunNotFoundError):
            await kernel.annotations.list("no-such-run")
        assert await counts(store) == before
        # An int beyond the float range is accepted (its typed number column stays empty).
        huge = await kernel.annotations.attach(run.id, attributes={"big.int": 10**400})
        assert huge[0].value == 10**400
        assert (await kernel.annotations.query(key="big.int")).items[0].id == huge[0].id


async def test_attach_idempotency_and_concurrent_attaches(env, store):
    async with running_kernel(env, store, SIMPLE) as kernel:
        run = await completed_run(kernel)
        base = len(await kernel.list_outbox_events(run.id))
        first = await kernel.annotations.attach(
            run.id, attributes={"i.a": 1, "i.b": 2}, idempotency_key="x", emit_event=True
        )
        assert [(r.key, r.value) for r in first] == [("i.a", 1), ("i.b", 2)]
        # Each attribute dedupes on its own key: only i.c is new; only it emits (B63: this
        # port emits annotation:created only for rows actually inserted).
        second = await kernel.annotations.attach(
            run.id, attributes={"i.b": 3, "i.c": 4}, idempotency_key="x", emit_event=True
        )
        assert [(r.key, r.value) for r in second] == [("i.c", 4)]
        # The same key under another idempotency key, or none, is a new row each time (B61).
        other = await kernel.annotations.attach(run.id, attributes={"i.a": 5}, idempotency_key="y")
        assert len(other) == 1
        for _ in range(2):
            assert len(await kernel.annotations.attach(run.id, attributes={"i.a": 6})) == 1
        rows = await kernel.annotations.list(run.id, key_prefix="i.")
        assert [(r.key, r.value) for r in rows] == [
            ("i.a", 1),
            ("i.b", 2),
            ("i.c", 4),
            ("i.a", 5),
            ("i.a", 6),
            ("i.a", 6),
        ]
        emitted = created_events((await kernel.list_outbox_events(run.id))[base:])
        assert [(e["key"], e["value"]) for e in emitted] == [("i.a", 1), ("i.b", 2), ("i.c", 4)]

        # 20 concurrent attaches of the same (key, idempotency key): one row, one event.
        results = await asyncio.gather(
            *(
                kernel.annotations.attach(
                    run.id,
                    attributes={"review.disposition": f"approved-{n}"},
                    actor=Actor(kind="user", id="alice@acme.com"),
                    idempotency_key="review-2026-05-24-alice",
                    emit_event=True,
                )
                for n in range(20)
            )
        )
        assert sum(len(r) for r in results) == 1
        winner = next(r[0] for r in results if r)
        stored = await kernel.annotations.list(run.id, key="review.disposition")
        assert stored == [winner]
        events = await kernel.list_outbox_events(run.id)
        reviews = [e for e in created_events(events) if e["key"] == "review.disposition"]
        assert [e["value"] for e in reviews] == [winner.value]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))


# -- B64–B66: list order, default limit, filters, literal prefixes ------------------------------


async def test_list_orders_by_time_then_id_and_defaults_to_1000_rows(env, store):
    async with running_kernel(env, store, SIMPLE) as kernel:
        run = await completed_run(
            kernel, annotations=[RunCreateAnnotation(attributes={"at.create": 1})]
        )
        keys = [f"bulk.{n:04d}" for n in range(1005)]
        inserted = await kernel.annotations.attach(run.id, attributes=dict.fromkeys(keys, 1))
        assert len(inserted) == 1005
        await kernel.annotations.attach(run.id, attributes={"at.end": 1})
        rows = await kernel.annotations.list(run.id)
        everything = await kernel.annotations.list(run.id, limit=5000)
        bulk = await kernel.annotations.list(run.id, key_prefix="bulk.")
        with pytest.raises(ValueError):
            await kernel.annotations.list(run.id, limit=0)

    assert len(rows) == 1000
    assert len(everything) == 1 + 2 + 1005 + 1  # run.create, the stage's two, bulk, at.end
    assert rows == everything[:1000]
    assert [(r.created_at, r.id) for r in everything] == sorted(
        (r.created_at, r.id) for r in everything
    )
    assert everything[0].key == "at.create" and everything[-1].key == "at.end"
    assert [r.key for r in everything if r.scope == "stage"] == ["stage.k", "stage.plain"]
    # One attach: one timestamp, and ids in insertion order.
    assert len({r.created_at for r in inserted}) == 1
    assert [r.key for r in bulk] == keys[:1000]
    assert [r.id for r in bulk] == [r.id for r in inserted[:1000]]


async def test_list_filters_combine_and_key_prefix_is_literal(env, store):
    async with running_kernel(env, store, SIMPLE) as kernel:
        run = await completed_run(kernel)
        record = (await kernel.list_stages(run.id))[0]
        agent = await kernel.annotations.attach(
            run.id,
            attributes={"decision.outcome": "low", "decision.rationale": "r"},
            actor=Actor(kind="agent", id="a1"),
        )
        user = await kernel.annotations.attach(
            run.id,
            attributes={"decision.outcome": "high"},
            actor=Actor(kind="user", id="u1"),
            scope="review",
            scope_id="rv-1",
            attempt=2,
        )
        literal_keys = [
            "a%b.x",
            "aXb.y",
            "a_b.z",
            "aab.w",
            "a\\b.v",
            "ab\\",
            "A%b.u",
            "Decision.cap",
            "a%",
            "ab",
            "é.accent",
            "éa.more",
        ]
        literals = await kernel.annotations.attach(
            run.id, attributes=dict.fromkeys(literal_keys, 1)
        )

        async def keys(**filters: Any) -> list[str]:
            return [r.key for r in await kernel.annotations.list(run.id, **filters)]

        # B65: a given key wins over key_prefix.
        assert await keys(key="decision.outcome") == ["decision.outcome"] * 2
        assert await keys(key="decision.outcome", key_prefix="zzz") == ["decision.outcome"] * 2
        assert await keys(key_prefix="decision.") == [
            "decision.outcome",
            "decision.rationale",
            "decision.outcome",
        ]
        assert await keys(scope="review") == ["decision.outcome"]
        assert await keys(scope="stage") == ["stage.k", "stage.plain"]
        assert await keys(scope_id="only") == ["stage.k", "stage.plain"]
        assert await keys(scope_id="rv-1") == ["decision.outcome"]
        assert await keys(actor_id="a1") == ["decision.outcome", "decision.rationale"]
        assert await keys(actor_kind="user") == ["decision.outcome"]
        assert await keys(attempt=2) == ["decision.outcome"]
        assert len(await keys(attempt=0)) == 2 + 2 + len(literal_keys)
        # AND-combined.
        assert await keys(key_prefix="decision.", actor_kind="agent") == [
            "decision.outcome",
            "decision.rationale",
        ]
        assert await keys(key="decision.outcome", actor_kind="agent", scope="run") == [
            "decision.outcome"
        ]
        assert await keys(scope="stage", actor_id="a1") == []
        assert await keys(key_prefix="decision.", scope="review", attempt=0) == []
        # since/until are inclusive and compare created_at.
        t_agent, t_user = agent[0].created_at, user[0].created_at
        assert t_agent < t_user
        assert await keys(since=t_user, key_prefix="decision.") == ["decision.outcome"]
        assert await keys(until=t_agent, key_prefix="decision.") == [
            "decision.outcome",
            "decision.rationale",
        ]
        assert await keys(since=t_agent, until=t_agent) == [
            "decision.outcome",
            "decision.rationale",
        ]
        assert await keys(since=t_user, until=t_user) == ["decision.outcome"]
        assert await keys(since=literals[0].created_at) == literal_keys
        assert await keys(until=record.completed_at) == ["stage.k", "stage.plain"]
        assert await keys(key_prefix="decision.", limit=1) == ["decision.outcome"]

        # B66: key_prefix is a literal, case-sensitive prefix; %, _ and \ are not wildcards.
        assert await keys(key_prefix="a%") == ["a%b.x", "a%"]
        assert await keys(key_prefix="a_") == ["a_b.z"]
        assert await keys(key_prefix="a\\") == ["a\\b.v"]
        assert await keys(key_prefix="ab\\") == ["ab\\"]
        assert await keys(key_prefix="A") == ["A%b.u"]
        assert await keys(key_prefix="Decision.") == ["Decision.cap"]
        assert await keys(key_prefix="decision.", scope="run", actor_kind="agent") == [
            "decision.outcome",
            "decision.rationale",
        ]
        assert await keys(key_prefix="a") == [
            "a%b.x",
            "aXb.y",
            "a_b.z",
            "aab.w",
            "a\\b.v",
            "ab\\",
            "a%",
            "ab",
        ]
        assert await keys(key_prefix="é") == ["é.accent", "éa.more"]
        assert await keys(key_prefix="é.") == ["é.accent"]
        assert await keys(key_prefix="%") == []
        assert await keys(key_prefix="_") == []


# -- B67–B69, B73: the legacy metadata shim -----------------------------------------------------


async def test_legacy_metadata_shim(env, store):
    metadata = {"a": 1, "b": {"nested": [True]}}
    async with running_kernel(env, store, SIMPLE) as kernel:
        with pytest.warns(DeprecationWarning, match="metadata"):
            created = await kernel.dispatch(
                RunCreate(workflow_id="ann-simple", input={"token": "t"}, metadata=metadata)
            )
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=WAIT)
        with pytest.warns(DeprecationWarning):
            other = await kernel.dispatch(
                {
                    "type": "run.create",
                    "workflowId": "ann-simple",
                    "input": {"token": "u"},
                    "metadata": {"x": "y"},
                }
            )
        await kernel.wait_for_run(other.workflow_run_id, timeout=WAIT)

        async def listed(run_id: str = run.id, **filters: Any) -> list[tuple[str, Any]]:
            return [(r.key, r.value) for r in await kernel.annotations.list(run_id, **filters)]

        # B73: still stored on the run.
        assert (await kernel.get_run(run.id)).metadata == metadata
        # B67: virtual rows, merged with the stored ones in (created_at, id) order.
        rows = await kernel.annotations.list(run.id)
        virtual = [r for r in rows if r.id.startswith("synthesized:")]
        assert [r.id for r in virtual] == [f"synthesized:{run.id}:a", f"synthesized:{run.id}:b"]
        assert rows[:2] == virtual  # run.created_at comes before the stage's rows
        for row, (name, value) in zip(virtual, metadata.items(), strict=True):
            assert row.key == f"legacy.metadata.{name}" and row.value == value
            assert row.created_at == run.created_at
            assert (row.scope, row.scope_id, row.attempt, row.workflow_stage_record_id) == (
                "run",
                None,
                0,
                None,
            )
            assert (row.actor_kind, row.actor_id, row.payload, row.idempotency_key) == (
                None,
                None,
                None,
                None,
            )
        assert await listed(other.workflow_run_id, key_prefix="legacy.") == [
            ("legacy.metadata.x", "y")
        ]
        both = [("legacy.metadata.a", 1), ("legacy.metadata.b", {"nested": [True]})]
        # Filters that legacy rows can pass keep them; key and key_prefix both apply.
        assert await listed(scope="run") == both
        assert await listed(attempt=0, key_prefix="legacy.") == both
        assert await listed(key="legacy.metadata.a") == both[:1]
        assert await listed(key="legacy.metadata.zz") == []
        assert await listed(key_prefix="leg") == both
        assert await listed(key_prefix="legacy.metadata.b") == both[1:]
        # For virtual rows key and key_prefix both apply (ENGINE-SEMANTICS §6, legacy shim).
        assert await listed(key_prefix="legacy.metadata.a", key="legacy.metadata.b") == []
        assert await listed(key_prefix="legacy.", key="legacy.metadata.b") == both[1:]
        assert await listed(key_prefix="stage.") == [("stage.k", "from-stage"), ("stage.plain", 1)]
        assert await listed(since=run.created_at, until=run.created_at) == both
        assert await listed(since=run.created_at + timedelta(microseconds=1), scope="run") == []
        assert await listed(until=run.created_at - timedelta(microseconds=1)) == []
        assert await listed(limit=1) == both[:1]
        # B69: filters legacy rows cannot pass suppress them.
        assert await listed(scope="stage") == [("stage.k", "from-stage"), ("stage.plain", 1)]
        assert await listed(scope="review") == []
        assert await listed(scope_id="only") == [("stage.k", "from-stage"), ("stage.plain", 1)]
        assert await listed(actor_id="someone") == []
        assert await listed(actor_kind="system") == []
        assert await listed(attempt=1) == []
        assert await listed(key="decision.outcome") == []

        # A differently-cased key is not a legacy row: synthesis goes on.
        await kernel.annotations.attach(run.id, attributes={"Legacy.metadata.a": "cased"})
        assert await listed(key_prefix="legacy.") == both
        # B68: any stored legacy.metadata.* row stops all synthesis for that run.
        stored = await kernel.annotations.attach(run.id, attributes={"legacy.metadata.a": 9})
        assert await listed(key_prefix="legacy.") == [("legacy.metadata.a", 9)]
        assert await listed(key="legacy.metadata.b") == []
        assert stored[0].id in [r.id for r in await kernel.annotations.list(run.id)]
        assert not any(
            r.id.startswith("synthesized:") for r in await kernel.annotations.list(run.id)
        )
        # The other run is unaffected.
        assert await listed(other.workflow_run_id, key_prefix="legacy.") == [
            ("legacy.metadata.x", "y")
        ]


async def test_migrate_legacy_is_complete_per_run_and_idempotent(env, store, monkeypatch):
    too_long = "k" * 250  # legacy.metadata. + 250 characters: over the 255-character key limit
    plans: dict[str, dict[str, Any] | None] = {
        "full": {"a": 1, "b": "x", "c": None, "d": {"n": [1]}, "e": False},
        "single": {"only": True},
        "none": None,
        "empty": {},
        "manual": {"a": 1, "z": 2},
        "bad-key": {"ok": 1, too_long: 2},
        "failing": {"f1": 1, "f2": 2},
    }
    async with running_kernel(env, store, SIMPLE) as kernel:
        runs: dict[str, Any] = {}
        for name, metadata in plans.items():
            warns = pytest.warns(DeprecationWarning) if metadata is not None else nullcontext()
            with warns:
                created = await kernel.dispatch(
                    RunCreate(workflow_id="ann-simple", input={"token": name}, metadata=metadata)
                )
            runs[name] = created.workflow_run_id
        for run_id in runs.values():
            await kernel.wait_for_run(run_id, timeout=WAIT)
        # Already has a stored legacy row: left alone by the migration.
        await kernel.annotations.attach(runs["manual"], attributes={"legacy.metadata.a": "kept"})
        virtual = {name: await kernel.annotations.list(run_id) for name, run_id in runs.items()}
        assert [r.key for r in virtual["full"] if r.scope == "run"] == [
            f"legacy.metadata.{k}"
            for k in plans["full"]  # type: ignore[union-attr]
        ]

        # A failure while migrating a run rolls that run back whole.
        real_insert = engine.store.legacy.insert_annotations

        def insert_then_fail(session: Any, drafts: Any, where: Any, now: Any) -> Any:
            inserted = real_insert(session, drafts, where, now)
            if where.run_id == runs["failing"]:
                raise RuntimeError("database went away mid-run")
            return inserted

        with monkeypatch.context() as patch:
            patch.setattr(engine.store.legacy, "insert_annotations", insert_then_fail)
            with pytest.raises(RuntimeError, match="mid-run"):
                await kernel.annotations.migrate_legacy(batch_size=2)
        # Runs before it (by id) were migrated, each in its own transaction; it was not.
        assert await kernel.annotations.list(runs["failing"]) == virtual["failing"]
        partly = {name: await kernel.annotations.list(run_id) for name, run_id in runs.items()}
        for name in ("full", "single"):
            assert not any(r.id.startswith("synthesized:") for r in partly[name])

        with pytest.raises(ValueError):
            await kernel.annotations.migrate_legacy(batch_size=0)
        migrated = await kernel.annotations.migrate_legacy(batch_size=2)
        after = {name: await kernel.annotations.list(run_id) for name, run_id in runs.items()}
        total = (await counts(store))["workflow_annotations"]
        again = await kernel.annotations.migrate_legacy(batch_size=2)
        assert again == 0
        assert await kernel.annotations.migrate_legacy() == 0
        assert (await counts(store))["workflow_annotations"] == total
        assert {name: await kernel.annotations.list(run_id) for name, run_id in runs.items()} == (
            after
        )
        # Migrated values are queryable across runs like any annotation.
        page = await kernel.annotations.query(key="legacy.metadata.b", value="x")
        assert [r.workflow_run_id for r in page.items] == [runs["full"]]
        run_records = {name: await kernel.get_run(run_id) for name, run_id in runs.items()}

    # The re-run migrated only "failing"; "bad-key" cannot be stored whole, so none of it is;
    # the rest have nothing to migrate or were migrated already.
    assert migrated == 1
    for name in ("full", "single", "failing"):
        run = run_records[name]
        legacy = [r for r in after[name] if r.key.startswith("legacy.metadata.")]
        before = [r for r in virtual[name] if r.key.startswith("legacy.metadata.")]
        # The stored set is exactly what the virtual rows showed.
        assert [(r.key, r.value) for r in legacy] == [(r.key, r.value) for r in before]
        assert run.metadata == plans[name]  # the column is left in place
        for row in legacy:
            assert not row.id.startswith("synthesized:")
            assert row.idempotency_key == "legacy-metadata"
            assert row.created_at == run.created_at
            assert (row.scope, row.scope_id, row.attempt, row.workflow_stage_record_id) == (
                "run",
                None,
                0,
                None,
            )
            assert row.actor_kind is None and row.payload is None
        stage_rows = [r for r in after[name] if r.scope == "stage"]
        assert [(r.key, r.value) for r in stage_rows] == [
            ("stage.k", "from-stage"),
            ("stage.plain", 1),
        ]
    assert ("legacy.metadata.c", None) in [(r.key, r.value) for r in after["full"]]
    for name in ("none", "empty", "manual", "bad-key"):
        assert after[name] == virtual[name], name
    assert any(r.id.startswith("synthesized:") for r in after["bad-key"])
    assert [(r.key, r.value) for r in after["manual"] if r.scope == "run"] == [
        ("legacy.metadata.a", "kept")
    ]


async def test_json_number_values_round_trip_exactly(env, store):
    """Top-level JSON numbers come back as stored on both backends (on SQLite the annotation
    columns are TEXT since revision 0004: a JSON-declared column had NUMERIC affinity)."""
    async with running_kernel(env, store, SIMPLE) as kernel:
        run = await completed_run(kernel)
        values = {"n.float": 1.0, "n.big": 2**70, "n.huge": 10**400, "n.list": [1.0, 2**70]}
        await kernel.annotations.attach(run.id, attributes=values)
        rows = await kernel.annotations.list(run.id, key_prefix="n.")
    stored = {r.key: r.value for r in rows}
    assert stored == values
    assert {k: type(v) for k, v in stored.items()} == {k: type(v) for k, v in values.items()}
