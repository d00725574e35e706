"""Stage artifact storage (``ctx.storage``), with keys scoped to the run and the stage."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, select

from engine.errors import ArtifactNotFoundError
from engine.ids import new_id
from engine.store import SqlStore
from engine.store.models import WorkflowArtifact, utcnow
from engine.store.sql import insert_ignore

__all__ = ["StageStorage"]


class StageStorage:
    """JSON artifacts of one stage of one run, in the side-store's artifacts table.

    Keys live under ``<stage id>/`` within the run (the original's keys were global, so runs
    collided); ``RunRerunFrom`` deletes the prefixes of the stages it removes.
    """

    def __init__(self, store: SqlStore, run_id: str, stage_id: str) -> None:
        self._store = store
        self._run_id = run_id
        self._prefix = f"{stage_id}/"

    def _key(self, key: str) -> str:
        if not key:
            raise ValueError("artifact key must not be empty")
        return self._prefix + key

    async def save(self, key: str, data: Any) -> None:
        """Store ``data`` (JSON-able) under ``key``, replacing what was there."""
        size = len(json.dumps(data).encode())
        full = self._key(key)
        async with self._store.transaction() as session:
            await session.execute(
                delete(WorkflowArtifact).where(
                    WorkflowArtifact.workflow_run_id == self._run_id, WorkflowArtifact.key == full
                )
            )
            await session.execute(
                insert_ignore(session, WorkflowArtifact.__table__).values(
                    id=new_id(),
                    created_at=utcnow(),
                    workflow_run_id=self._run_id,
                    key=full,
                    type="ARTIFACT",
                    data=data,
                    size=size,
                )
            )

    async def load(self, key: str) -> Any:
        """The data under ``key``; raises :class:`ArtifactNotFoundError` when missing."""
        full = self._key(key)
        async with self._store.sessions() as session:
            row = await session.scalar(
                select(WorkflowArtifact).where(
                    WorkflowArtifact.workflow_run_id == self._run_id, WorkflowArtifact.key == full
                )
            )
        if row is None:
            raise ArtifactNotFoundError(
                f"No artifact {key!r} for this stage", workflow_run_id=self._run_id, key=key
            )
        return row.data

    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds an artifact."""
        try:
            await self.load(key)
        except ArtifactNotFoundError:
            return False
        return True

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is fine."""
        full = self._key(key)
        async with self._store.transaction() as session:
            await session.execute(
                delete(WorkflowArtifact).where(
                    WorkflowArtifact.workflow_run_id == self._run_id, WorkflowArtifact.key == full
                )
            )
