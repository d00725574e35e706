"""Bad input, property-based (Hypothesis), on SQLite and PostgreSQL.

Every input below either gets a clear error (an :class:`~engine.EngineError` such as
``InvalidInputError``/``AnnotationError``, or pydantic's ``ValidationError`` naming the field
of a malformed command) with the side-store unchanged (the full content of every table, row by
row), or a correct result (every field of what was stored reads back as its JSON form, and
nothing else changed; a repeated idempotency key changes nothing at all; filters return
exactly the rows Python's ``str.startswith`` selects; a page after a cursor holds exactly the
rows after it). A sample of accepted ``RunCreate`` commands also runs through a worker to the
end:

- ``RunCreate`` with inputs, configs, annotations and workflow ids of wrong types and odd
  values (non-JSON objects, NaN and infinities, NUL bytes, lone surrogates, deep nesting);
- ``kernel.annotations.attach`` with keys, values, payloads, scopes and actors of every odd
  kind (empty, huge, unicode, NUL, surrogates, NaN/inf, deeply nested, non-JSON objects);
- ``list``/``query`` key prefixes made of SQL wildcards, quotes and backslashes;
- ``query`` cursors tampered with in every way.

A static check also proves that no SQL text in the engine is built from runtime values.

The default run draws 30 examples per property; ``-m reliability`` draws 300.
"""

from __future__ import annotations

import ast
import base64
import json
import math
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from engine import (
    Actor,
    AnnotationError,
    EngineError,
    Kernel,
    RunNotFoundError,
    StageContext,
    create_worker,
    define_stage,
    define_workflow,
)
from engine.store import SqlStore
from engine.store.contract import NewRun
from tests.reliability.support import ROOT, table_contents

SHORT = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
LONG = settings(SHORT, max_examples=300)

# -- strategies -------------------------------------------------------------------------------

SURROGATES = st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"]),
    min_size=1,
    max_size=2,
)
ODD_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "a\x00b",
            "%",
            "_",
            "\\",
            "'",
            '"',
            "'; DROP TABLE workflow_runs; --",
            "%' OR '1'='1",
            "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✓",
            "\u202eRTL",
            "\ufeffBOM",
            "x" * 256,
            "é" * 1100,
        ]
    ),
    st.tuples(st.text(max_size=3), SURROGATES).map("".join),
)


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


class NotJson:
    def __repr__(self) -> str:
        return "NotJson()"


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),  # NaN and infinities included
    ODD_TEXT,
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ODD_TEXT, inner, max_size=3),
    max_leaves=8,
)
NOT_JSON = st.sampled_from(
    [
        {1, 2},
        frozenset(),
        NotJson(),
        b"bytes",
        bytearray(b"x"),
        complex(1, 2),
        datetime(2024, 1, 1, tzinfo=UTC),
        Decimal("1.5"),
        {("tuple", "key"): 1},
        [1, {2, 3}],
        {"inner": NotJson()},
        10**5000,  # beyond Python's int-to-str limit
    ]
)
ODD_VALUES = st.one_of(
    JSONISH,
    NOT_JSON,
    st.integers(min_value=1, max_value=3000).map(nested),
    st.sampled_from(["x" * 70_000, ["y" * 1000] * 80]),  # over the 64 KiB value limit
)

# -- helpers ----------------------------------------------------------------------------------


def same_json(stored: Any, given: Any) -> bool:
    """Whether ``stored`` is what JSON makes of ``given``: tuples become lists, object keys
    strings, and numbers compare as numbers (PostgreSQL's jsonb may read 1e308 back as an
    integer). Iterative, for values nested a thousand deep."""
    stack = [(stored, given)]
    while stack:
        a, b = stack.pop()
        if isinstance(b, tuple):
            b = list(b)
        if isinstance(a, bool) or isinstance(b, bool):
            if a is not b:
                return False
        elif isinstance(a, int | float) and isinstance(b, int | float):
            if not (a == b or (isinstance(a, float) or isinstance(b, float)) and _close(a, b)):
                return False
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                return False
            stack.extend(zip(a, b, strict=True))
        elif isinstance(a, dict) and isinstance(b, dict):
            given_by_key = {_json_key(k): v for k, v in b.items()}
            if set(a) != set(given_by_key):
                return False
            stack.extend((a[k], given_by_key[k]) for k in a)
        elif a != b:
            return False
    return True


