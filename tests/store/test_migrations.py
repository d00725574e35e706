"""The Alembic migrations shipped in ``engine.store.migrations``, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, select, text

from engine.errors import SchemaOutOfDateError
from engine.store import SqlStore, migrate
from engine.store.models import AICall, Base, WorkflowRun, WorkflowStage

# The two backends of tests/conftest.py (no tests/__init__.py, so not importable from there).
BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql")]
on_both_backends = pytest.mark.parametrize("empty_database_url", BACKENDS, indirect=True)

REVISION_1 = "0001"
REVISION_2 = "0002"
REVISION_3 = "0003"
REVISION_4 = "0004"
REVISION_5 = "0005"
REVISION_6 = "0006"
REVISION_9 = "0009"
REVISION_7 = "0007"
REVISION_11 = "0011"
REVISION_12 = "0012"
REVISION_13 = "0013"
HEAD = "0014"
MODEL_TABLES = set(Base.metadata.tables)


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def _tables(store: SqlStore) -> set[str]:
    async with store.engine.connect() as connection:
        return await connection.run_sync(_table_names)


def _schema_diffs(connection: Connection) -> list[Any]:
    """What ``alembic check`` would report, with the comparison options of ``env.py``."""
    context = MigrationContext.configure(
        connection,
        opts={
            "target_metadata": Base.metadata,
            "compare_type": migrate.compare_type,
            "compare_server_default": False,
        },
    )
    return list(compare_metadata(context, Base.metadata))


async def _diffs(store: SqlStore) -> list[Any]:
    async with store.engine.connect() as connection:
        return await connection.run_sync(_schema_diffs)


async def _insert_pre_08_rows(store: SqlStore) -> None:
    """Rows as an engine before 0.8 wrote them (plain SQL: the models describe the new schema)."""
    stamp = "2025-01-02 03:04:05.000000"
    async with store.engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO workflow_runs (id, created_at, updated_at, version, workflow_id,"
                " workflow_name, workflow_type, status, input, config, total_cost, total_tokens,"
                " priority, metadata) VALUES ('run-1', :ts, :ts, 1, 'wf', 'Workflow', 'batch',"
                " 'COMPLETED', '{\"q\": 1}', '{}', 0.5, 10, 5, :metadata)"
            ),
            {"ts": stamp, "metadata": json.dumps({"team": "search", "tags": ["a", "b"]})},
        )
        await connection.execute(
            text(
                "INSERT INTO workflow_stages (id, created_at, updated_at, version,"
                " workflow_run_id, stage_id, stage_name, stage_number, execution_group, status,"
                " poll_count) VALUES ('stage-1', :ts, :ts, 1, 'run-1', 'extract', 'Extract', 1,"
                " 1, 'COMPLETED', 0)"
            ),
            {"ts": stamp},
        )
        await connection.execute(
            text(
                "INSERT INTO workflow_logs (id, created_at, workflow_run_id, workflow_stage_id,"
                " stage_id, level, message) VALUES ('log-1', :ts, 'run-1', 'stage-1', 'extract',"
                " 'INFO', 'hello')"
            ),
            {"ts": stamp},
        )
        await connection.execute(
            text(
                "INSERT INTO ai_calls (id, created_at, workflow_run_id, stage_id, topic,"
                " call_type, model_key, model_id, prompt, response, input_tokens, output_tokens,"
                " cost) VALUES ('call-1', :ts, 'run-1', 'extract', 't', 'text', 'k', 'm', 'p',"
                " 'r', 1, 2, 0.1)"
            ),
            {"ts": stamp},
        )


async def _count(store: SqlStore, table: str) -> int:
    async with store.engine.connect() as connection:
        return int((await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def _assert_pre_08_rows_kept(store: SqlStore) -> None:
    """The rows of :func:`_insert_pre_08_rows` are all there (none cascade-deleted)."""
    for table in ("workflow_runs", "workflow_stages", "workflow_logs", "ai_calls"):
        assert await _count(store, table) == 1, table


@on_both_backends
async def test_upgrade_to_head_then_downgrade_to_base(empty_database_url: str) -> None:
    store = SqlStore(empty_database_url)
    try:
        assert await migrate.current_revision(store.engine) is None
        await store.upgrade()
        assert await migrate.current_revision(store.engine) == HEAD
        assert await _tables(store) == MODEL_TABLES | {"alembic_version"}

        await store.downgrade("base")
        assert await migrate.current_revision(store.engine) is None
        assert await _tables(store) <= {"alembic_version"}
    finally:
        await store.dispose()


@on_both_backends
async def test_upgrade_from_revision_1_keeps_rows(empty_database_url: str) -> None:
    store = SqlStore(empty_database_url)
    try:
        await store.upgrade(REVISION_1)
        assert await migrate.current_revision(store.engine) == REVISION_1
        assert "workflow_annotations" not in await _tables(store)
        await _insert_pre_08_rows(store)

        await store.upgrade()

        assert await migrate.current_revision(store.engine) == HEAD
        async with store.engine.connect() as connection:
            run = (
                await connection.execute(
                    select(WorkflowRun.metadata_, WorkflowRun.input, WorkflowRun.status)
                )
            ).one()
            stage = (
                await connection.execute(select(WorkflowStage.stage_id, WorkflowStage.attempt))
            ).one()
            call_metadata = (await connection.execute(select(AICall.metadata_))).scalar_one()
        assert tuple(run) == ({"team": "search", "tags": ["a", "b"]}, {"q": 1}, "COMPLETED")
        assert tuple(stage) == ("extract", 0)
        assert call_metadata is None
        assert await _count(store, "workflow_logs") == 1
        assert await _count(store, "workflow_annotations") == 0
    finally:
        await store.dispose()


@on_both_backends
async def test_downgrade_to_revision_1_keeps_rows_and_reupgrades_cleanly(
    empty_database_url: str,
) -> None:
    store = SqlStore(empty_database_url)
    try:
        await store.upgrade(REVISION_1)
        await _insert_pre_08_rows(store)
        await store.upgrade()

        await store.downgrade(REVISION_1)

        assert await migrate.current_revision(store.engine) == REVISION_1
        assert "workflow_annotations" not in await _tables(store)

        def columns(connection: Connection) -> tuple[set[str], set[str]]:
            inspector = inspect(connection)
            return (
                {c["name"] for c in inspector.get_columns("workflow_stages")},
                {c["name"] for c in inspector.get_columns("ai_calls")},
            )

        async with store.engine.connect() as connection:
            stage_columns, call_columns = await connection.run_sync(columns)
        assert "attempt" not in stage_columns
        assert "metadata" not in call_columns
        # SQLite rebuilt workflow_stages: its logs must not have been cascade-deleted.
        await _assert_pre_08_rows_kept(store)

        await store.upgrade()
        assert await _diffs(store) == []
    finally:
        await store.dispose()


def test_migrations_have_a_single_linear_head() -> None:
    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert script.get_heads() == [HEAD]
    assert migrate.head_revision() == HEAD
    chain = [s.revision for s in script.walk_revisions("base", "heads")]
    assert chain == [
        HEAD,
        REVISION_13,
        REVISION_12,
        REVISION_11,
        REVISION_7,
        REVISION_9,
        REVISION_6,
        REVISION_5,
        REVISION_4,
        REVISION_3,
        REVISION_2,
        REVISION_1,
    ]
    assert script.get_revision(REVISION_1).down_revision is None
    assert script.get_revision(REVISION_2).down_revision == REVISION_1
    assert script.get_revision(REVISION_3).down_revision == REVISION_2
    assert script.get_revision(REVISION_4).down_revision == REVISION_3
    assert script.get_revision(REVISION_5).down_revision == REVISION_4
    assert script.get_revision(REVISION_6).down_revision == REVISION_5
    assert script.get_revision(REVISION_9).down_revision == REVISION_6
    assert script.get_revision(REVISION_7).down_revision == REVISION_9
    assert script.get_revision(REVISION_11).down_revision == REVISION_7
    assert script.get_revision(REVISION_12).down_revision == REVISION_11
    assert script.get_revision(REVISION_13).down_revision == REVISION_12
    assert script.get_revision(HEAD).down_revision == REVISION_13


LOOKUP_INDEXES = {
    ("workflow_runs", "ix_workflow_runs_created_at"),
    ("workflow_annotations", "ix_workflow_annotations_workflow_stage_record_id"),
}


async def _lookup_indexes(store: SqlStore) -> set[tuple[str, str]]:
    def names(connection: Connection) -> set[tuple[str, str]]:
        inspector = inspect(connection)
        return {
            (table, index["name"])
            for table in ("workflow_runs", "workflow_annotations")
            for index in inspector.get_indexes(table)
            if index["name"] is not None
        }

    async with store.engine.connect() as connection:
        return await connection.run_sync(names) & LOOKUP_INDEXES


@on_both_backends
async def test_revision_5_adds_the_lookup_indexes_and_keeps_rows(empty_database_url: str) -> None:
    store = SqlStore(empty_database_url)
    try:
        await store.upgrade(REVISION_1)
        await _insert_pre_08_rows(store)
        await store.upgrade(REVISION_4)
        assert await _lookup_indexes(store) == set()

        await store.upgrade(REVISION_5)
        assert await _lookup_indexes(store) == LOOKUP_INDEXES
        await _assert_pre_08_rows_kept(store)

        await store.downgrade(REVISION_4)
        assert await _lookup_indexes(store) == set()
        await _assert_pre_08_rows_kept(store)
        await store.upgrade()
        assert await _diffs(store) == []
    finally:
        await store.dispose()


@on_both_backends
async def test_schema_at_head_matches_the_models(empty_database_url: str) -> None:
    store = SqlStore(empty_database_url)
    try:
        await store.upgrade()
        assert await _diffs(store) == []

        def key_collation(connection: Connection) -> str | None:
            columns = inspect(connection).get_columns("workflow_annotations")
            key = next(c for c in columns if c["name"] == "key")
            return getattr(key["type"], "collation", None)

        async with store.engine.connect() as connection:
            collation = await connection.run_sync(key_collation)
        assert collation == ("C" if store.engine.dialect.name == "postgresql" else None)

        # `alembic check` itself, through env.py building its own engine from the URL
        # (it raises AutogenerateDiffsDetected on drift).
        await asyncio.to_thread(command.check, migrate.alembic_config(empty_database_url))
    finally:
        await store.dispose()


@on_both_backends
async def test_check_current_requires_the_head_revision(empty_database_url: str) -> None:
    store = SqlStore(empty_database_url)
    try:
        with pytest.raises(SchemaOutOfDateError, match=r"run `wfe db upgrade`") as empty:
            await migrate.check_current(store.engine)
        assert f"code expects {HEAD}" in empty.value.message

        await store.upgrade(REVISION_1)
        with pytest.raises(
            SchemaOutOfDateError,
            match=rf"schema at revision {REVISION_1}, code expects {HEAD}: run `wfe db upgrade`",
        ):
            await migrate.check_current(store.engine)

        await store.upgrade()
        await migrate.check_current(store.engine)
        await store.ensure_current()

        async with store.engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
        with pytest.raises(SchemaOutOfDateError, match="newer engine"):
            await migrate.check_current(store.engine)
    finally:
        await store.dispose()


@on_both_backends
async def test_revision_6_adds_execution_columns_and_keeps_rows_both_ways(
    empty_database_url: str,
) -> None:
    """0006 (run control): columns added and dropped, the run rows kept either way."""
    store = SqlStore(empty_database_url)
    try:
        await store.upgrade(REVISION_5)
        await _insert_pre_08_rows(store)

        def columns(connection: Connection) -> set[str]:
            found = inspect(connection)
            return {c["name"] for c in found.get_columns("workflow_runs")} | {
                f"a.{c['name']}" for c in found.get_columns("workflow_annotations")
            }

        async def current_columns() -> set[str]:
            async with store.engine.connect() as connection:
                return await connection.run_sync(columns)

        added = {"execution_started_at", "execution_duration_ms", "a.stage_record_ref"}
        assert not added & await current_columns()
        await store.upgrade("0006")
        assert added <= await current_columns()
        assert await _count(store, "workflow_runs") == 1
        await store.downgrade(REVISION_5)
        assert not added & await current_columns()
        assert await _count(store, "workflow_runs") == 1
        await store.upgrade("0006")
        assert added <= await current_columns()
    finally:
        await store.dispose()


def _stage_columns(connection: Connection) -> set[str]:
    return {c["name"] for c in inspect(connection).get_columns("workflow_stages")}


@on_both_backends
async def test_revision_0007_adds_the_approval_and_fork_columns_and_drops_them(
    empty_database_url: str,
) -> None:
    store = SqlStore(empty_database_url)
    added = {"waiting_for", "waiting_since", "copied_from"}
    try:
        await store.upgrade(REVISION_1)
        await _insert_pre_08_rows(store)
        await store.upgrade(REVISION_9)
        await store.upgrade(HEAD)
        async with store.engine.connect() as connection:
            assert added <= await connection.run_sync(_stage_columns)
            row = (
                await connection.execute(
                    select(
                        WorkflowStage.stage_id,
                        WorkflowStage.waiting_for,
                        WorkflowStage.waiting_since,
                        WorkflowStage.copied_from,
                    )
                )
            ).one()
        assert tuple(row) == ("extract", None, None, None)
        assert await _diffs(store) == []

        await store.downgrade(REVISION_9)
        assert await migrate.current_revision(store.engine) == REVISION_9
        async with store.engine.connect() as connection:
            assert not added & await connection.run_sync(_stage_columns)
        for table in ("workflow_runs", "workflow_stages", "workflow_logs"):
            assert await _count(store, table) == 1, table
        await store.upgrade()
        assert await _diffs(store) == []
    finally:
        await store.dispose()


@on_both_backends
async def test_revision_11_chains_existing_runs_and_reverts(empty_database_url: str) -> None:
    store = SqlStore(empty_database_url)
    try:
        await store.upgrade(REVISION_1)
        await _insert_pre_08_rows(store)
        await store.upgrade(REVISION_7)
        async with store.engine.begin() as connection:  # annotations written before 0011
            for number, value in enumerate(['"ada"', "1.0"]):
                await connection.execute(
                    text(
                        "INSERT INTO workflow_annotations (id, created_at, workflow_run_id,"
                        " attempt, scope, key, value, value_number) VALUES (:id,"
                        " '2025-01-02 03:04:05', 'run-1', 0, 'run', :key, :value, 1.0)"
                    ),
                    {"id": f"a-{number}", "key": f"k.{number}", "value": value},
                )
        await store.upgrade(HEAD)
        found = await store.verify_chain("run-1")
        assert found.ok, found.first_bad
        kinds = [link["kind"] for link in found.links]
        assert kinds == ["run", "annotation", "annotation", "stage"]

        async with store.engine.begin() as connection:
            await connection.execute(text("DELETE FROM workflow_chain_links"))
            await connection.execute(text("UPDATE workflow_runs SET chain_length = 0"))
        assert not (await store.verify_chain("run-1")).ok

        await store.downgrade(REVISION_7)
        assert "workflow_chain_links" not in await _tables(store)
        assert await _count(store, "workflow_annotations") == 2
        await store.upgrade()
        assert (await store.verify_chain("run-1")).ok
        assert await _diffs(store) == []
    finally:
        await store.dispose()
