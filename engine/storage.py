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

__all__ = ["OUTPUT_REF_KEY", "StageStorage", "offload_output", "resolve_outputs"]

OUTPUT_REF_KEY = "_artifact_key"
"""A stage output stored by reference is ``{"_artifact_key": "<stage id>/__output__.json"}``."""


async def _put(store: SqlStore, run_id: str, key: str, data: Any, kind: str) -> None:
    size = len(json.dumps(data).encode())
    async with store.transaction() as session:
        await session.execute(
            delete(WorkflowArtifact).where(
                WorkflowArtifact.workflow_run_id == run_id, WorkflowArtifact.key == key
            )
        )
        await session.execute(
            insert_ignore(session, WorkflowArtifact.__table__).values(
                id=new_id(),
                created_at=utcnow(),
                workflow_run_id=run_id,
                key=key,
                type=kind,
                data=data,
                size=size,
            )
        )


async def _get(store: SqlStore, run_id: str, key: str) -> WorkflowArtifact | None:
    async with store.sessions() as session:
        return await session.scalar(
            select(WorkflowArtifact).where(
                WorkflowArtifact.workflow_run_id == run_id, WorkflowArtifact.key == key
            )
        )


async def offload_output(
    store: SqlStore, run_id: str, stage_id: str, output: Any, threshold: int
) -> Any:
    """The output itself, or a reference to it stored as an artifact when it is large.

    Temporal payloads have size limits (2 MB by default, less in practice for histories);
    outputs over ``threshold`` bytes of JSON travel by reference instead.
    """
    if len(json.dumps(output).encode()) <= threshold:
        return output
    key = f"{stage_id}/__output__.json"
    await _put(store, run_id, key, output, "STAGE_OUTPUT")
    return {OUTPUT_REF_KEY: key}


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {OUTPUT_REF_KEY}


async def resolve_outputs(store: SqlStore, run_id: str, value: Any) -> Any:
    """Replace output references (at the top level or as values of a parallel group's map)."""
    if _is_ref(value):
        row = await _get(store, run_id, value[OUTPUT_REF_KEY])
        if row is None:
            raise ArtifactNotFoundError(
                f"Stored output {value[OUTPUT_REF_KEY]!r} is missing", workflow_run_id=run_id
            )
        return row.data
    if isinstance(value, dict) and any(_is_ref(v) for v in value.values()):
        return {k: await resolve_outputs(store, run_id, v) for k, v in value.items()}
    return value


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
        await _put(self._store, self._run_id, self._key(key), data, "ARTIFACT")

    async def load(self, key: str) -> Any:
        """The data under ``key``; raises :class:`ArtifactNotFoundError` when missing."""
        row = await _get(self._store, self._run_id, self._key(key))
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
