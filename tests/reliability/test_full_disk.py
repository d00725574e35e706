"""A side-store that cannot grow: its writes fail, the runs wait, and finish once space returns.

- SQLite: the worker process gets a file-size limit (``RLIMIT_FSIZE``, set and lifted from
  outside with ``prlimit``) at the current size of the database's write-ahead log, while its
  runs are held inside their ``work`` stage; its next commits cannot append to the log and fail
  (SQLite says "disk I/O error" for the refused write).
- PostgreSQL: the tables live in a tablespace on a small ``tmpfs`` of their own (on a private
  cluster, as ``test_database_restart.py``), which the test fills with a file while the runs
  are held; the ``work`` commits, whose output needs new pages, fail with "could not extend
  file … No space left on device". Skipped, with mount's own words, where the test may not
  mount a filesystem.

While the store is full: the error says so (worker log, server log), no run finishes, and no
commit is half-written (a stage is COMPLETED with all of its rows, or has none of them; SQLite's
integrity check passes). Then space returns (the limit is lifted, the file removed), and every
run completes with each stage's rows exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

from engine import Kernel, RunCreate, create_worker
from engine.store import SqlStore
from tests.reliability.pg_cluster import PrivateCluster
from tests.reliability.support import FastEnv, WorkerProcess, table_counts, wait_for_files
from tests.reliability.workloads import (
    CRASH_STAGES,
    LOGS_PER_STAGE,
    assert_exactly_once,
    crash_workflow,
    release_path,
)

pytestmark = pytest.mark.reliability

RUNS = 3
WAIT = timedelta(seconds=120)


async def until(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)


async def assert_nothing_half_written(store: SqlStore, run_ids: list[str]) -> None:
    """No run finished; each stage is COMPLETED with all of its rows, or has none of them."""
    for run_id in run_ids:
        run = await store.get_run(run_id)
        assert run.status == "RUNNING", run
        logs: dict[str | None, int] = {}
        for log in await store.list_logs(run_id):
            logs[log.stage_id] = logs.get(log.stage_id, 0) + 1
        completed_events = [
            e.payload.get("stage_id")
            for e in await store.list_outbox_events(run_id)
            if e.event_type == "stage:completed"
        ]
        for stage in await store.list_stages(run_id):
            done = stage.status == "COMPLETED"
            assert logs.get(stage.stage_id, 0) == (LOGS_PER_STAGE[stage.stage_id] if done else 0)
            assert completed_events.count(stage.stage_id) == (1 if done else 0), stage
        assert await store.list_stages(run_id), "the run never began"
        work = {s.stage_id: s for s in await store.list_stages(run_id)}["work"]
        assert work.status == "RUNNING", work  # its commit is the one that cannot land


async def hold_runs(kernel: Kernel, directory: Path, pad: int) -> list[str]:
    job = {"dir": str(directory), "mode": "stage", "pad": pad}
    run_ids = [
        (await kernel.dispatch(RunCreate(workflow_id="crashy", input=job))).workflow_run_id
        for _ in range(RUNS)
    ]
    await wait_for_files([directory / f"{r}.work.1.entered" for r in run_ids])
    return run_ids


async def finish_runs(kernel: Kernel, store: SqlStore, run_ids: list[str]) -> None:
    for run_id in run_ids:
        run = await kernel.wait_for_run(run_id, timeout=WAIT)
        assert run.status == "COMPLETED", run
        await assert_exactly_once(store, run_id)
    counts = await table_counts(store)
    assert counts["workflow_runs"] == RUNS
    assert counts["workflow_stages"] == RUNS * len(CRASH_STAGES)
    assert counts["workflow_annotations"] == RUNS * 6
    assert counts["workflow_logs"] == RUNS * 5


# -- SQLite: a file-size limit --------------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
async def test_sqlite_worker_under_a_file_size_limit(
    fast_env: FastEnv, store: SqlStore, tmp_path: Path
) -> None:
    task_queue = f"tq-full-{uuid.uuid4()}"
    worker = await WorkerProcess.spawn(
        tmp_path / "worker.log",
        database_url=store.url,
        application_name="rel-full",
        WFE_TEMPORAL_ADDRESS=fast_env.address,
        WFE_TASK_QUEUE=task_queue,
        REL_MARKERS=str(tmp_path),
        REL_FILE_LIMIT="1",
    )
    try:
        await wait_for_files([tmp_path / f"worker-{worker.pid}.ready"])
        kernel = Kernel(
            client=fast_env.client, store=store, workflows=[crash_workflow()], task_queue=task_queue
        )
        run_ids = await hold_runs(kernel, tmp_path, pad=0)
        database = make_url(store.url).database
        assert database is not None
        wal = Path(database + "-wal")
        limit = wal.stat().st_size
        # The log cannot grow past its present size: the worker's next commits fail.
        resource.prlimit(worker.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        for run_id in run_ids:
            release_path(tmp_path, run_id).touch()

        # SQLite reports a write refused with EFBIG as "disk I/O error" (SQLITE_IOERR_WRITE)
        # and a full disk (ENOSPC) as "database or disk is full": either names the cause.
        await until(
            "the worker never met the limit",
            lambda: (
                sum(
                    worker.output().count(f"sqlite3.OperationalError) {message}")
                    for message in ("disk I/O error", "database or disk is full")
                )
                >= RUNS
            ),
        )
        worker.check_alive()
        await assert_nothing_half_written(store, run_ids)
        assert wal.stat().st_size <= limit
        with contextlib.closing(sqlite3.connect(database)) as check:
            assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

        # Space returns.
        resource.prlimit(
            worker.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
        await finish_runs(kernel, store, run_ids)
    finally:
        await worker.kill()


# -- PostgreSQL: a tablespace on a small filesystem -----------------------------------------


def mount_small_filesystem(size: str) -> Path:
    """A fresh ``tmpfs`` of ``size``; skips the test, with mount's reason, when not allowed."""
    target = Path(tempfile.mkdtemp(prefix="wfe-fulldisk-"))
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        target.rmdir()
        reason = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
        pytest.skip(f"cannot mount a small filesystem for a tablespace here: mount: {reason}")
    return target


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no space left; returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def small_tablespace_cluster() -> Iterator[tuple[PrivateCluster, Path]]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the tablespace needs root (this run is not)")
    mount = mount_small_filesystem("16m")
    cluster = None
    try:
        cluster = PrivateCluster()
        cluster.start()
        if cluster.as_root:
            subprocess.run(["chown", "postgres:postgres", str(mount)], check=True)
        yield cluster, mount
    finally:
        if cluster is not None:
            cluster.destroy()
        subprocess.run(["umount", str(mount)], check=False)
        with contextlib.suppress(OSError):
            mount.rmdir()


