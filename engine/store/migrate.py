"""Alembic migrations of the side-store, run from code.

The Alembic configuration is built here rather than read from an ``alembic.ini``: the scripts
ship inside the package (``engine.store:migrations``), so upgrading works from an installed
wheel whatever the working directory. ``SqlStore.upgrade`` and ``wfe db upgrade`` call
:func:`upgrade`; the Alembic environment (``migrations/env.py``) runs on the connection passed in
``config.attributes["connection"]``.

On SQLite, migrations run with ``PRAGMA foreign_keys=OFF``: batch mode rebuilds a table by
copying it and dropping the original, and with foreign keys on, dropping a parent table deletes
(``ON DELETE CASCADE``) or rejects its children's rows. The keys are checked with
``PRAGMA foreign_key_check`` before the migration commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, String
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import TypeEngine

from engine.errors import SchemaOutOfDateError

__all__ = [
    "SCRIPT_LOCATION",
    "alembic_config",
    "check_current",
    "compare_type",
    "current_revision",
    "downgrade",
    "head_revision",
    "migration_transaction",
    "upgrade",
]

SCRIPT_LOCATION = "engine.store:migrations"
"""Where the migration scripts live, as a ``package:path`` resource (no cwd dependency)."""

# New revisions get date-prefixed file names: 2026_11_26_0003_some_change.py.
_FILE_TEMPLATE = "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s"

_Command = Callable[[Config, str], None]


def alembic_config(url: str | None = None) -> Config:
    """The Alembic configuration of the side-store's migrations.

    Args:
        url: database URL for commands run without a connection in
            ``config.attributes["connection"]`` (``command.check``, ``command.upgrade`` from a
            script). Without it, ``env.py`` falls back to ``WFE_DATABASE_URL`` (or the default).
    """
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", _FILE_TEMPLATE)
    if url is not None:
        # ConfigParser interpolation: a rendered URL may hold %-escapes (in the password).
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The revision the code expects (the single head of the migration scripts)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migration scripts found in {SCRIPT_LOCATION}")
    return head


def compare_type(
    context: MigrationContext,
    inspected_column: Column[Any],
    metadata_column: Column[Any],
    inspected_type: TypeEngine[Any],
    metadata_type: TypeEngine[Any],
) -> bool | None:
    """Autogenerate's type comparison (``env.py``): Alembic's, plus string collations.

    Alembic compares collations only when both sides have one, so a column that lost its
    ``COLLATE "C"`` would go unnoticed. Returns ``True`` when the types differ, ``None`` to defer
    to Alembic's comparison (which compares a ``TypeDecorator`` such as ``UTCDateTime`` by its
    implementation, ``DateTime(timezone=True)``).
    """
    expected = metadata_type.dialect_impl(context.dialect)
    if isinstance(inspected_type, String) and isinstance(expected, String):
        if (expected.collation or None) != (inspected_type.collation or None):
            return True
    return None


def _set_sqlite_foreign_keys(connection: Connection, enabled: bool) -> None:
    # Through the DBAPI connection: a SQLAlchemy execute would autobegin a transaction, and the
    # pragma is a no-op inside one.
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA foreign_keys={'ON' if enabled else 'OFF'}")
    finally:
        cursor.close()


@contextmanager
def migration_transaction(connection: Connection) -> Iterator[None]:
    """One transaction around a migration run on ``connection`` (not yet in a transaction).

    On SQLite, foreign keys are off during the run and checked before the commit.
    """
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _set_sqlite_foreign_keys(connection, False)
    try:
        with connection.begin():
            yield
            if sqlite:
                violations = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if violations:
                    raise RuntimeError(
                        f"migration left rows violating foreign keys: {violations[:10]!r}"
                    )
    finally:
        if sqlite:
            _set_sqlite_foreign_keys(connection, True)


def _run_command(connection: Connection, run: _Command, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    with migration_transaction(connection):
        run(config, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``, in one transaction."""
    async with engine.connect() as connection:
        await connection.run_sync(_run_command, command.upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Revert the migrations down to ``revision`` (``"base"`` drops every table)."""
    async with engine.connect() as connection:
        await connection.run_sync(_run_command, command.downgrade, revision)


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; ``None`` when it was never migrated."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current_revision)


async def check_current(engine: AsyncEngine) -> None:
    """Raise :class:`~engine.errors.SchemaOutOfDateError` unless the schema is at head."""
    current = await current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaOutOfDateError(
            f"side-store schema at revision <none> (empty database), code expects {head}: "
            "run `wfe db upgrade`"
        )
    script = ScriptDirectory.from_config(alembic_config())
    if current not in {s.revision for s in script.walk_revisions()}:
        raise SchemaOutOfDateError(
            f"side-store schema at revision {current}, which this code does not know "
            f"(it expects {head}): the database was migrated by a newer engine"
        )
    raise SchemaOutOfDateError(
        f"side-store schema at revision {current}, code expects {head}: run `wfe db upgrade`"
    )
