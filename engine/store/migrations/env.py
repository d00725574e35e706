"""Alembic environment of the side-store.

``engine.store.migrate`` runs the commands on a live connection, passed in
``config.attributes["connection"]`` and already inside the migration's transaction. Without
one (``alembic check`` from a script, see ``migrate.alembic_config``), an engine is built from
the config's ``sqlalchemy.url``, else from ``WFE_DATABASE_URL`` (or the default SQLite file).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from alembic import context
from sqlalchemy import Connection

from engine.core.settings import Settings
from engine.store.database import create_engine_for_url
from engine.store.migrate import compare_type, migration_transaction
from engine.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite alters tables by copying them ("move and copy"); elsewhere batch mode is a
        # plain ALTER TABLE.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=compare_type,
        # The models use Python-side defaults; the migrations' server defaults only fill the
        # rows that exist when a NOT NULL column is added.
        compare_server_default=False,
    )


def _run_on(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


def _run_standalone(connection: Connection) -> None:
    with migration_transaction(connection):
        _run_on(connection)


async def _run_with_url(url: str) -> None:
    engine = create_engine_for_url(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_standalone)
    finally:
        await engine.dispose()


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings().database_url


def run_migrations_offline() -> None:
    """Emit the SQL instead of running it (``alembic upgrade --sql``)."""
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run on the given connection, else on a connection of an engine made for the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    url = _url()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_run_with_url(url))
        return
    # Called from async code: the engine gets an event loop of its own, on a worker thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _run_with_url(url)).result()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
