"""The ``BlobStore`` port (stage artifacts and large outputs) and its two adapters."""

from __future__ import annotations

import asyncio
import json
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import quote

from engine.errors import ArtifactNotFoundError
from engine.store import SqlStore
from engine.store.artifact_rows import MISSING

__all__ = ["BlobStore", "FileBlobStore", "SqlBlobStore"]


class BlobStore(ABC):
    """JSON blobs of a run, under keys that the engine scopes as ``<stage id>/<name>``."""

    @abstractmethod
    async def put(self, run_id: str, key: str, data: Any, *, kind: str = "ARTIFACT") -> None:
        """Store ``data`` under ``key``, replacing what was there."""

    @abstractmethod
    async def get(self, run_id: str, key: str) -> Any:
        """The data under ``key``; raises :class:`ArtifactNotFoundError` when missing."""

    @abstractmethod
    async def delete(self, run_id: str, key: str) -> None:
        """Remove ``key``; a missing key is fine."""

    @abstractmethod
    async def delete_prefix(self, run_id: str, prefix: str) -> None:
        """Remove every key of the run starting with ``prefix`` (rerun cleanup)."""

    async def exists(self, run_id: str, key: str) -> bool:
        """Whether ``key`` holds a blob."""
        try:
            await self.get(run_id, key)
        except ArtifactNotFoundError:
            return False
        return True


def _missing(run_id: str, key: str) -> ArtifactNotFoundError:
    return ArtifactNotFoundError(
        f"No artifact {key!r} in run {run_id}", workflow_run_id=run_id, key=key
    )


class SqlBlobStore(BlobStore):
    """Blobs in the side-store's ``workflow_artifacts`` table (the default).

    One backup, one place to query, and rows deleted with their run.
    """

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def put(self, run_id: str, key: str, data: Any, *, kind: str = "ARTIFACT") -> None:
        """Store ``data`` in ``key``'s row (its type is ``kind``), replacing what was there."""
        await self._store.put_artifact(run_id, key, data, kind)

    async def get(self, run_id: str, key: str) -> Any:
        """The data in ``key``'s row; a stored JSON ``null`` comes back as ``None``.

        Raises:
            ArtifactNotFoundError: the run has no row under ``key``.
        """
        data = await self._store.read_artifact(run_id, key)
        if data is MISSING:  # (a stored JSON null is a row holding None)
            raise _missing(run_id, key)
        return data

    async def delete(self, run_id: str, key: str) -> None:
        """Delete ``key``'s row; a missing row is fine."""
        await self._store.delete_artifacts(run_id, key=key)

    async def delete_prefix(self, run_id: str, prefix: str) -> None:
        """Delete every row of the run whose key starts with ``prefix``."""
        await self._store.delete_artifacts(run_id, prefix=prefix)


class FileBlobStore(BlobStore):
    """Blobs as JSON files under ``root/<run id>/<stage id>/<name>.json`` (e.g. a shared volume).

    Key parts are percent-encoded, so no key can climb out of its run's folder.
    """

    def __init__(self, root: str | Path) -> None:
        self._root = Path(root)

    def _path(self, run_id: str, key: str) -> Path:
        parts = [quote(part, safe="") for part in key.split("/")]
        if any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"invalid artifact key {key!r}")
        return self._root / quote(run_id, safe="") / Path(*parts[:-1]) / f"{parts[-1]}.json"

    async def put(self, run_id: str, key: str, data: Any, *, kind: str = "ARTIFACT") -> None:
        """Write ``data`` as JSON to ``key``'s file; ``kind`` is not kept.

        The JSON goes to a ``.tmp`` file renamed over the old one, so a reader never sees half a
        blob.
        """
        path = self._path(run_id, key)
        text = json.dumps(data)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)  # atomic: a reader never sees half a blob

        await asyncio.to_thread(write)

    async def get(self, run_id: str, key: str) -> Any:
        """The JSON in ``key``'s file.

        Raises:
            ArtifactNotFoundError: there is no such file.
        """
        path = self._path(run_id, key)
        try:
            text = await asyncio.to_thread(path.read_text)
        except FileNotFoundError:
            raise _missing(run_id, key) from None
        return json.loads(text)

    async def delete(self, run_id: str, key: str) -> None:
        """Remove ``key``'s file; a missing file is fine."""
        await asyncio.to_thread(self._path(run_id, key).unlink, missing_ok=True)

    async def delete_prefix(self, run_id: str, prefix: str) -> None:
        """Remove the folder of the stage that ``prefix`` (``<stage id>/``) names, and all in it."""
        stage = prefix.rstrip("/")
        folder = self._root / quote(run_id, safe="") / quote(stage, safe="")
        await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
