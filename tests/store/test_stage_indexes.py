"""The stage commit finds its record without an index on ``status``, on a new database too.

An index leading with ``status`` let PostgreSQL, before its first ``ANALYZE`` of the table,
find the record a stage commit updates by reading every RUNNING stage of every run: a cost that
grew with the number of runs in flight (migration 0014 dropped those indexes). The plan is
checked before any statistics exist, with many RUNNING stages, on both backends.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, bindparam

from engine.store import SqlStore
from engine.store.models import STAGES
from engine.store.stage_rows import outcome_update
from tests.conftest import BACKENDS
from tests.store.test_one_statement import running_first_stage


def _indexes_read(connection: Connection, run_id: str, record_id: str) -> list[str]:
    """The ``workflow_stages`` indexes the stage commit's ``UPDATE`` reads, by the plan."""
    statement = outcome_update(("status",), suspended=False).where(
        STAGES.c.id == bindparam("w_record_id")
    )
    compiled = statement.compile(dialect=connection.dialect)
    values = compiled.construct_params(
        {
            "v_status": "completed",
            "w_run_id": run_id,
            "w_stage_id": "first",
            "w_attempt": 0,
            "w_record_id": record_id,
        }
    )
    if connection.dialect.name == "postgresql":
        (plan,) = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", values).one()
        return [name for name in _index_names(plan) if "workflow_stages" in name]
    # SQLite: "SEARCH workflow_stages USING INDEX <name> (<columns>)"
    ordered = tuple(values[name] for name in compiled.positiontup or ())
    details = [
        str(row[-1])
        for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", ordered)
    ]
    return [
        detail.split(" USING ", 1)[1]
        for detail in details
        if detail.startswith("SEARCH workflow_stages USING ")
    ]


def _index_names(node: object) -> list[str]:
    """Every ``Index Name`` in a PostgreSQL JSON plan."""
    if isinstance(node, dict):
        own = [node["Index Name"]] if "Index Name" in node else []
        return own + [name for value in node.values() for name in _index_names(value)]
    if isinstance(node, list):
        return [name for value in node for name in _index_names(value)]
    return []


@pytest.mark.parametrize("empty_database_url", BACKENDS, indirect=True)
async def test_the_stage_commit_finds_its_record_without_a_status_index(
    empty_database_url: str,
) -> None:
    store = SqlStore(empty_database_url)
    try:
        await store.upgrade()
        runs = [await running_first_stage(store) for _ in range(40)]  # 40 RUNNING stages
        run_id, record_id = runs[len(runs) // 2]

        with store.sync_engine.connect() as connection:
            read = _indexes_read(connection, run_id, record_id)

        assert read, "the UPDATE scans workflow_stages"
        assert not [index for index in read if "status" in index], read
    finally:
        await store.dispose()
