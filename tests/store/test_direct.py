"""Hot statements through the driver (:mod:`engine.store.direct`) against ``Connection.execute``.

The statement goes to the driver (sqlite3, psycopg) as SQLAlchemy compiled it; for any
statement SQLAlchemy has work to do at execution, it is ``Connection.execute``. Either way the
caller must see the same rows, the same types, the same errors and the same statements.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, bindparam, event, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, StatementError

from engine.store import SqlStore, direct
from engine.store.models import CHAIN_LINKS, RUNS, STAGES
from engine.store.refusals import unfixable
from tests.store.test_one_statement import running_first_stage, stage_commit

TOUCH = (
    update(RUNS)
    .where(RUNS.c.id == bindparam("run_id"))
    .values(
        updated_at=bindparam("at"),
        config=bindparam("config"),
        version=RUNS.c.version + 1,
    )
    .returning(RUNS.c.id, RUNS.c.updated_at, RUNS.c.config, RUNS.c.version, RUNS.c.started_at)
)
"""A cached statement with a literal bind (``+ 1``), typed binds and typed results."""

LINKS = CHAIN_LINKS.insert()
STAGE_WITHOUT_DEFAULTS = STAGES.insert()
"""An insert that leaves columns to their Python-side defaults when its row omits them."""


def via_sqlalchemy(connection: Connection, statement: Any, params: dict[str, Any]) -> list[Any]:
    return [tuple(row) for row in connection.execute(statement, params)]


async def test_returns_what_sqlalchemy_returns_and_stores_the_same(store: SqlStore) -> None:
    ours, theirs = (await running_first_stage(store))[0], (await running_first_stage(store))[0]
    at = datetime(2026, 12, 7, 14, 0, 0, 123456, tzinfo=UTC)
    config = {"b": [1, 2.5, None], "a": {"ü": True}}
    with store.sync_engine.begin() as connection:
        direct_rows = direct.execute(
            connection, TOUCH, {"run_id": ours, "at": at, "config": config}
        )
        plain_rows = via_sqlalchemy(
            connection, TOUCH, {"run_id": theirs, "at": at, "config": config}
        )
    [(run_id, updated_at, stored_config, version, started_at)] = direct_rows
    assert run_id == ours
    assert updated_at == at and updated_at.tzinfo is not None
    assert stored_config == config
    assert isinstance(started_at, datetime) and started_at.tzinfo is not None
    assert direct_rows[0][1:4] == plain_rows[0][1:4]
    assert version == plain_rows[0][3]
    with store.sync_engine.connect() as connection:
        stored = connection.execute(
            select(RUNS.c.id, RUNS.c.updated_at, RUNS.c.config).where(RUNS.c.id.in_([ours, theirs]))
        ).all()
    assert {(updated, tuple(sorted(cfg))) for _, updated, cfg in stored} == {(at, ("a", "b"))}
    assert all(cfg == config for _, _, cfg in stored)


async def test_a_refused_row_raises_sqlalchemys_error(store: SqlStore) -> None:
    run_id, record_id = await running_first_stage(store)
    [stage] = [s for s in await store.list_stages(run_id) if s.id == record_id]
    now = datetime.now(UTC)
    row = {
        "id": record_id,  # taken
        "created_at": now,
        "updated_at": now,
        "version": 1,
        "workflow_run_id": run_id,
        "stage_id": "other",
        "stage_name": "Other",
        "stage_number": 9,
        "execution_group": 9,
        "attempt": 0,
        "status": "PENDING",
        "config": {},
        "poll_count": 0,
    }
    with pytest.raises(IntegrityError), store.sync_engine.begin() as connection:
        direct.execute(connection, STAGE_WITHOUT_DEFAULTS, row)
    assert [s.stage_id for s in await store.list_stages(run_id)] == [stage.stage_id]


async def test_python_side_defaults_are_left_to_sqlalchemy(store: SqlStore) -> None:
    run_id, _ = await running_first_stage(store)
    before = datetime.now(UTC) - timedelta(seconds=1)
    row = {
        "id": f"{run_id}-late",
        "workflow_run_id": run_id,
        "stage_id": "late",
        "stage_name": "Late",
        "stage_number": 2,
        "execution_group": 2,
    }  # no created_at, updated_at, version, attempt, status, poll_count: their defaults
    with store.sync_engine.begin() as connection:
        assert direct.execute(connection, STAGE_WITHOUT_DEFAULTS, row) == []
        stored = connection.execute(select(STAGES).where(STAGES.c.id == row["id"])).one()
    assert stored.created_at >= before and stored.version == 1 and stored.status == "PENDING"


async def test_statement_listeners_see_each_statement(store: SqlStore) -> None:
    run_id, _ = await running_first_stage(store)
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(" ".join(str(args[2]).split()))

    event.listen(store.sync_engine, "before_cursor_execute", record)
    try:
        with store.sync_engine.begin() as connection:
            direct.execute(
                connection, TOUCH, {"run_id": run_id, "at": datetime.now(UTC), "config": {}}
            )
    finally:
        event.remove(store.sync_engine, "before_cursor_execute", record)
    assert any(statement.startswith("UPDATE workflow_runs SET") for statement in seen)


async def test_a_runs_hot_statements_all_go_to_the_driver(store: SqlStore) -> None:
    """Nothing on the hot path falls back to ``Connection.execute`` (a missed default would)."""
    direct._cache.clear()
    run_id, record_id = await running_first_stage(store)  # RunCreate, the first stage's begin
    await store.commit_stage(stage_commit(run_id, record_id))
    await store.get_run(run_id)
    fallbacks = [sorted(key[2]) for key, form in direct._cache.items() if form is None]
    # SQLite writes statement by statement; PostgreSQL in one statement per write.
    assert len(direct._cache) >= (8 if store.is_sqlite else 4) and not fallbacks


async def test_many_rows_store_what_sqlalchemy_stores(store: SqlStore) -> None:
    ours, theirs = (await running_first_stage(store))[0], (await running_first_stage(store))[0]

    def links(run_id: str) -> list[dict[str, Any]]:
        return [
            {
                "workflow_run_id": run_id,
                "sequence": 100 + n,
                "kind": "test",
                "record_id": f"r{n}",
                "body": None if n else '{"ü":1}',
                "hash": f"{n:064x}",
            }
            for n in range(3)
        ]

    with store.sync_engine.begin() as connection:
        direct.execute_many(connection, LINKS, links(ours))
        connection.execute(LINKS, links(theirs))
        stored = connection.execute(
            select(CHAIN_LINKS)
            .where(CHAIN_LINKS.c.sequence >= 100)
            .order_by(CHAIN_LINKS.c.sequence)
        ).all()
    by_run = {run: [row[1:] for row in stored if row[0] == run] for run in (ours, theirs)}
    assert by_run[ours] == by_run[theirs] and len(by_run[ours]) == 3
    with pytest.raises(IntegrityError), store.sync_engine.begin() as connection:
        direct.execute_many(connection, LINKS, links(ours))  # the same sequences again


async def test_a_value_the_types_refuse_fails_as_a_statement_error(store: SqlStore) -> None:
    """SQLite's type processors fail as ``StatementError``, and so does psycopg's JSON dump,
    which SQLAlchemy lets out as a bare ``TypeError``: ``refusals.unfixable`` then knows no
    retry can store it (the commit settles FAILED instead of retrying)."""
    run_id, _ = await running_first_stage(store)
    params = {"run_id": run_id, "at": datetime.now(UTC), "config": {"x": object()}}
    with pytest.raises(Exception) as theirs, store.sync_engine.begin() as connection:
        via_sqlalchemy(connection, TOUCH, params)
    with pytest.raises(StatementError) as ours, store.sync_engine.begin() as connection:
        direct.execute(connection, TOUCH, params)
    assert store.is_sqlite == isinstance(theirs.value, StatementError)
    refused = theirs.value.orig if isinstance(theirs.value, StatementError) else theirs.value
    assert type(ours.value.orig) is type(refused)
    assert unfixable(ours.value) is not None


async def test_errors_hide_their_parameters_and_a_lost_connection_is_dropped(
    store: SqlStore,
) -> None:
    """Parameters are stage outputs and annotations: not for worker logs, as with SQLAlchemy."""
    ours, _ = await running_first_stage(store)
    secret = "s3cret-stage-id"
    row = {"workflow_run_id": ours, "sequence": 1, "kind": secret, "record_id": "r", "hash": "h"}
    with pytest.raises(IntegrityError) as raised, store.sync_engine.begin() as connection:
        direct.execute_many(connection, LINKS, [row, row])
    assert secret not in str(raised.value) and "hidden due to hide_parameters" in str(raised.value)
    if store.is_sqlite:
        return
    with store.sync_engine.connect() as connection:
        backend = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with store.sync_engine.connect() as killer:
            killer.exec_driver_sql(f"SELECT pg_terminate_backend({backend})")
        with pytest.raises(OperationalError) as lost:
            direct.execute(
                connection, TOUCH, {"run_id": ours, "at": datetime.now(UTC), "config": {}}
            )
        assert lost.value.connection_invalidated and connection.invalidated
    with store.sync_engine.connect() as connection:  # the pool hands out a live one
        assert direct.execute(
            connection, TOUCH, {"run_id": ours, "at": datetime.now(UTC), "config": {}}
        )
