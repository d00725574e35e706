"""``kernel.annotations``: attach, list and query provenance annotations."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from engine.core.annotations import Actor, AnnotationLimits, build_drafts, check_text, text_problem
from engine.core.records import Annotation
from engine.errors import AnnotationError
from engine.store import SqlStore
from engine.store.annotation_rows import MAX_QUERY_LIMIT, decode_cursor, encode_cursor
from engine.store.contract import DEFAULT_LIST_LIMIT, AnnotationFilters, CrossRunFilters, RowContext

__all__ = ["AnnotationPage", "KernelAnnotations"]


@dataclass(frozen=True)
class AnnotationPage:
    """One page of annotations; pass ``next_cursor`` back for the next page."""

    items: list[Annotation]
    next_cursor: str | None


MAX_ATTEMPT = 2**31 - 1
"""Largest rerun generation a row can record (a 32-bit column)."""


def _check_filters(**filters: Any) -> None:
    """Refuse filter strings no backend can compare (NUL, lone surrogates).

    Raises:
        AnnotationError: a filter holds such a string (rather than a driver error later).
    """
    for name, value in filters.items():
        if isinstance(value, str) and (problem := text_problem(value)) is not None:
            raise AnnotationError(f"filter {name} {problem}")


class KernelAnnotations:
    """Annotation operations that need no Temporal workflow.

    They go to SQL directly, so they work on runs in any status, long after their Temporal
    workflow closed.
    """

    def __init__(self, store: SqlStore, limits: AnnotationLimits) -> None:
        self._store = store
        self._limits = limits

    async def attach(
        self,
        run_id: str,
        *,
        attributes: Mapping[str, Any],
        actor: Actor | None = None,
        scope: str = "run",
        scope_id: str | None = None,
        workflow_stage_record_id: str | None = None,
        attempt: int = 0,
        payload: Any = None,
        idempotency_key: str | None = None,
        emit_event: bool = False,
        on_behalf_of: Actor | None = None,
    ) -> list[Annotation]:
        """Attach annotations to a run in one transaction: all attributes or none.

        ``on_behalf_of`` records whom ``actor`` acted for (the HTTP API writes as the caller's
        token principal and keeps the actor the caller named here).

        Returns:
            The rows actually inserted; rows deduplicated by ``idempotency_key`` are left out
            and emit no ``annotation:created`` event.

        Raises:
            RunNotFoundError: no such run (nothing is written).
            AnnotationError: a bad key, value or payload (nothing is written).
        """
        check_text("scope", scope, 64)
        check_text("scope_id", scope_id, 255)
        check_text("workflow_stage_record_id", workflow_stage_record_id, 64)
        if not isinstance(attempt, int) or not 0 <= attempt <= MAX_ATTEMPT:
            raise AnnotationError(f"attempt must be between 0 and {MAX_ATTEMPT}, got {attempt!r}")
        drafts = build_drafts(
            attributes,
            actor=actor,
            payload=payload,
            idempotency_key=idempotency_key,
            emit_event=emit_event,
            limits=self._limits,
            on_behalf_of=on_behalf_of,
        )
        where = RowContext(
            run_id, scope, scope_id, stage_record_id=workflow_stage_record_id, attempt=attempt
        )
        return await self._store.attach_annotations(
            run_id, drafts, where, causation_id=idempotency_key or str(uuid.uuid4())
        )

    async def list(
        self,
        run_id: str,
        *,
        key: str | None = None,
        key_prefix: str | None = None,
        scope: str | None = None,
        scope_id: str | None = None,
        actor_id: str | None = None,
        actor_kind: str | None = None,
        attempt: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
    ) -> list[Annotation]:
        """A run's annotations, oldest first (then by id), every given filter combined (AND).

        ``key_prefix`` is a literal, case-sensitive prefix; a given ``key`` makes it ignored.
        Legacy ``metadata`` shows as ``legacy.metadata.*`` rows until migrated.

        Raises:
            RunNotFoundError: no such run.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        filters = _checked_filters(
            key, key_prefix, scope, scope_id, actor_id, actor_kind, attempt, since, until, limit
        )
        return await self._store.list_annotations(run_id, filters)

    async def page(
        self,
        run_id: str,
        *,
        key: str | None = None,
        key_prefix: str | None = None,
        scope: str | None = None,
        scope_id: str | None = None,
        actor_id: str | None = None,
        actor_kind: str | None = None,
        attempt: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> AnnotationPage:
        """Like :meth:`list`, one bounded page at a time (``limit`` 1 to 1000).

        Raises:
            RunNotFoundError: no such run.
            AnnotationError: a limit out of range or an invalid cursor.
        """
        if isinstance(limit, bool) or not 1 <= limit <= MAX_QUERY_LIMIT:
            raise AnnotationError(f"limit must be between 1 and {MAX_QUERY_LIMIT}, got {limit}")
        filters = replace(
            _checked_filters(
                key, key_prefix, scope, scope_id, actor_id, actor_kind, attempt, since, until,
                limit + 1,
            ),
            after=decode_cursor(cursor) if cursor is not None else None,
        )  # fmt: skip
        rows = await self._store.list_annotations(run_id, filters)
        if len(rows) <= limit:
            return AnnotationPage(items=rows, next_cursor=None)
        last = rows[limit - 1]
        return AnnotationPage(
            items=rows[:limit], next_cursor=encode_cursor(last.created_at, last.id)
        )

    async def query(
        self,
        *,
        key: str | None = None,
        value: Any = None,
        key_prefix: str | None = None,
        workflow_id: str | None = None,
        actor_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> AnnotationPage:
        """Annotations across runs, oldest first, by key (or prefix) and typed value.

        Values compare by type: a string matches strings, a number numbers, a boolean
        booleans, through indexed typed columns (strings up to 1024 characters).

        Raises:
            AnnotationError: a value that is not a string, number or boolean, a filter string
                holding NUL or a lone surrogate, a limit out of range, or an invalid cursor.
        """
        _check_filters(
            key=key, value=value, key_prefix=key_prefix, workflow_id=workflow_id, actor_id=actor_id
        )
        filters = CrossRunFilters(
            key=key,
            value=value,
            key_prefix=key_prefix,
            workflow_id=workflow_id,
            actor_id=actor_id,
            since=since,
            until=until,
        )
        items, next_cursor = await self._store.query_annotations(
            filters, limit=limit, cursor=cursor
        )
        return AnnotationPage(items=items, next_cursor=next_cursor)

    async def count_runs(
        self,
        key: str | None = None,
        value: Any = None,
        *,
        match: Mapping[str, Any] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        workflow_id: str | None = None,
    ) -> int:
        """How many runs carry ``key = value`` (and every pair of ``match``).

        E.g. ``count_runs(match={"decision.outcome": "low", "decision.used_fallback": True})``.
        """
        pairs = dict(match or {})
        if key is not None:
            pairs[key] = value
        for name, wanted in pairs.items():
            _check_filters(key=name, value=wanted)
        _check_filters(workflow_id=workflow_id)
        return await self._store.count_runs(
            pairs, since=since, until=until, workflow_id=workflow_id
        )

    async def migrate_legacy(self, batch_size: int = 500) -> int:
        """Store every run's deprecated ``metadata`` as ``legacy.metadata.*`` annotations.

        What ``wfe annotations migrate-legacy`` runs: complete per run (one transaction per
        run), idempotent (runs already migrated are skipped), ``batch_size`` runs read at a
        time. The run's ``metadata`` stays; listing then shows the stored rows instead of
        virtual ones.

        Returns:
            How many runs this call migrated (0 when run again).

        Raises:
            ValueError: ``batch_size`` is below 1.
        """
        return await self._store.migrate_legacy_metadata(batch_size)


def _checked_filters(
    key: str | None,
    key_prefix: str | None,
    scope: str | None,
    scope_id: str | None,
    actor_id: str | None,
    actor_kind: str | None,
    attempt: int | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> AnnotationFilters:
    """The filters of ``list`` and ``page``, each text filter checked first."""
    _check_filters(
        key=key,
        key_prefix=key_prefix,
        scope=scope,
        scope_id=scope_id,
        actor_id=actor_id,
        actor_kind=actor_kind,
    )
    return AnnotationFilters(
        key=key,
        key_prefix=key_prefix,
        scope=scope,
        scope_id=scope_id,
        actor_id=actor_id,
        actor_kind=actor_kind,
        attempt=attempt,
        since=since,
        until=until,
        limit=limit,
    )
