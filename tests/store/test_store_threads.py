"""Every read and write of the engine goes through the store's threads, and on SQLite a read
never waits for the write lock (WAL readers run beside the one writer).

Before, the outbox relay, plugin deliveries, blobs and the run listing read through async
sessions, which began ``IMMEDIATE`` on SQLite and so queued behind every writer (1.85 s
measured against 0.01 s for the store's own reads).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from engine.runtime.blobs import SqlBlobStore
from engine.runtime.outbox import OutboxRelay
from engine.runtime.storage import offload_output, resolve_outputs
from engine.store import SqlStore
from engine.store.run_queries import RunFilters, list_runs
from tests.store.test_one_statement import new_run


async def test_sqlite_reads_do_not_wait_for_a_writer(store: SqlStore) -> None:
    if not store.is_sqlite:
        pytest.skip("PostgreSQL readers never wait for writers (MVCC); the lock is SQLite's")
    run_id, _ = await store.create_run(new_run(), "wfe-run-{run_id}")
    blobs = SqlBlobStore(store)
    await blobs.put(run_id, "stage/a", {"x": 1})
    path = Path(str(store.sync_engine.url.database))
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        began = time.monotonic()
        await asyncio.wait_for(store.get_run(run_id), 5)
        await asyncio.wait_for(list_runs(store, RunFilters()), 5)
        assert await asyncio.wait_for(blobs.get(run_id, "stage/a"), 5) == {"x": 1}
        assert await asyncio.wait_for(store.delivered_plugins("no-event"), 5) == set()
        await asyncio.wait_for(store.list_outbox_events(run_id), 5)
        assert time.monotonic() - began < 2  # busy_timeout is 30 s: nothing waited for it
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert await OutboxRelay(store, None).flush() >= 1  # and the writes go on after it


async def test_a_large_output_is_write_once_per_outcome(store: SqlStore) -> None:
    run_id, _ = await store.create_run(new_run(), "wfe-run-{run_id}")
    blobs = SqlBlobStore(store)
    committed = await offload_output(blobs, run_id, "produce", {"data": "a" * 64}, threshold=16)
    # A losing duplicate delivery, or a leftover activity of an earlier attempt, offloads its
    # own outcome of the same stage afterwards: it must not touch the committed bytes.
    losing = await offload_output(blobs, run_id, "produce", {"data": "b" * 64}, threshold=16)

    assert committed != losing
    assert await resolve_outputs(blobs, run_id, committed) == {"data": "a" * 64}
    assert await resolve_outputs(blobs, run_id, losing) == {"data": "b" * 64}
