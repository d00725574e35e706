"""Rows of ``workflow_artifacts``: the SQL behind :class:`engine.runtime.blobs.SqlBlobStore`."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from engine.core.ids import new_id
from engine.store.models import WorkflowArtifact, utcnow
from engine.store.sql import insert_ignore

__all__ = ["MISSING", "delete_artifacts", "put_artifact", "read_artifact"]

MISSING = object()
"""What :func:`read_artifact` returns for a key with no row (a stored JSON null is ``None``)."""


def put_artifact(session: Session, run_id: str, key: str, data: Any, kind: str) -> None:
    """Store ``data`` under ``key``, replacing what was there."""
    size = len(json.dumps(data).encode())
    _delete(session, run_id, [key])
    session.execute(
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


def read_artifact(session: Session, run_id: str, key: str) -> Any:
    """The data under ``key``, or :data:`MISSING`."""
    row = session.execute(
        select(WorkflowArtifact.data).where(
            WorkflowArtifact.workflow_run_id == run_id, WorkflowArtifact.key == key
        )
    ).first()
    return MISSING if row is None else row[0]


def delete_artifacts(
    session: Session, run_id: str, *, key: str | None = None, prefix: str | None = None
) -> None:
    """Remove ``key``, or every key of the run starting with ``prefix``; missing ones are fine."""
    if key is not None:
        _delete(session, run_id, [key])
        return
    assert prefix is not None
    keys = session.scalars(
        select(WorkflowArtifact.key).where(WorkflowArtifact.workflow_run_id == run_id)
    ).all()
    _delete(session, run_id, [k for k in keys if k.startswith(prefix)])


def _delete(session: Session, run_id: str, keys: list[str]) -> None:
    if keys:
        session.execute(
            delete(WorkflowArtifact).where(
                WorkflowArtifact.workflow_run_id == run_id, WorkflowArtifact.key.in_(keys)
            )
        )
