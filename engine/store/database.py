"""Engine factories with the per-backend settings the side-store relies on.

Both engines hide bound parameters from their error messages and logs (``hide_parameters``):
a failed statement's parameters are stage outputs, annotations and inputs, which must not end
up in worker logs.
"""

from __future__ import annotations

import asyncio
import select
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["READ_ONLY", "create_engine_for_url", "create_sync_engine_for_url", "is_sqlite"]

READ_ONLY = "wfe_read_only"
"""Execution option of a connection that only reads: SQLite begins its transaction DEFERRED
(no write lock) instead of IMMEDIATE."""

POSTGRES_POOL = {"pool_size": 10, "max_overflow": 20}
"""Connections per engine on PostgreSQL (the store's thread pool matches ``pool_size``)."""


def is_sqlite(engine: AsyncEngine | Engine) -> bool:
    """Whether the engine talks to SQLite (which has no row locks: writers serialize instead)."""
    return engine.dialect.name == "sqlite"


def ensure_sqlite_parent(url: str) -> None:
    """Create the folder of a file-backed SQLite URL, so the default works on a fresh checkout."""
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and not url.endswith(":memory:"):
        Path(url[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


def _parse(url: str) -> URL:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(
            f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}: "
            "use sqlite+aiosqlite:///path or postgresql+psycopg://user@host/db"
        )
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or "mode=memory" in url:
            # The store keeps two engines (and pools): each would see its own empty database.
            raise ValueError(
                f"the side-store needs a SQLite file, not an in-memory database: {url!r}"
            )
        ensure_sqlite_parent(url)
    return parsed


def create_engine_for_url(url: str, **kwargs: Any) -> AsyncEngine:
    """Create the async engine for ``url`` (the kernel's reads, the outbox, plugins, blobs)."""
    parsed = _parse(url)
    kwargs.setdefault("hide_parameters", True)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(url, **kwargs)
        _configure_sqlite(engine.sync_engine)
        return engine
    engine = create_async_engine(url, **_postgres_options(kwargs))
    _drop_dead_connections(engine.sync_engine)
    return engine


def create_sync_engine_for_url(url: str, **kwargs: Any) -> Engine:
    """Create the synchronous engine for ``url``.

    The store runs each transaction on it in a worker thread (see :class:`engine.store.SqlStore`).
    An async URL is mapped to its synchronous driver (``sqlite+aiosqlite`` → ``sqlite+pysqlite``;
    psycopg is both).
    """
    parsed = _parse(url)
    kwargs.setdefault("hide_parameters", True)
    if parsed.get_backend_name() == "sqlite":
        # Connections move between the store's threads (one at a time, through the pool).
        connect_args = {"check_same_thread": False, **kwargs.pop("connect_args", {})}
        engine = create_engine(
            parsed.set(drivername="sqlite+pysqlite"), connect_args=connect_args, **kwargs
        )
        _configure_sqlite(engine)
        return engine
    engine = create_engine(parsed, **_postgres_options(kwargs))
    _drop_dead_connections(engine)
    return engine


def _cache_long_statements() -> None:
    """Let psycopg keep its conversion of the store's long statements.

    psycopg turns a query's ``%(name)s`` placeholders into ``$n`` with a pass of Python over
    the query's text, and keeps the result per text only for queries of at most 4,096 bytes
    and 50 parameters. The one-statement writes (:mod:`engine.store.one_statement`) are larger
    (a stage commit with ten annotations: 18.8 KB and 260 parameters), so each paid the pass
    again: 0.82 ms of the worker's CPU per stage commit, a third of it (2.23 against 1.41 ms,
    interleaved rounds on PostgreSQL). Their shapes are few (built once each, from a cache of
    their own), and psycopg's cache holds 128 conversions, a few MB at most for these.
    The limits are module attributes of psycopg's: if a release renames them, the store
    still works, without the cache.
    """
    try:
        from psycopg import _queries as queries
    except ImportError:  # pragma: no cover - a psycopg without the module
        return
    if hasattr(queries, "MAX_CACHED_STATEMENT_LENGTH"):
        queries.MAX_CACHED_STATEMENT_LENGTH = max(queries.MAX_CACHED_STATEMENT_LENGTH, 1 << 17)
    if hasattr(queries, "MAX_CACHED_STATEMENT_PARAMS"):
        queries.MAX_CACHED_STATEMENT_PARAMS = max(queries.MAX_CACHED_STATEMENT_PARAMS, 4096)


def _postgres_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    _cache_long_statements()
    # No pre-ping: it costs a round trip per transaction (a `SELECT 1` on the loopback server
    # of this machine: 134 µs, more over a network); _drop_dead_connections catches the
    # connections a server restart or kill left behind for 4 µs a checkout.
    #
    # READ COMMITTED pinned, whatever the server's default_transaction_isolation says: the
    # stage commit's guard re-reads the run row after waiting for its lock and must see the
    # committed cancel (under REPEATABLE READ it would fail with a serialization error).
    return {
        **POSTGRES_POOL,
        "pool_pre_ping": False,
        "isolation_level": "READ COMMITTED",
        **kwargs,
    }


def _drop_dead_connections(engine: Engine) -> None:
    """Discard, at checkout, a pooled PostgreSQL connection that the server has closed.

    A restarted (or terminating) server sends each client a FATAL message and closes the
    socket; the connection sits idle in the pool until its next statement fails with
    ``AdminShutdown`` in front of a caller, once per pooled connection. An idle connection
    has nothing to read (the engine never LISTENs), so a readable socket means the server
    spoke or hung up: the check is one non-blocking ``select`` (4 µs a checkout, timed over
    200,000 on this machine, against 134 µs for a pre-ping's round trip on loopback), and a
    false alarm only costs a reconnect. SQLAlchemy replaces a connection that fails its
    checkout with :class:`DisconnectionError`.
    """

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        connection = getattr(dbapi_connection, "driver_connection", dbapi_connection)
        pgconn = getattr(connection, "pgconn", None)
        if pgconn is None:
            return
        try:
            socket = -1 if connection.closed else pgconn.socket
        except Exception:  # psycopg.OperationalError: the connection is already bad
            socket = -1
        if socket < 0:
            raise DisconnectionError("pooled connection already closed")
        readable, _, _ = select.select([socket], [], [], 0)
        if readable:
            raise DisconnectionError("the server closed this pooled connection (restart?)")


def _configure_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` for transactions that may write.

    :data:`READ_ONLY` connections begin deferred.

    A deferred transaction that reads and then writes can fail with "database is locked" when
    another writer got there first, whereas an immediate one waits (``busy_timeout``) and then
    runs alone. WAL keeps readers off the writers' backs.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    @event.listens_for(engine, "invalidate")
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
