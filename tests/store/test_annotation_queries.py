"""Query plans of the annotation reads on PostgreSQL: they are index range scans.

The statements are built the way the store builds them (``engine.store.annotation_rows``)
and EXPLAINed against a few thousand rows spread over many runs. ``enable_seqscan`` is off so
the planner picks deterministically between indexes on a table this small.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Select, insert, select, text
from sqlalchemy.dialects import postgresql

from engine.store.annotation_rows import _cross_run_conditions, _stored_query, count_runs_query
from engine.store.contract import AnnotationFilters, CrossRunFilters
from engine.store.models import WorkflowAnnotation, WorkflowRun

RUNS = 40
ROWS_PER_RUN = 100
SEPARATORS = "%_\\"
RUN_KEY_INDEX = "ix_workflow_annotations_workflow_run_id_key"


def _postgres_only(store: Any) -> None:
    if store.is_sqlite:
        pytest.skip("EXPLAIN plans and index names are PostgreSQL's; SQLite has its own planner")


async def _seed(store: Any) -> tuple[list[str], datetime]:
    """RUNS runs with ROWS_PER_RUN annotations each: 5 ``decision.*`` keys, the rest other."""
    base = datetime.now(UTC) - timedelta(days=3)
    run_ids = [f"run-{n:03d}-{uuid.uuid4().hex[:8]}" for n in range(RUNS)]
    runs = [
        {
            "id": run_id,
            "created_at": base,
            "updated_at": base,
            "workflow_id": "wf",
            "workflow_name": "wf",
            "workflow_type": "wf",
            "status": "COMPLETED",
            "input": {},
            "config": {},
        }
        for run_id in run_ids
    ]
    rows = []
    outcomes = ["low", "high", "medium", "1"]
    for r, run_id in enumerate(run_ids):
        for n in range(ROWS_PER_RUN):
            if n < 5:
                key = ["decision.outcome", "decision.confidence", "decision.used_fallback"][n % 3]
            else:
                # Prefixes a%, b_ and c\ each exist in every run.
                key = f"{'abcdefghij'[n % 10]}{SEPARATORS[n % 3]}metric.{n:03d}"
            value: Any = {
                "decision.outcome": outcomes[(r + n) % 4],
                "decision.confidence": (r % 10) / 10,
                "decision.used_fallback": r % 2 == 0,
            }.get(key, n)
            rows.append(
                {
                    "id": f"{r:03d}{n:04d}{uuid.uuid4().hex[:8]}",
                    "created_at": base + timedelta(minutes=r, seconds=n),
                    "workflow_run_id": run_id,
                    "attempt": 0,
                    "scope": "stage",
                    "scope_id": "s",
                    "key": key,
                    "value": value,
                    "value_text": value if isinstance(value, str) else None,
                    "value_number": (
                        float(value)
                        if isinstance(value, int | float) and not isinstance(value, bool)
                        else None
                    ),
                    "value_bool": value if isinstance(value, bool) else None,
                }
            )
    async with store.transaction() as session:
        await session.execute(insert(WorkflowRun), runs)
        await session.execute(insert(WorkflowAnnotation), rows)
    async with store.engine.connect() as conn:
        await conn.execute(text("ANALYZE workflow_annotations"))
        await conn.commit()
    return run_ids, base


async def _explain(store: Any, statement: Select[Any]) -> str:
    sql = statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    async with store.engine.connect() as conn:
        await conn.execute(text("SET enable_seqscan = off"))
        plan = (await conn.execute(text(f"EXPLAIN {sql}"))).scalars().all()
        await conn.rollback()
    return "\n".join(plan)


def _uses_index(plan: str, index: str) -> bool:
    return f"Index Scan using {index}" in plan or f"Bitmap Index Scan on {index}" in plan


async def test_list_by_key_prefix_is_a_range_scan_on_the_run_key_index(store):
    _postgres_only(store)
    run_ids, _ = await _seed(store)
    run_id = run_ids[RUNS // 2]
    for prefix in ("decision.", "a%", "b_", "c\\"):
        plan = await _explain(store, _stored_query(run_id, AnnotationFilters(key_prefix=prefix)))
        assert _uses_index(plan, RUN_KEY_INDEX), plan
        # A range on the key inside the index: no LIKE, no filter over the run's rows.
        condition = next(line for line in plan.splitlines() if "Index Cond" in line)
        assert "(key)::text >= " in condition and "(key)::text < " in condition, plan
        assert "workflow_run_id" in condition, plan
        assert "LIKE" not in plan.upper() and "Filter" not in plan and "Seq Scan" not in plan
    # The list's other shape (a given key) uses the same index with an equality.
    plan = await _explain(store, _stored_query(run_id, AnnotationFilters(key="decision.outcome")))
    assert _uses_index(plan, RUN_KEY_INDEX), plan


CROSS_RUN_CASES = [
    ("decision.outcome", "low", "ix_workflow_annotations_key_value_text_created_at"),
    ("decision.confidence", 0.5, "ix_workflow_annotations_key_value_number_created_at"),
    ("decision.used_fallback", True, "ix_workflow_annotations_key_value_bool_created_at"),
]


async def test_cross_run_query_by_value_uses_the_typed_value_index(store):
    _postgres_only(store)
    _, base = await _seed(store)
    col = WorkflowAnnotation
    for key, value, index in CROSS_RUN_CASES:
        filters = CrossRunFilters(key=key, value=value, since=base + timedelta(minutes=10))
        # The statement of annotation_rows.query_annotations, first page.
        statement = (
            select(col)
            .where(*_cross_run_conditions(filters))
            .order_by(col.created_at, col.id)
            .limit(100)
        )
        plan = await _explain(store, statement)
        assert _uses_index(plan, index), plan
        condition = next(line for line in plan.splitlines() if "Index Cond" in line)
        assert "created_at" in condition, plan
        assert "Seq Scan" not in plan, plan


async def test_count_runs_reads_only_the_typed_value_index(store):
    """The value indexes carry the run id (revision 0013): counting runs never visits the
    table once it is vacuumed (autovacuum's work in production)."""
    _postgres_only(store)
    _, base = await _seed(store)
    async with store.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM workflow_annotations"))
    for key, value, index in CROSS_RUN_CASES:
        statement = count_runs_query(
            {key: value}, since=base + timedelta(minutes=10), until=None, workflow_id=None
        )
        plan = await _explain(store, statement)
        assert f"Index Only Scan using {index}" in plan, plan
