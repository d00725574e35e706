"""Plain temporalio with hand-written SQL: the floor of a durable record per stage.

The plain side of :mod:`bench.overhead` keeps nothing: no run row, no stage results. The engine
must, so part of its overhead is the durable commit itself. This pipeline is plain temporalio
doing the least a user's own code would to keep the same facts: the client inserts the run's
row before it starts the workflow, and each of the 10 activities writes its stage's result
row in one transaction (the last one also marks the run completed), with hand-written SQL on
the driver, no ORM:

- SQLite: one ``sqlite3`` connection in WAL mode with ``synchronous=NORMAL`` (the engine's
  settings), written on the event loop: each write takes tens of microseconds, so a thread hop
  would cost more than it saves;
- PostgreSQL: a pool of ``psycopg.AsyncConnection`` in autocommit (each write is one
  statement, so one transaction and one round trip), psycopg preparing the statements after
  their fifth use.

The engine over this side shows how far the engine is from that floor, apart from the floor
itself; the targets are still judged against the plain side that keeps nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import psycopg
    from sqlalchemy import make_url
    from temporalio.client import Client
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

__all__ = ["PLAIN_SQL_TEXT", "SqlSteps", "open_sql_steps", "plain_sql_worker", "start_sql_run"]

STAGES = 10
PLAIN_SQL_TEXT = (
    "plain + SQL (reference) = the plain pipeline (unsandboxed) where the client inserts the "
    "run's row and each activity writes its stage result in one transaction (the last also "
    "completes the run), hand-written SQL on sqlite3 / psycopg async, no ORM: the floor of a "
    "durable record per stage"
)
POOL_SIZE = 10
"""PostgreSQL connections, as many as the engine's pool keeps (``POSTGRES_POOL``)."""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS plain_runs (id TEXT PRIMARY KEY, input TEXT NOT NULL, "
    "status TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS plain_stage_results (run_id TEXT NOT NULL, "
    "stage INTEGER NOT NULL, output TEXT NOT NULL, completed_at TEXT NOT NULL, "
    "PRIMARY KEY (run_id, stage))",
)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class SqlSteps:
    """The pipeline's writes on one database: the run's row and each stage's result."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._sqlite: sqlite3.Connection | None = None
        self._pool: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        self._connections: list[psycopg.AsyncConnection[Any]] = []

    async def open(self) -> None:
        if self._url.startswith("sqlite"):
            path = self._url.split(":///", 1)[1]
            self._sqlite = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
                self._sqlite.execute(f"PRAGMA {pragma}")
            for statement in _SCHEMA:
                self._sqlite.execute(statement)
            return
        url = make_url(self._url).set(drivername="postgresql").render_as_string(False)
        for _ in range(POOL_SIZE):
            connection = await psycopg.AsyncConnection.connect(url, autocommit=True)
            self._connections.append(connection)
            self._pool.put_nowait(connection)
        for statement in _SCHEMA:
            await self._connections[0].execute(statement)

    async def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        for connection in self._connections:
            await connection.close()

    async def create_run(self, run_id: str, payload: dict[str, Any]) -> None:
        now = _now()
        row = (run_id, json.dumps(payload), "running", now, now)
        if self._sqlite is not None:
            self._sqlite.execute("INSERT INTO plain_runs VALUES (?, ?, ?, ?, ?)", row)
            return
        async with self._connection() as connection:
            await connection.execute("INSERT INTO plain_runs VALUES (%s, %s, %s, %s, %s)", row)

    @activity.defn(name="bench.sql_step")
    async def step(self, run_id: str, index: int) -> dict[str, int]:
        """A no-op stage whose result is written durably before the activity completes."""
        output = {"stage": index}
        now = _now()
        last = index == STAGES - 1
        if self._sqlite is not None:
            self._sqlite.execute("BEGIN IMMEDIATE")
            try:
                self._sqlite.execute(
                    "INSERT INTO plain_stage_results VALUES (?, ?, ?, ?)",
                    (run_id, index, json.dumps(output), now),
                )
                if last:
                    self._sqlite.execute(
                        "UPDATE plain_runs SET status = 'completed', updated_at = ? WHERE id = ?",
                        (now, run_id),
                    )
                self._sqlite.execute("COMMIT")
            except BaseException:
                self._sqlite.execute("ROLLBACK")
                raise
            return output
        insert = "INSERT INTO plain_stage_results VALUES (%(run)s, %(stage)s, %(output)s, %(now)s)"
        if last:  # one statement, so one transaction: the result and the run's end
            insert = (
                f"WITH result AS ({insert}) UPDATE plain_runs SET status = 'completed', "
                "updated_at = %(now)s WHERE id = %(run)s"
            )
        params = {"run": run_id, "stage": index, "output": json.dumps(output), "now": now}
        async with self._connection() as connection:
            await connection.execute(insert, params)
        return output

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        connection = await self._pool.get()
        try:
            yield connection
        finally:
            self._pool.put_nowait(connection)


@workflow.defn(name="bench.sql_pipeline")
class SqlPipeline:
    """Ten activities in sequence, each writing its stage's result; nothing else."""

    @workflow.run
    async def run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for index in range(STAGES):
            result = await workflow.execute_activity(
                "bench.sql_step",
                args=[run_id, index],
                start_to_close_timeout=timedelta(minutes=10),
                result_type=dict,
            )
        return result


@contextlib.asynccontextmanager
async def open_sql_steps(url: str) -> AsyncIterator[SqlSteps]:
    """The writes on ``url`` (an empty database), schema created."""
    steps = SqlSteps(url)
    await steps.open()
    try:
        yield steps
    finally:
        await steps.close()


def plain_sql_worker(client: Client, task_queue: str, steps: SqlSteps, **options: Any) -> Worker:
    """The pipeline's worker: unsandboxed, with the given (the plain side's) options."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[SqlPipeline],
        activities=[steps.step],
        workflow_runner=UnsandboxedWorkflowRunner(),
        **options,
    )


async def start_sql_run(client: Client, steps: SqlSteps, task_queue: str) -> Any:
    """Insert the run's row, then start its workflow; returns the workflow handle."""
    run_id = str(uuid.uuid4())
    await steps.create_run(run_id, {"n": 1})
    return await client.start_workflow(
        SqlPipeline.run, run_id, id=f"sql-{run_id}", task_queue=task_queue
    )
