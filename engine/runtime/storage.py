"""Stage artifact storage (``ctx.storage``) and large outputs by reference, on a BlobStore."""

from __future__ import annotations

import json
from typing import Any

from engine.core.ids import new_id
from engine.errors import ArtifactNotFoundError
from engine.runtime.blobs import BlobStore

__all__ = ["OUTPUT_REF_KEY", "StageStorage", "offload_output", "resolve_outputs"]

OUTPUT_REF_KEY = "_artifact_key"
"""A stage output stored by reference is ``{"_artifact_key": "<stage id>/__output__/<id>"}``."""


async def offload_output(
    blobs: BlobStore, run_id: str, stage_id: str, output: Any, threshold: int
) -> Any:
    """The output itself, or a reference to it stored as a blob when it is large.

    Temporal payloads have size limits (2 MB by default, less in practice for histories);
    outputs over ``threshold`` bytes of JSON travel by reference instead.
    """
    if len(json.dumps(output).encode()) <= threshold:
        return output
    # A key of its own per outcome, never overwritten: a losing duplicate delivery, or a
    # leftover activity of an earlier attempt, writes bytes that no committed row points at,
    # instead of replacing the bytes that the committed row does point at. (Orphans go with
    # the stage's prefix on rerun, or with the run.)
    key = f"{stage_id}/__output__/{new_id()}"
    await blobs.put(run_id, key, output, kind="STAGE_OUTPUT")
    return {OUTPUT_REF_KEY: key}


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {OUTPUT_REF_KEY}


async def resolve_outputs(blobs: BlobStore, run_id: str, value: Any) -> Any:
    """Replace output references (at the top level or as values of a parallel group's map)."""
    if _is_ref(value):
        try:
            return await blobs.get(run_id, value[OUTPUT_REF_KEY])
        except ArtifactNotFoundError:
            raise ArtifactNotFoundError(
                f"Stored output {value[OUTPUT_REF_KEY]!r} is missing", workflow_run_id=run_id
            ) from None
    if isinstance(value, dict) and any(_is_ref(v) for v in value.values()):
        return {k: await resolve_outputs(blobs, run_id, v) for k, v in value.items()}
    return value


class StageStorage:
    """JSON artifacts of one stage of one run (``ctx.storage``).

    Keys live under ``<stage id>/`` within the run (the original's keys were global, so runs
    collided); ``RunRerunFrom`` deletes the prefixes of the stages it removes.
    """

    def __init__(self, blobs: BlobStore, run_id: str, stage_id: str) -> None:
        self._blobs = blobs
        self._run_id = run_id
        self._prefix = f"{stage_id}/"

    def _key(self, key: str) -> str:
        if not key:
            raise ValueError("artifact key must not be empty")
        return self._prefix + key

    async def save(self, key: str, data: Any) -> None:
        """Store ``data`` (JSON-able) under ``key``, replacing what was there."""
        await self._blobs.put(self._run_id, self._key(key), data)

    async def load(self, key: str) -> Any:
        """The data under ``key``; raises :class:`ArtifactNotFoundError` when missing."""
        try:
            return await self._blobs.get(self._run_id, self._key(key))
        except ArtifactNotFoundError:
            raise ArtifactNotFoundError(
                f"No artifact {key!r} for this stage", workflow_run_id=self._run_id, key=key
            ) from None

    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds an artifact."""
        return await self._blobs.exists(self._run_id, self._key(key))

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is fine."""
        await self._blobs.delete(self._run_id, self._key(key))
