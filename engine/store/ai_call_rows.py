"""The SQL ``ai_calls`` table behind the ``AICallLogger`` port."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, insert

from engine.ai_calls import AICall, AICallLogger
from engine.ids import new_id
from engine.store.models import AICall as AICallRow
from engine.store.models import utcnow

if TYPE_CHECKING:
    from engine.store.sql_store import SqlStore

__all__ = ["SqlAICallLogger", "ai_call_rows"]

AI_CALLS: Table = AICallRow.__table__  # type: ignore[assignment]


def ai_call_rows(
    calls: Sequence[AICall],
    *,
    workflow_run_id: str | None,
    stage_id: str | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """One ``ai_calls`` row per call, for a batched insert."""
    return [
        {
            "id": new_id(),
            "created_at": now,
            "workflow_run_id": workflow_run_id,
            "stage_id": stage_id,
            "topic": call.topic,
            "call_type": call.call_type,
            "model_key": call.model_key or call.model,
            "model_id": call.model,
            "prompt": call.prompt,
            "response": call.response,
            "input_tokens": call.input_tokens,
            "output_tokens": call.output_tokens,
            "cost": call.cost,
            "metadata": call.row_metadata(),
        }
        for call in calls
    ]


class SqlAICallLogger(AICallLogger):
    """Writes AI calls to the side-store, one transaction per call."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def record(
        self, call: AICall, *, workflow_run_id: str | None = None, stage_id: str | None = None
    ) -> None:
        """Store one call."""
        rows = ai_call_rows(
            [call], workflow_run_id=workflow_run_id, stage_id=stage_id, now=utcnow()
        )
        async with self._store.transaction() as session:
            await session.execute(insert(AI_CALLS), rows)