def _json_key(key: Any) -> str:
    """The string JSON makes of an object key (``1`` -> ``"1"``, ``None`` -> ``"null"``)."""
    return key if isinstance(key, str) else str(json.loads(json.dumps({key: 0})).popitem()[0])


def _close(a: float, b: float) -> bool:
    try:
        return float(a) == float(b)
    except OverflowError:
        return False


CLEAR_ERRORS = (EngineError, ValidationError)


async def unchanged_on_error(
    store: SqlStore, call: Callable[[], Coroutine[Any, Any, Any]]
) -> tuple[Any, BaseException | None]:
    """Run ``call``; a clear error is returned (not raised) and must have written nothing."""
    before = await table_contents(store)
    try:
        return await call(), None
    except CLEAR_ERRORS as error:
        assert await table_contents(store) == before, f"{error!r} changed the side-store"
        return None, error


def changed(
    before: dict[str, list[tuple[Any, ...]]], after: dict[str, list[tuple[Any, ...]]]
) -> dict[str, tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Per table that differs: (rows gone or changed, rows new or changed)."""
    out = {}
    for name in before:
        old, new = before[name], after[name]
        if old != new:
            out[name] = ([r for r in old if r not in new], [r for r in new if r not in old])
    return out


class Ticket(BaseModel):
    text: str


class Knob(BaseModel):
    threshold: float = 0.5


@define_stage(id="classify", input=Ticket, config=Knob)
async def classify(ctx: StageContext[Ticket, Knob]) -> Any:
    return {"text": ctx.input.text}


@define_stage(id="anything", input=None)
async def anything(ctx: StageContext[None, None]) -> Any:
    return {}


WORKFLOWS = [
    define_workflow(id="typed", input=Ticket).pipe(classify).build(),
    define_workflow(id="untyped").pipe(anything).build(),
]


def kernel_for(env: Any, store: SqlStore) -> Kernel:
    # No worker polls this queue: created runs stay PENDING, which is all these tests need.
    return Kernel(
        client=env.client, store=store, workflows=WORKFLOWS, task_queue=f"tq-bad-{uuid.uuid4()}"
    )


async def new_run(store: SqlStore, workflow_id: str = "untyped") -> str:
    run_id, _ = await store.create_run(
        NewRun(
            workflow_id=workflow_id,
            workflow_name=workflow_id,
            input={},
            config={},
            priority=5,
            metadata=None,
            idempotency_key=str(uuid.uuid4()),
        ),
        "wfe-run-{run_id}",
    )
    return run_id


# -- RunCreate --------------------------------------------------------------------------------

CREATE = st.fixed_dictionaries(
    {
        "type": st.just("run.create"),
        "workflowId": st.one_of(st.sampled_from(["typed", "untyped"]), ODD_TEXT, SCALARS),
        "input": st.one_of(
            ODD_VALUES,
            st.fixed_dictionaries({"text": st.one_of(ODD_TEXT, SCALARS)}),
            st.fixed_dictionaries({"text": ODD_TEXT, "extra": ODD_VALUES}),
        ),
    },
    optional={
        "config": st.one_of(
            ODD_VALUES,
            st.fixed_dictionaries({"classify": st.one_of(ODD_VALUES, st.just({}))}),
            st.fixed_dictionaries(
                {"classify": st.fixed_dictionaries({"threshold": st.one_of(SCALARS, ODD_TEXT)})}
            ),
        ),
        "priority": st.one_of(st.integers(), ODD_TEXT, st.floats()),
        "annotations": st.lists(
            st.fixed_dictionaries({"attributes": st.dictionaries(ODD_TEXT, ODD_VALUES)}),
            max_size=2,
        ),
        "idempotencyKey": ODD_TEXT,
        "metadata": st.one_of(st.dictionaries(ODD_TEXT, ODD_VALUES, max_size=2), ODD_VALUES),
    },
)


async def check_run_create(env: Any, store: SqlStore, command: dict[str, Any]) -> None:
    kernel = kernel_for(env, store)
    await store.truncate_all()  # each example on an empty store: its snapshots stay small
    before = await table_contents(store)
    result, error = await unchanged_on_error(store, lambda: kernel.dispatch(command))
    if error is not None:
        assert str(error), "an error must say what is wrong"
        return
    run_id = result.workflow_run_id
    await check_created_run(kernel, store, command, run_id)
    if command.get("idempotencyKey") is not None:
        # The same key again: the same run, and not a row touched.
        created = await table_contents(store)
        again = await kernel.dispatch(command)
        assert again.workflow_run_id == run_id
        assert await table_contents(store) == created
    diff = changed(before, await table_contents(store))
    assert set(diff) <= {
        "workflow_runs",
        "workflow_annotations",
        "outbox_events",
        "idempotency_keys",
        "workflow_chain_links",  # the new run's record chain (issue 21)
    }
    assert all(not gone for gone, _ in diff.values()), "an existing row changed"


async def check_created_run(
    kernel: Kernel, store: SqlStore, command: dict[str, Any], run_id: str
) -> None:
    """Every field of the new run, and of each annotation it was created with, reads back."""
    workflow = kernel.workflow(command["workflowId"])
    run = await store.get_run(run_id)
    assert run.id == run_id
    assert run.workflow_id == command["workflowId"] == workflow.id
    assert run.workflow_name == workflow.name
    assert run.status == "PENDING"
    assert same_json(run.input, command["input"])
    assert same_json(run.config, workflow.merge_config(command.get("config", {})))
    assert run.priority == command.get("priority", 5)
    assert same_json(run.metadata, command.get("metadata"))
    assert (run.output, run.started_at, run.completed_at, run.duration_ms) == (None,) * 4
    assert (run.total_cost, run.total_tokens) == (0.0, 0)
    stored = [
        a for a in await kernel.annotations.list(run_id) if not a.id.startswith("synthesized:")
    ]
    expected = [
        (key, value)
        for envelope in command.get("annotations", [])
        for key, value in envelope["attributes"].items()
        if value is not None
    ]
    assert sorted(a.key for a in stored) == sorted(key for key, _ in expected)
    by_key = dict(expected)
    for annotation in stored:
        assert same_json(annotation.value, by_key[annotation.key]), annotation
        assert annotation.workflow_run_id == run_id
        assert (annotation.scope, annotation.scope_id) == ("run", None), annotation
        assert annotation.workflow_stage_record_id is None and annotation.attempt == 0
        assert annotation.payload is None and annotation.idempotency_key is None
        assert annotation.actor_kind is None and annotation.actor_id is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@SHORT
@given(command=CREATE)
async def test_run_create_with_bad_input(env: Any, store: SqlStore, command: Any) -> None:
    await check_run_create(env, store, command)


@pytest.mark.reliability
@pytest.mark.timeout(900)  # 300 examples, each snapshotting every table
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@LONG
@given(command=CREATE)
async def test_run_create_with_bad_input_many(env: Any, store: SqlStore, command: Any) -> None:
    await check_run_create(env, store, command)


async def check_runs_to_the_end(env: Any, store: SqlStore, commands: list[dict[str, Any]]) -> int:
    """Dispatch every command with a worker polling; each accepted one runs to the end, and
    its stage got the input as given. Returns how many runs were accepted."""
    kernel = kernel_for(env, store)
    accepted: dict[str, dict[str, Any]] = {}
    for command in commands:  # before the worker starts: nothing else writes meanwhile
        result, error = await unchanged_on_error(
            store, lambda command=command: kernel.dispatch(command)
        )
        if error is None:
            accepted.setdefault(result.workflow_run_id, command)
    async with create_worker(kernel):
        for run_id, command in accepted.items():
            run = await kernel.wait_for_run(run_id, timeout=timedelta(seconds=60))
            assert run.status == "COMPLETED", (command, run)
            expected = {"text": command["input"]["text"]} if run.workflow_id == "typed" else {}
            assert run.output == expected, (command, run.output)
            stages = await kernel.list_stages(run_id)
            assert [(s.stage_id, s.status, s.output_data) for s in stages] == [
                ("classify" if run.workflow_id == "typed" else "anything", "COMPLETED", expected)
            ]
            events = [e.event_type for e in await kernel.list_outbox_events(run_id)]
            assert events.count("workflow:completed") == 1 and events.count("stage:completed") == 1
    return len(accepted)


# Odd but storable: every one of these is accepted (no NUL, no lone surrogate, finite numbers).
STORABLE_TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]))
STORABLE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | STORABLE_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(STORABLE_TEXT, inner, max_size=3),
    max_leaves=8,
)
ACCEPTABLE = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("run.create"), "workflowId": st.just("typed")},
        optional={"input": st.fixed_dictionaries({"text": STORABLE_TEXT})},
    ).map(lambda c: {"input": {"text": ""}, **c}),
    st.fixed_dictionaries(
        {"type": st.just("run.create"), "workflowId": st.just("untyped"), "input": STORABLE},
        optional={
            "annotations": st.lists(
                st.fixed_dictionaries(
                    {"attributes": st.dictionaries(STORABLE_TEXT.filter(bool), STORABLE)}
                ),
                max_size=2,
            )
        },
    ),
)


@pytest.mark.reliability
@pytest.mark.timeout(900)  # 300 examples, each snapshotting every table
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@settings(SHORT, max_examples=5)
@given(good=st.lists(ACCEPTABLE, min_size=6, max_size=6), odd=st.lists(CREATE, max_size=6))
async def test_accepted_run_creates_run_to_the_end(
    env: Any, store: SqlStore, good: Any, odd: Any
) -> None:
    assert await check_runs_to_the_end(env, store, [*good, *odd]) >= len(good)


# -- unknown and odd run ids -----------------------------------------------------------------


async def check_run_id(env: Any, store: SqlStore, run_id: str) -> None:
    """Reads, attach and cancel of a run id that names no run: RunNotFoundError, or
    ``cancelled=False`` for RunCancel (as for any unknown run), never a driver error."""
    kernel = kernel_for(env, store)
    before = await table_contents(store)  # compared once, after every call below
    for call in (
        lambda: kernel.get_run(run_id),
        lambda: kernel.list_stages(run_id),
        lambda: kernel.list_logs(run_id),
        lambda: kernel.list_outbox_events(run_id),
        lambda: kernel.annotations.list(run_id),
        lambda: kernel.annotations.attach(run_id, attributes={"k": 1}),
        lambda: kernel.wait_for_run(run_id, timeout=timedelta(milliseconds=1)),
    ):
        try:
            result, error = await call(), None
        except CLEAR_ERRORS as caught:
            result, error = None, caught
        assert isinstance(error, RunNotFoundError), (run_id, result, error)
    result = await kernel.dispatch({"type": "run.cancel", "workflowRunId": run_id})
    assert result.cancelled is False
    assert await table_contents(store) == before


@SHORT
@given(run_id=ODD_TEXT)
async def test_odd_run_ids(env: Any, store: SqlStore, run_id: Any) -> None:
    await check_run_id(env, store, run_id)


@pytest.mark.reliability
@pytest.mark.timeout(900)  # 300 examples, each snapshotting every table
@LONG
@given(run_id=ODD_TEXT)
async def test_odd_run_ids_many(env: Any, store: SqlStore, run_id: Any) -> None:
    await check_run_id(env, store, run_id)


# -- attach -----------------------------------------------------------------------------------

ATTACH = st.fixed_dictionaries(
    {"attributes": st.one_of(st.dictionaries(ODD_TEXT, ODD_VALUES, max_size=3), ODD_VALUES)},
    optional={
        "payload": ODD_VALUES,
        "scope": ODD_TEXT,
        "scope_id": ODD_TEXT,
        "actor": st.builds(Actor, kind=ODD_TEXT, id=ODD_TEXT, version=st.none() | ODD_TEXT),
        "idempotency_key": ODD_TEXT,
        "attempt": st.integers(min_value=-(2**40), max_value=2**40),
    },
)


async def check_attach(env: Any, store: SqlStore, run_id: str, envelope: dict[str, Any]) -> None:
    kernel = kernel_for(env, store)
    before = await table_contents(store)
    earlier = {a.id: a for a in await kernel.annotations.list(run_id, limit=100_000)}
    rows, error = await unchanged_on_error(
        store, lambda: kernel.annotations.attach(run_id, **envelope)
    )
    if error is not None:
        assert isinstance(error, AnnotationError), repr(error)
        return
    attributes = envelope["attributes"]
    expected = {k: v for k, v in attributes.items() if v is not None}
    key = envelope.get("idempotency_key")
    returned = {r.key for r in rows}
    assert returned <= set(expected)
    # A key left out was deduplicated: an earlier row has the same (run, key, idempotency key).
    for missing in set(expected) - returned:
        assert key is not None, f"{missing!r} was neither stored nor deduplicated"
        assert any(a.key == missing and a.idempotency_key == key for a in earlier.values())
    # Nothing but the returned rows was written (and nothing existing changed).
    diff = changed(before, await table_contents(store))
    # The record chain (issue 21): new links only, and the run row's head moves on.
    chain = diff.pop("workflow_chain_links", ([], []))
    assert not chain[0], "an existing link changed"
    run_rows = diff.pop("workflow_runs", ([], []))
    assert len(run_rows[0]) == len(run_rows[1]) <= 1, run_rows
    assert set(diff) <= {"workflow_annotations"}, diff
    if diff:
        gone, new = diff["workflow_annotations"]
        assert not gone and sorted(str(r[0]) for r in new) == sorted(r.id for r in rows)
    else:
        assert rows == []
    stored = {a.id: a for a in await kernel.annotations.list(run_id, limit=100_000)}
    actor = envelope.get("actor")
    for row in rows:
        read = stored[row.id]
        assert read == row, (read, row)  # what attach returned is what is stored
        assert read.key == row.key and read.workflow_run_id == run_id
        assert same_json(read.value, expected[row.key]), (read.value, row.key)
        assert same_json(read.payload, envelope.get("payload"))
        assert read.idempotency_key == key
        assert read.attempt == envelope.get("attempt", 0)
        assert read.scope == envelope.get("scope", "run")
        assert read.scope_id == envelope.get("scope_id")
        assert read.workflow_stage_record_id is None
        assert (read.actor_kind, read.actor_id, read.actor_version) == (
            (actor.kind, actor.id, actor.version) if actor is not None else (None, None, None)
        )


@SHORT
@given(envelope=ATTACH)
async def test_attach_odd_annotations(env: Any, store: SqlStore, envelope: Any) -> None:
    await check_attach(env, store, await new_run(store), envelope)


@pytest.mark.reliability
@pytest.mark.timeout(900)  # 300 examples, each snapshotting every table
@LONG
@given(envelope=ATTACH)
async def test_attach_odd_annotations_many(env: Any, store: SqlStore, envelope: Any) -> None:
    await store.truncate_all()  # each example on an empty store: its snapshots stay small
    await check_attach(env, store, await new_run(store), envelope)


# -- key prefixes with SQL wildcards ----------------------------------------------------------

WILD = "%_\\'\"[]*?.^$aAé𝔘\u00ff"
KEYS = st.lists(st.text(alphabet=WILD, min_size=1, max_size=5), min_size=1, max_size=8, unique=True)
PREFIXES = st.one_of(st.text(alphabet=WILD, max_size=4), ODD_TEXT)


async def check_prefix(env: Any, store: SqlStore, keys: list[str], prefix: str) -> None:
    kernel = kernel_for(env, store)
    workflow_id = f"prefix-{uuid.uuid4().hex}"
    run_id = await new_run(store, workflow_id)
    await kernel.annotations.attach(run_id, attributes={key: 1 for key in keys})
    expected = sorted(key for key in keys if key.startswith(prefix))

    listed, error = await unchanged_on_error(
        store, lambda: kernel.annotations.list(run_id, key_prefix=prefix)
    )
    if error is not None:
        assert isinstance(error, AnnotationError), repr(error)
    else:
        assert sorted(a.key for a in listed) == expected

    page, error = await unchanged_on_error(
        store,
        lambda: kernel.annotations.query(key_prefix=prefix, workflow_id=workflow_id, limit=1000),
    )
    if error is not None:
        assert isinstance(error, AnnotationError), repr(error)
    else:
        assert sorted(a.key for a in page.items) == expected
        assert page.next_cursor is None


@SHORT
@given(keys=KEYS, prefix=PREFIXES)
async def test_key_prefix_is_literal(env: Any, store: SqlStore, keys: Any, prefix: Any) -> None:
    await check_prefix(env, store, keys, prefix)


@pytest.mark.reliability
@pytest.mark.timeout(900)  # 300 examples, each snapshotting every table
@LONG
@given(keys=KEYS, prefix=PREFIXES)
async def test_key_prefix_is_literal_many(
    env: Any, store: SqlStore, keys: Any, prefix: Any
) -> None:
    await store.truncate_all()  # each example on an empty store: its snapshots stay small
    await check_prefix(env, store, keys, prefix)


# -- tampered cursors -------------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


AWARE = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
) | st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-14))]))
CURSORS = st.one_of(
    ODD_TEXT,
    st.binary(max_size=48).map(b64),
    st.tuples(JSONISH, JSONISH).map(lambda pair: b64(json.dumps(list(pair)).encode())),
    JSONISH.map(lambda value: b64(json.dumps(value).encode())),
    st.tuples(AWARE, ODD_TEXT).map(
        lambda pair: b64(json.dumps([pair[0].isoformat(), pair[1]]).encode())
    ),
    st.tuples(st.datetimes(), st.text(max_size=5)).map(  # naive datetimes
        lambda pair: b64(json.dumps([pair[0].isoformat(), pair[1]]).encode())
    ),
)
MUTATION = st.tuples(st.integers(min_value=0, max_value=200), st.characters())


async def check_cursor(
    env: Any, store: SqlStore, cursor: str, mutation: tuple[int, str] | None
) -> None:
    kernel = kernel_for(env, store)
    workflow_id = "cursor-target"
    everything = (await kernel.annotations.query(workflow_id=workflow_id, limit=1000)).items
    if not everything:  # the first example builds the data: 3 runs × 4 rows
        for _ in range(3):
            run_id = await new_run(store, workflow_id)
            for n in range(4):
                await kernel.annotations.attach(run_id, attributes={"k.n": n})
        everything = (await kernel.annotations.query(workflow_id=workflow_id, limit=1000)).items
    assert len(everything) == 12
    if mutation is not None:  # a valid cursor with one character changed
        valid = (await kernel.annotations.query(workflow_id=workflow_id, limit=5)).next_cursor
        assert valid is not None
        index, char = mutation
        index %= len(valid)
        cursor = valid[:index] + char + valid[index + 1 :]

    page, error = await unchanged_on_error(
        store, lambda: kernel.annotations.query(workflow_id=workflow_id, limit=4, cursor=cursor)
    )
    if error is not None:
        assert isinstance(error, AnnotationError), repr(error)
        assert "cursor" in str(error)
        return
    # A cursor that decodes is a position: the page holds the rows right after it, in order.
    at = datetime.fromisoformat(json.loads(base64.urlsafe_b64decode(cursor.encode()))[0])
    ids = [a.id for a in everything]
    got = [a.id for a in page.items]
    assert all(a.created_at >= at for a in page.items)
    if got:
        start = ids.index(got[0])
        assert got == ids[start : start + len(got)]
        assert all(a.created_at <= at for a in everything[:start])
    after = [a for a in everything if a.created_at > at]
    assert len(got) >= min(4, len(after))


@SHORT
@given(cursor=CURSORS, mutation=st.none() | MUTATION)
async def test_tampered_cursors(env: Any, store: SqlStore, cursor: Any, mutation: Any) -> None:
    await check_cursor(env, store, cursor, mutation)


@pytest.mark.reliability
@pytest.mark.timeout(900)  # 300 examples, each snapshotting every table
@LONG
@given(cursor=CURSORS, mutation=st.none() | MUTATION)
async def test_tampered_cursors_many(env: Any, store: SqlStore, cursor: Any, mutation: Any) -> None:
    await check_cursor(env, store, cursor, mutation)


# -- typed value queries ----------------------------------------------------------------------


@SHORT
@given(key=ODD_TEXT, value=ODD_VALUES)
async def test_query_and_count_by_odd_values(
    env: Any, store: SqlStore, key: Any, value: Any
) -> None:
    kernel = kernel_for(env, store)
    for call in (
        lambda: kernel.annotations.query(key=key, value=value),
        lambda: kernel.annotations.count_runs(key, value),
        lambda: kernel.annotations.count_runs(match={key: value, "other": 1}),
    ):
        result, error = await unchanged_on_error(store, call)
        if error is not None:
            assert isinstance(error, AnnotationError), repr(error)
            continue
        # Strings, numbers and booleans are queryable; no stored number is NaN or infinite,
        # so those match nothing. Anything else must have been refused.
        assert value is None or isinstance(value, bool | str | int | float), (value, result)
        if isinstance(value, float) and not math.isfinite(value):
            assert result in (0, []) or getattr(result, "items", None) == []


# -- SQL is never built from runtime values ---------------------------------------------------

# Raw SQL strings the engine may format, and why that is safe.
FORMATTED_SQL_ALLOWED = {
    ("engine/store/sql_store.py", "truncate_all"): "table names from the ORM metadata",
    ("engine/store/migrate.py", "_set_sqlite_foreign_keys"): "a literal ON or OFF",
}


def test_no_sql_is_built_by_string_concatenation() -> None:
    """Every raw SQL call (``text``, ``exec_driver_sql``, DB-API ``execute``) in the engine takes
    a literal string; values always travel as bound parameters (or SQLAlchemy expressions)."""
    found = []
    for folder in ("engine", "activities", "temporal_workflows"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(), relative)
            for function in ast.walk(tree):
                if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for call in ast.walk(function):
                    if not isinstance(call, ast.Call) or not call.args:
                        continue
                    name = getattr(call.func, "attr", getattr(call.func, "id", ""))
                    if name not in ("text", "exec_driver_sql", "execute", "executescript"):
                        continue
                    sql = call.args[0]
                    built = isinstance(sql, ast.JoinedStr | ast.BinOp) or (
                        isinstance(sql, ast.Call) and getattr(sql.func, "attr", "") == "format"
                    )
                    if built and (relative, function.name) not in FORMATTED_SQL_ALLOWED:
                        found.append(f"{relative}:{call.lineno} in {function.name}()")
    assert found == [], "SQL built from strings at runtime: " + ", ".join(found)
