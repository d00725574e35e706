"""The side-store's database URLs: what it accepts, and the clear error for what it cannot use."""

from __future__ import annotations

from pathlib import Path

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
