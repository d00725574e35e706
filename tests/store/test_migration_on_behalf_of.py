"""Revision 0009 (annotation ``on_behalf_of_*`` columns) up and down, rows kept, both backends."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, inspect, text

from engine.store import SqlStore, migrate

BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql")]
COLUMNS = {"on_behalf_of_kind", "on_behalf_of_id", "on_behalf_of_version"}


def _columns(connection: Connection) -> set[str]:
    return {c["name"] for c in inspect(connection).get_columns("workflow_annotations")}


async def _annotation_columns(store: SqlStore) -> set[str]:
    async with store.engine.connect() as connection:
        return await connection.run_sync(_columns)


@pytest.mark.parametrize("empty_database_url", BACKENDS, indirect=True)
async def test_0009_adds_and_drops_the_columns_keeping_rows(empty_database_url: str) -> None:
    store = SqlStore(empty_database_url)
    try:
        await store.upgrade("0006")
        assert not COLUMNS & await _annotation_columns(store)
        async with store.engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO workflow_runs (id, created_at, updated_at, version, workflow_id,"
                    " workflow_name, workflow_type, status, input, config, total_cost,"
                    " total_tokens, priority) VALUES ('run-1', :ts, :ts, 1, 'wf', 'Wf', 'batch',"
                    " 'COMPLETED', '{}', '{}', 0, 0, 5)"
                ),
                {"ts": "2026-01-02 03:04:05"},
            )
            await connection.execute(
                text(
                    "INSERT INTO workflow_annotations (id, created_at, workflow_run_id, attempt,"
                    " scope, actor_kind, actor_id, key, value, value_text) VALUES ('a-1', :ts,"
                    " 'run-1', 0, 'run', 'user', 'bob', 'review.ok', '\"yes\"', 'yes')"
                ),
                {"ts": "2026-01-02 03:04:05"},
            )

        await store.upgrade("0009")
        assert COLUMNS <= await _annotation_columns(store)
        async with store.engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT actor_id, on_behalf_of_kind, on_behalf_of_id, "
                        "on_behalf_of_version FROM workflow_annotations"
                    )
                )
            ).one()
        assert tuple(row) == ("bob", None, None, None)

        await store.downgrade("0006")
        assert await migrate.current_revision(store.engine) == "0006"
        assert not COLUMNS & await _annotation_columns(store)
        async with store.engine.connect() as connection:
            count = (
                await connection.execute(text("SELECT count(*) FROM workflow_annotations"))
            ).scalar_one()
        assert count == 1
    finally:
        await store.dispose()
