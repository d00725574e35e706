"""The side-store's database URLs: what it accepts, and the clear error for what it cannot use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.store import SqlStore


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite://",
        "sqlite+aiosqlite:///:memory:",
        "sqlite+aiosqlite:///file:wfe?mode=memory&uri=true",
    ],
)
def test_in_memory_sqlite_is_refused_by_name(url: str) -> None:
    with pytest.raises(ValueError, match="needs a SQLite file"):
        SqlStore(url)


def test_unsupported_backend_names_the_url() -> None:
    with pytest.raises(ValueError, match="unsupported database URL 'mysql://"):
        SqlStore("mysql://root@localhost/test")


async def test_a_sqlite_file_gets_an_async_and_a_sync_engine(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}")
    try:
        assert store.engine.url.drivername == "sqlite+aiosqlite"
        assert store.sync_engine.url.drivername == "sqlite+pysqlite"
        await store.upgrade()
        assert await store.pending_runs(10) == []
    finally:
        await store.dispose()


async def test_postgresql_connections_pin_read_committed(store: SqlStore) -> None:
    """The commit's run-status guard re-reads the run row after waiting for its lock, which
    only READ COMMITTED does; a server whose default is another level must not change that."""
    if store.is_sqlite:
        pytest.skip("SQLite has one isolation behaviour (serialized writers)")
    from sqlalchemy import text

    def levels(session: Any) -> list[str]:
        session.execute(
            text("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        )
        return [session.execute(text("SHOW transaction_isolation")).scalar_one()]

    # A fresh connection, then one handed back to the pool after changing its session default.
    first = await store._write(levels)
    again = await store._read(lambda s: s.execute(text("SHOW transaction_isolation")).scalar_one())
    assert first == ["read committed"] and again == "read committed"


async def test_statement_errors_do_not_show_their_parameters(store: SqlStore) -> None:
    """A failed statement's parameters are stage outputs, annotations, inputs: they must not
    end up in a worker's logs through the exception's text."""
    from sqlalchemy import text

    secret = "s3cret-output-value"
    with pytest.raises(Exception) as raised:
        await store._write(
            lambda session: session.execute(
                text("INSERT INTO no_such_table (x) VALUES (:x)"), {"x": secret}
            )
        )
    assert secret not in str(raised.value)
    assert "hidden due to hide_parameters" in str(raised.value)
