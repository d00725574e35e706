"""The SQL adapter of the ``AICallLogger`` port: AI calls made outside a stage's commit."""

from __future__ import annotations

from engine.core.ai_calls import AICall, AICallLogger
from engine.store.sql_store import SqlStore

__all__ = ["SqlAICallLogger"]


class SqlAICallLogger(AICallLogger):
    """Writes AI calls to the side-store, one transaction per call."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def record(
        self, call: AICall, *, workflow_run_id: str | None = None, stage_id: str | None = None
    ) -> None:
        """Store one call."""
        await self._store.record_ai_calls(
            [call], workflow_run_id=workflow_run_id, stage_id=stage_id
        )
