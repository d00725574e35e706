"""Async engine factory with the per-backend settings the side-store relies on."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from engine.settings import ensure_sqlite_parent

__all__ = ["create_engine_for_url", "is_sqlite"]


def is_sqlite(engine: AsyncEngine) -> bool:
    """Whether the engine talks to SQLite (which has no row locks: writers serialize instead)."""
    return engine.dialect.name == "sqlite"


def create_engine_for_url(url: str, **kwargs: Any) -> AsyncEngine:
    """Create the async engine for ``url``.

    On SQLite every transaction starts with ``BEGIN IMMEDIATE``: a deferred transaction that
    reads and then writes can fail with "database is locked" when another writer got there
    first, whereas an immediate one waits (``busy_timeout``) and then runs alone. WAL keeps
    readers off the writers' backs.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        ensure_sqlite_parent(url)
        engine = create_async_engine(url, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        @event.listens_for(engine.sync_engine, "invalidate")
        def _on_invalidate(dbapi_connection: Any, _record: Any, _error: Any) -> None:
            # A task cancelled mid-transaction (e.g. a local activity cancelled by Temporal or a
            # worker shutdown) gets its connection invalidated and closed. Closed while a cursor
            # of the cancelled task is still alive, sqlite3 keeps it as a "zombie" that holds
            # the write lock until garbage collection, and every other writer then fails with
            # "database is locked" after busy_timeout. Rolling back first releases the lock.
            try:
                dbapi_connection.rollback()
            except (Exception, asyncio.CancelledError):
                pass  # already closed, or cancelled again: the close still follows

        return engine
    if parsed.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        # No pre-ping: it costs a round trip per transaction, and a connection that died in
        # the pool fails its statement, is invalidated, and the caller's retry (an activity's,
        # or the in-activity commit's) gets a fresh one.
        kwargs.setdefault("pool_pre_ping", False)
        return create_async_engine(url, **kwargs)
    raise ValueError(
        f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}: "
        "use sqlite+aiosqlite:///path or postgresql+psycopg://user@host/db"
    )
