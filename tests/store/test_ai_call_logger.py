"""``SqlAICallLogger``: AI calls recorded outside a stage's commit, on both backends."""

from __future__ import annotations

from sqlalchemy import select

from engine.core.ai_calls import AICall
from engine.store import SqlAICallLogger, SqlStore
from engine.store.models import AICall as AICallRow


async def test_a_recorded_call_is_one_row_with_its_usage(store: SqlStore) -> None:
    logger = SqlAICallLogger(store)

    await logger.record(
        AICall(model="gpt-test", input_tokens=10, output_tokens=5, cost=0.25),
        workflow_run_id=None,
        stage_id="outside",
    )

    async with store.transaction() as session:
        rows = (await session.scalars(select(AICallRow))).all()
    assert [(r.model_id, r.stage_id, r.input_tokens, r.output_tokens, r.cost) for r in rows] == [
        ("gpt-test", "outside", 10, 5, 0.25)
    ]