@pytest_asyncio.fixture
async def small_store(
    small_tablespace_cluster: tuple[PrivateCluster, Path],
) -> AsyncIterator[tuple[SqlStore, Path, PrivateCluster]]:
    cluster, mount = small_tablespace_cluster
    admin = make_url(cluster.url).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(False), autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE small LOCATION '{mount}'")  # type: ignore[arg-type]
        conn.execute("CREATE DATABASE wfe_full")
    url = make_url(cluster.url).set(database="wfe_full").render_as_string(False)
    store = SqlStore(url)
    await store.upgrade()
    with psycopg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(False), autocommit=True
    ) as conn:
        # Every table and index of the side-store (and their TOAST) onto the small filesystem.
        conn.execute("ALTER TABLE ALL IN TABLESPACE pg_default SET TABLESPACE small")
        conn.execute("ALTER INDEX ALL IN TABLESPACE pg_default SET TABLESPACE small")
    try:
        yield store, mount, cluster
    finally:
        await store.dispose()


async def test_postgres_tablespace_on_a_full_filesystem(
    fast_env: FastEnv, small_store: tuple[SqlStore, Path, PrivateCluster], tmp_path: Path
) -> None:
    store, mount, cluster = small_store
    kernel = Kernel(
        client=fast_env.client,
        store=store,
        workflows=[crash_workflow()],
        task_queue=f"tq-full-{uuid.uuid4()}",
    )
    async with create_worker(kernel):
        # 128 KiB of output (random hex) per work stage: its commit needs fresh pages.
        run_ids = await hold_runs(kernel, tmp_path, pad=64 * 1024)
        filler = fill(mount)
        for run_id in run_ids:
            release_path(tmp_path, run_id).touch()

        def no_space() -> bool:
            return cluster.log.read_text(errors="replace").count("No space left on device") >= RUNS

        await until("the work commits never ran out of space", no_space)
        await asyncio.sleep(2)  # their retries too
        await assert_nothing_half_written(store, run_ids)

        filler.unlink()  # space returns
        await finish_runs(kernel, store, run_ids)
