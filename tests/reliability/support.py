"""Helpers of the reliability tests: worker processes, file markers, SQL row counts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from temporalio.client import Client

from engine.store import SqlStore
from engine.store.models import Base

__all__ = [
    "WORKER_MAIN",
    "FastEnv",
    "WorkerProcess",
    "pg_admin_url",
    "table_contents",
    "table_counts",
    "wait_for_files",
    "with_application_name",
]

ROOT = Path(__file__).resolve().parents[2]
WORKER_MAIN = Path(__file__).with_name("worker_main.py")


@dataclass(frozen=True)
class FastEnv:
    """Like the session ``env`` fixture (``.client``), plus the server's address."""

    client: Client
    address: str


async def wait_for_files(paths: Iterable[Path], timeout: float = 60.0) -> None:
    """Wait until every path exists (they are markers written by another process)."""
    pending = list(paths)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        pending = [p for p in pending if not p.exists()]
        if not pending:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"markers never appeared: {[p.name for p in pending]}")
        await asyncio.sleep(0.01)


class WorkerProcess:
    """A ``worker_main.py`` subprocess; its output goes to ``log``."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        log: Path,
        application_name: str,
        gate: Path | None,
    ) -> None:
        self.process = process
        self.log = log
        self.application_name = application_name
        """PostgreSQL ``application_name`` of its connections."""
        self.gate = gate
        """The file it waits for before polling (``None``: polls at once)."""

    @classmethod
    async def spawn(
        cls,
        log: Path,
        *,
        database_url: str,
        application_name: str,
        gate: Path | None = None,
        **env: str,
    ) -> WorkerProcess:
        environment = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "WFE_DATABASE_URL": with_application_name(database_url, application_name),
            **({"REL_GATE": str(gate)} if gate is not None else {}),
            **env,
        }
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER_MAIN),
                env=environment,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=str(ROOT),
            )
        return cls(process, log, application_name, gate)

    @property
    def pid(self) -> int:
        return self.process.pid

    def open_gate(self) -> None:
        if self.gate is not None:
            self.gate.touch()

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly as in a crash."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            raise AssertionError(
                f"worker {self.pid} exited with {self.process.returncode}:\n{self.output()}"
            )


def with_application_name(url: str, name: str) -> str:
    """The URL with ``application_name`` set (PostgreSQL), to find its backends."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    return parsed.update_query_dict({"application_name": name}).render_as_string(
        hide_password=False
    )


def pg_admin_url(url: str) -> str:
    """A libpq URL of the same database, for a plain psycopg connection."""
    parsed = make_url(url).set(drivername="postgresql", query={})
    return parsed.render_as_string(hide_password=False)


async def pg_backends(url: str, application_name: str, state: str | None = None) -> int:
    """How many backends of the database carry ``application_name`` (in ``state``)."""
    async with await psycopg.AsyncConnection.connect(pg_admin_url(url), autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND (%s::text IS NULL OR state = %s)",
            (application_name, state, state),
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


async def table_counts(store: SqlStore) -> dict[str, int]:
    """Rows per table of the side-store (one statement)."""
    tables = Base.metadata.sorted_tables
    query = select(
        *(
            select(func.count()).select_from(table).scalar_subquery().label(table.name)
            for table in tables
        )
    )
    async with store.sessions() as session:
        row = (await session.execute(query)).one()
    return {table.name: int(count) for table, count in zip(tables, row, strict=True)}


async def table_contents(store: SqlStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the side-store, by primary key: a write of any kind (an
    UPDATE too, which counts would miss) shows as a difference."""
    contents: dict[str, list[tuple[Any, ...]]] = {}
    async with store.sessions() as session:
        for table in Base.metadata.sorted_tables:
            query = select(table).order_by(*table.primary_key.columns)
            contents[table.name] = [tuple(row) for row in (await session.execute(query)).all()]
    return contents
