"""``SqlStore``: the side-store facade the kernel and activities talk to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, bindparam, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from engine.core.ai_calls import AICall
from engine.core.annotations import AnnotationDraft
from engine.core.evidence import ChainVerification
from engine.core.payloads import CommitResult, StageCommit, StageSpec
from engine.core.records import Annotation, LogRecord, OutboxEventRecord, RunRecord, StageRecord
from engine.core.values import clean_text, text_problem
from engine.errors import CommitRefusedError, InvalidStateError, RunNotFoundError
from engine.store import (
    annotation_rows,
    approval_rows,
    artifact_rows,
    delivery_rows,
    direct,
    fork_rows,
    migrate,
    outbox_rows,
    runs,
    stage_rows,
)
from engine.store.ai_call_rows import ai_call_rows
from engine.store.chain_check import ChainRecords, read_chain, verify_chain
from engine.store.contract import (
    AnnotationFilters,
    NewRun,
    NewStage,
    Rerun,
    RowContext,
    StartedRun,
)
from engine.store.database import (
    POSTGRES_POOL,
    READ_ONLY,
    create_engine_for_url,
    create_sync_engine_for_url,
    is_sqlite,
)
from engine.store.models import (
    AI_CALLS,
    RUN_COLUMNS,
    RUNS,
    Base,
    OutboxEvent,
    WorkflowLog,
    WorkflowRun,
    WorkflowStage,
    log_record,
    run_record,
    utcnow,
)
from engine.store.one_statement import (
    begin_in_one_statement,
    commit_in_one_statement,
    create_in_one_statement,
    fits_one_statement,
)
from engine.store.refusals import refused_commit, unfixable
from engine.store.sql import append_events, lock_run

__all__ = ["SqlStore"]

P = ParamSpec("P")
T = TypeVar("T")

_RUN_BY_ID = select(*RUN_COLUMNS).where(RUNS.c.id == bindparam("run_id"))
_RUN_PROGRESS = select(RUNS.c.status, RUNS.c.temporal_workflow_id).where(
    RUNS.c.id == bindparam("run_id")
)

SQLITE_READERS = 2
"""Reader threads on SQLite (WAL: they run beside the one writer)."""


def _unknown(run_id: object) -> bool:
    """Whether ``run_id`` cannot name a stored run: a string no backend can compare.

    That is NUL or lone surrogates. Such ids are answered like any unknown id instead of failing
    in the driver.
    """
    return not isinstance(run_id, str) or text_problem(run_id) is not None


def _not_found(run_id: object) -> RunNotFoundError:
    return RunNotFoundError(f"Run {run_id!r} not found", workflow_run_id=None)


def _missing(run_id: str) -> RunNotFoundError:
    return RunNotFoundError(f"Run {run_id} not found", workflow_run_id=run_id)


# A store method that does nothing but run one row function is that function, bound: its
# parameters (after the session), defaults and docstring are declared once, where the work is.


def _bound(
    work: Callable[Concatenate[Session, P], T], *, transaction: bool
) -> Callable[Concatenate[SqlStore, P], Awaitable[T]]:
    """A method running ``work`` on a store thread (see ``SqlStore._on_thread``).

    With ``transaction``, in a write transaction of its own; else in a read-only session.
    """

    async def method(self: SqlStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._on_thread(
            lambda session: work(session, *args, **kwargs), transaction=transaction
        )

    method.__doc__ = work.__doc__
    return method


class SqlStore:
    """The SQL side-store on SQLite (default) or PostgreSQL.

    Every write method is one transaction; those that activities call are idempotent under
    Temporal's at-least-once delivery.

    Each method runs its whole transaction on one of the store's threads with the synchronous
    driver, and the event loop awaits it once. Through the async drivers every statement
    crossed threads several times (aiosqlite hands each cursor call to its own thread; psycopg
    and the greenlet bridge wake the loop per round trip): measured on a 5-statement stage
    commit under 20 concurrent writers, the thread costs half the CPU on SQLite (1.3–2.1 ms
    against 3.6–4.3 ms) and a quarter less on PostgreSQL, and it cuts SQLite's wall time by
    more than half (``bench/README.md``). Every read and write of the engine goes
    this way, the outbox relay, plugin deliveries and blobs included: one threading model on
    each backend, and SQLite reads that never take the write lock (through the async driver
    they began ``IMMEDIATE`` and waited behind the writers: 1.85 s measured against 0.01 s).
    The async engine (:attr:`engine`, :meth:`transaction`) is left to migrations and tests.

    Args:
        url: SQLAlchemy URL, ``sqlite+aiosqlite:///path`` or ``postgresql+psycopg://...``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_engine_for_url(url)
        self.sync_engine: Engine = create_sync_engine_for_url(url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._sync_sessions = sessionmaker(self.sync_engine, expire_on_commit=False)
        # Same pool; each statement commits itself (engine.store.one_statement).
        self._autocommit = self.sync_engine.execution_options(isolation_level="AUTOCOMMIT")
        self._writers: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None

    async def _write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one transaction on a store thread; it commits unless ``work`` raises."""
        return await self._on_thread(work, transaction=True)

    async def _write_one_statement(
        self, statement: Callable[[Connection], T | None] | None, work: Callable[[Session], T]
    ) -> T:
        """On PostgreSQL, try ``statement`` first, else run ``work`` in one transaction.

        ``statement`` makes the same writes as ``work`` in one autocommitted statement (see
        :mod:`engine.store.one_statement`); when it cannot (``None``), or on SQLite, ``work`` runs.
        """

        def run() -> T:
            if statement is not None and not self.is_sqlite:
                with self._autocommit.connect() as connection:
                    result = statement(connection)
                if result is not None:
                    return result
            return self._in_session(work, True)

        return await self._in_thread(run, True)

    async def _read(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` on a store thread in a session that is rolled back when it ends."""
        return await self._on_thread(work, transaction=False)

    async def _read_run_row(self, statement: Any, run_id: str) -> tuple[Any, ...]:
        """The row one ``SELECT`` (built once) finds by ``run_id``, else RunNotFoundError.

        On PostgreSQL it runs autocommitted: one statement sees one snapshot, so the
        ``BEGIN`` and ``ROLLBACK`` of a read-only session are two round trips for nothing (a
        run read went from 1.2 to 0.9 ms, the median of 300 on this machine's loopback server).
        SQLite's session path costs no round trips, and its ``BEGIN`` is the store's own.
        """
        if _unknown(run_id):
            raise _not_found(run_id)
        params = {"run_id": run_id}

        def read() -> list[tuple[Any, ...]]:
            with self._autocommit.connect() as connection:
                return direct.execute(connection, statement, params)

        if self.is_sqlite:
            rows = await self._read(
                lambda session: direct.execute(session.connection(), statement, params)
            )
        else:
            rows = await self._in_thread(read, False)
        if not rows:
            raise _missing(run_id)
        return rows[0]

    async def _on_thread(self, work: Callable[[Session], T], *, transaction: bool) -> T:
        return await self._in_thread(lambda: self._in_session(work, transaction), transaction)

    def _in_session(self, work: Callable[[Session], T], transaction: bool) -> T:
        with self._sync_sessions() as session:
            if not transaction:
                session.connection(execution_options={READ_ONLY: True})
                return work(session)
            with session.begin():
                return work(session)

    async def _in_thread(self, run: Callable[[], T], transaction: bool) -> T:
        threads = self._threads_for(transaction)
        # Shielded: a cancelled caller (an activity cancelled with its run) does not abandon
        # the transaction half-way; it ends normally in its thread, and its run-status guard
        # makes a late commit harmless.
        return await asyncio.shield(asyncio.get_running_loop().run_in_executor(threads, run))

    def _threads_for(self, transaction: bool) -> ThreadPoolExecutor:
        if self._writers is None or self._readers is None:
            if self.is_sqlite:
                # SQLite runs one writer at a time. Queued on one thread here, this process's
                # writers never meet in SQLite's busy handler, which sleeps between tries
                # (1, 2, 5, 10 … ms: 12 ms per BEGIN IMMEDIATE on average under the 200-run
                # load with four threads); readers take no write lock and run beside it.
                self._writers = ThreadPoolExecutor(1, thread_name_prefix="wfe-store-writer")
                self._readers = ThreadPoolExecutor(SQLITE_READERS, thread_name_prefix="wfe-store")
            else:
                size = POSTGRES_POOL["pool_size"]
                self._writers = self._readers = ThreadPoolExecutor(
                    size, thread_name_prefix="wfe-store"
                )
        return self._writers if transaction else self._readers

    @property
    def is_sqlite(self) -> bool:
        """Whether the backend is SQLite."""
        return is_sqlite(self.engine)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on exit, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    # -- schema -------------------------------------------------------------------------------

    async def upgrade(self, revision: str = "head") -> None:
        """Apply Alembic migrations up to ``revision`` (what ``wfe db upgrade`` runs)."""
        await migrate.upgrade(self.engine, revision)

    async def downgrade(self, revision: str) -> None:
        """Revert Alembic migrations down to ``revision`` (``"base"`` drops everything)."""
        await migrate.downgrade(self.engine, revision)

    async def ensure_current(self) -> None:
        """Raise :class:`~engine.errors.SchemaOutOfDateError` unless the schema is at head."""
        await migrate.check_current(self.engine)

    async def truncate_all(self) -> None:
        """Empty every table (tests use it to reset a shared database)."""
        async with self.engine.begin() as conn:
            if self.is_sqlite:
                for table in reversed(Base.metadata.sorted_tables):
                    await conn.execute(table.delete())
            else:
                names = ", ".join(t.name for t in Base.metadata.sorted_tables)
                await conn.execute(text(f"TRUNCATE {names} CASCADE"))

    async def dispose(self) -> None:
        """Close every pooled connection (the store can still be used after, and reconnects)."""
        pools = {pool for pool in (self._writers, self._readers) if pool is not None}
        self._writers = self._readers = None
        for pool in pools:
            await asyncio.to_thread(pool.shutdown)
        self.sync_engine.dispose()
        await self.engine.dispose()

    # -- runs ---------------------------------------------------------------------------------

    async def create_run(self, new: NewRun, temporal_workflow_id: str) -> tuple[str, bool]:
        """Insert a run (or find the one holding its idempotency key): (run id, created)."""
        now = utcnow()

        def created(connection: Connection) -> tuple[str, bool] | None:
            run_id = create_in_one_statement(connection, new, now, temporal_workflow_id)
            return None if run_id is None else (run_id, True)

        return await self._write_one_statement(
            created, lambda session: runs.create_run(session, new, now, temporal_workflow_id)
        )

    async def start_run(
        self,
        run_id: str,
        first_group_of: Callable[[dict[str, Any]], Sequence[NewStage]] | None,
        causation_id: str,
    ) -> StartedRun:
        """Mark the run RUNNING and open its first group (see :func:`runs.start_run`)."""
        return await self._write(
            lambda session: runs.start_run(session, run_id, first_group_of, utcnow(), causation_id)
        )

    finalize_run = _bound(runs.finalize_run, transaction=True)

    async def cancel_run(self, run_id: str, reason: str | None, causation_id: str) -> bool:
        """Cancel a PENDING or RUNNING run; False when unknown or already terminal."""
        if _unknown(run_id):
            return False
        return await self._write(
            lambda session: runs.cancel_run(session, run_id, reason, utcnow(), causation_id)
        )

    async def rerun_from(
        self,
        run_id: str,
        *,
        target_group: int,
        groups_before: Sequence[str],
        target_stages: Sequence[NewStage],
        temporal_workflow_id: str,
        causation_id: str,
        idempotency_key: str | None = None,
        from_stage_id: str = "",
    ) -> Rerun:
        """Delete the records from ``target_group`` on and reopen that group.

        Once per ``idempotency_key``.
        """
        return await self._write(
            lambda session: runs.rerun_from(
                session,
                run_id,
                target_group=target_group,
                groups_before=groups_before,
                target_stages=target_stages,
                temporal_workflow_id=temporal_workflow_id,
                now=utcnow(),
                causation_id=causation_id,
                idempotency_key=idempotency_key,
                from_stage_id=from_stage_id,
            )
        )

    pending_runs = _bound(runs.pending_runs, transaction=False)

    running_runs = _bound(runs.running_runs, transaction=False)

    restart_run = _bound(runs.restart_run, transaction=True)

    async def temporal_workflow_id(self, run_id: str) -> str | None:
        """Id of the Temporal workflow currently driving the run."""
        if _unknown(run_id):
            return None
        query = select(WorkflowRun.temporal_workflow_id).where(WorkflowRun.id == run_id)
        return await self._read(lambda session: session.scalar(query))

    async def run_progress(self, run_id: str) -> tuple[str, str | None]:
        """The run's status and the Temporal execution driving it (RunNotFoundError if none)."""
        status, temporal_id = await self._read_run_row(_RUN_PROGRESS, run_id)
        return status, temporal_id

    # -- stages -------------------------------------------------------------------------------

    async def begin_stage(
        self,
        run_id: str,
        spec: StageSpec,
        attempt: int,
        first_group: Sequence[NewStage] | None = None,
    ) -> stage_rows.StageStart:
        """Mark a stage RUNNING, or say why it must not run (see :func:`stage_rows.begin_stage`)."""
        now = utcnow()
        return await self._write_one_statement(
            (
                lambda connection: begin_in_one_statement(
                    connection, run_id, spec, attempt, now, first_group
                )
            )
            if first_group
            else None,
            lambda session: stage_rows.begin_stage(
                session, run_id, spec, attempt, now, first_group
            ),
        )

    stage_outcome = _bound(stage_rows.stage_start, transaction=False)

    async def commit_stage(self, commit: StageCommit) -> CommitResult:
        """Write one stage outcome in one transaction (see :func:`stage_rows.commit_stage`).

        Always settles: an outcome holding a value no backend can store is committed FAILED
        naming it, and one whose rows the database refuses for good (see
        :func:`refusals.unfixable`) FAILED with the database's reason; ``failed_with`` says
        so. Only when even the bare FAILED record is refused does it raise.

        Raises:
            CommitRefusedError: the database refused the bare FAILED outcome too.
        """
        failed_with = None
        outcome = commit.outcome
        if outcome.error is not None and text_problem(outcome.error) is not None:
            commit = commit.model_copy(
                update={"outcome": outcome.model_copy(update={"error": clean_text(outcome.error)})}
            )
        problem = commit.outcome.storage_problem()
        if problem is not None:
            outcome = commit.outcome.refused(problem)
            commit = commit.model_copy(
                update={"outcome": outcome, "open_next": [], "completes_run": False}
            )
            failed_with = outcome.error
        tries = 0
        bare = False
        while True:
            tries += 1
            try:
                result = await self._commit_stage(commit)
                break
            except (DBAPIError, StatementError) as error:
                reason = unfixable(error)
                if reason is None:
                    raise
                if isinstance(error, IntegrityError) and tries == 1:
                    continue  # a concurrent writer's row may have caused it: look again
                if bare:
                    raise CommitRefusedError(
                        f"stage {commit.stage.stage_id}: the database refused its FAILED "
                        f"outcome: {reason}",
                        workflow_run_id=commit.run_id,
                        stage_id=commit.stage.stage_id,
                    ) from None
                commit, bare = refused_commit(commit, reason), True
                failed_with = commit.outcome.error
        if failed_with is None:
            return result
        return result.model_copy(update={"failed_with": failed_with})

    async def _commit_stage(self, commit: StageCommit) -> CommitResult:
        return await self._write_one_statement(
            (lambda connection: commit_in_one_statement(connection, commit))
            if fits_one_statement(commit)
            else None,
            lambda session: stage_rows.commit_stage(session, commit),
        )

    # -- outbox, plugin deliveries, artifacts ------------------------------------------------

    async def relay_outbox(
        self,
        max_events: int,
        publish: Callable[[list[OutboxEventRecord]], Awaitable[tuple[list[str], list[str]]]],
        *,
        max_retries: int,
    ) -> int:
        """Hand up to ``max_events`` pending events to ``publish`` and record what it says.

        ``publish`` returns (published ids, failed ids). Returns how many were published.

        On PostgreSQL the events are claimed (row locks, see :mod:`.outbox_rows`) in a
        transaction held open while ``publish`` runs: the locks are the claim, and they go
        away by themselves if this process dies. On SQLite nothing is held while it runs.
        """
        if self.is_sqlite:
            events = await self._read(partial(outbox_rows.pending_events, max_events=max_events))
            published, failed = await publish(events)
            await self._write(
                partial(
                    outbox_rows.mark_deliveries,
                    published=published,
                    failed=failed,
                    max_retries=max_retries,
                    now=utcnow(),
                )
            )
            return len(published)
        session = self._sync_sessions()

        def claim() -> list[OutboxEventRecord]:
            session.begin()
            return outbox_rows.claim_events(session, max_events)

        def mark(published: list[str], failed: list[str]) -> None:
            outbox_rows.mark_deliveries(
                session, published, failed, max_retries=max_retries, now=utcnow()
            )
            session.commit()

        try:
            published, failed = await publish(await self._in_thread(claim, True))
            await self._in_thread(partial(mark, published, failed), True)
            return len(published)
        finally:
            await self._in_thread(session.close, True)  # rolls back what did not commit

    replay_dead_letters = _bound(outbox_rows.replay_dead_letters, transaction=True)

    delivered_plugins = _bound(delivery_rows.delivered_plugins, transaction=False)

    record_delivery = _bound(delivery_rows.record_delivery, transaction=True)

    put_artifact = _bound(artifact_rows.put_artifact, transaction=True)

    read_artifact = _bound(artifact_rows.read_artifact, transaction=False)

    delete_artifacts = _bound(artifact_rows.delete_artifacts, transaction=True)

    # -- AI calls -----------------------------------------------------------------------------

    async def record_ai_calls(
        self, calls: Sequence[AICall], *, workflow_run_id: str | None, stage_id: str | None
    ) -> None:
        """Store AI calls made outside a stage's commit, in one transaction."""
        rows = ai_call_rows(calls, workflow_run_id=workflow_run_id, stage_id=stage_id, now=utcnow())
        await self._write(lambda session: session.execute(AI_CALLS.insert(), rows))

    # -- annotations --------------------------------------------------------------------------

    async def attach_annotations(
        self,
        run_id: str,
        drafts: Sequence[AnnotationDraft],
        where: RowContext,
        causation_id: str,
    ) -> list[Annotation]:
        """Insert annotations on a run of any status, all or none; unknown run raises."""
        if _unknown(run_id):
            raise _not_found(run_id)

        def attach(session: Session) -> list[Annotation]:
            if lock_run(session, run_id) is None:
                raise _missing(run_id)
            if not drafts:
                return []
            now = utcnow()
            inserted, events = runs.write_annotations(session, drafts, where, now)
            append_events(session, run_id, events, causation_id=causation_id, now=now)
            return [Annotation.model_validate(row) for row in inserted]

        try:
            return await self._write(attach)
        except IntegrityError:  # the stage record went away (a rerun) between check and write
            raise InvalidStateError(
                "the stage record was replaced while attaching; nothing was written",
                workflow_run_id=run_id,
            ) from None

    async def list_annotations(self, run_id: str, filters: AnnotationFilters) -> list[Annotation]:
        """A run's annotations (see :func:`annotation_rows.list_annotations`)."""
        if _unknown(run_id):
            raise _not_found(run_id)

        rows = await self._read(
            lambda session: annotation_rows.list_annotations(session, run_id, filters)
        )
        if rows is None:
            raise _missing(run_id)
        return rows

    query_annotations = _bound(annotation_rows.query_annotations, transaction=False)

    count_runs = _bound(annotation_rows.count_runs, transaction=False)

    async def fork_run(
        self,
        source_id: str,
        new: NewRun,
        *,
        target_group: int,
        groups_before: Sequence[str],
        temporal_workflow_id: str,
    ) -> fork_rows.Fork:
        """Create a fork of a terminal run (see :func:`engine.store.fork_rows.fork_run`)."""
        if _unknown(source_id):
            raise _not_found(source_id)
        now = utcnow()
        return await self._write(
            lambda session: fork_rows.fork_run(
                session,
                source_id,
                new,
                target_group=target_group,
                groups_before=groups_before,
                temporal_workflow_id=temporal_workflow_id,
                now=now,
            )
        )

    forks_of = _bound(fork_rows.forks_of, transaction=False)

    # -- reads --------------------------------------------------------------------------------

    pending_approvals = _bound(approval_rows.pending_rows, transaction=False)

    async def get_run(self, run_id: str) -> RunRecord:
        """The run, or :class:`RunNotFoundError`."""
        return run_record(await self._read_run_row(_RUN_BY_ID, run_id))

    async def verify_chain(self, run_id: str) -> ChainVerification:
        """Check the run's tamper-evident record chain (:mod:`engine.store.chain_check`)."""
        return await self._read_of_run(run_id, lambda session: verify_chain(session, run_id))

    async def chain_records(self, run_id: str) -> ChainRecords:
        """The run's chain and the records it covers (what an evidence bundle holds)."""
        return await self._read_of_run(run_id, lambda session: read_chain(session, run_id))

    async def list_ai_calls(self, run_id: str) -> list[dict[str, Any]]:
        """The run's recorded AI calls, oldest first, as column mappings (exporters read them)."""

        def read(session: Session) -> list[dict[str, Any]]:
            rows = session.execute(
                select(AI_CALLS)
                .where(AI_CALLS.c.workflow_run_id == run_id)
                .order_by(AI_CALLS.c.created_at, AI_CALLS.c.id)
            ).mappings()
            return [dict(row) for row in rows]

        return await self._read(read)

    async def _read_of_run(self, run_id: str, work: Callable[[Session], T | None]) -> T:
        """What ``work`` reads of a run, in a read-only session.

        ``None`` from it means the run does not exist: then (or for an id no backend can
        compare) RunNotFoundError.
        """
        if _unknown(run_id):
            raise _not_found(run_id)

        def read(session: Session) -> T:
            found = work(session)
            if found is None:
                raise _missing(run_id)
            return found

        return await self._read(read)

    async def _read_run_rows(self, run_id: str, query: Any) -> list[Any]:
        """The rows ``query`` selects for a run that must exist (else RunNotFoundError)."""

        def read(session: Session) -> list[Any] | None:
            if session.scalar(select(WorkflowRun.id).where(WorkflowRun.id == run_id)) is None:
                return None
            return list(session.scalars(query).all())

        return await self._read_of_run(run_id, read)

    async def list_stages(self, run_id: str) -> list[StageRecord]:
        """The run's stage records in execution order."""
        rows = await self._read_run_rows(
            run_id,
            select(WorkflowStage)
            .where(WorkflowStage.workflow_run_id == run_id)
            .order_by(WorkflowStage.execution_group, WorkflowStage.stage_number),
        )
        return [StageRecord.model_validate(r) for r in rows]

    async def list_logs(self, run_id: str) -> list[LogRecord]:
        """The run's log lines, oldest first."""
        rows = await self._read_run_rows(
            run_id,
            select(WorkflowLog)
            .where(WorkflowLog.workflow_run_id == run_id)
            .order_by(WorkflowLog.created_at, WorkflowLog.id),
        )
        return [log_record(r) for r in rows]

    async def list_outbox_events(self, run_id: str) -> list[OutboxEventRecord]:
        """The run's outbox events in sequence order; raises :class:`RunNotFoundError`."""
        rows = await self._read_run_rows(
            run_id,
            select(OutboxEvent)
            .where(OutboxEvent.workflow_run_id == run_id)
            .order_by(OutboxEvent.sequence),
        )
        return [OutboxEventRecord.model_validate(r) for r in rows]

    # -- legacy metadata ----------------------------------------------------------------------

    async def migrate_legacy_metadata(self, batch_size: int = 500) -> int:
        """Copy each run's deprecated ``metadata`` into stored ``legacy.metadata.*`` rows.

        Runs are read in batches of ``batch_size`` (by id); each run is migrated in its own
        transaction, so a run is never left with part of its set. Runs that already have a
        stored ``legacy.metadata.*`` row are skipped: re-running migrates nothing twice.

        Returns:
            How many runs were migrated by this call.

        Raises:
            ValueError: ``batch_size`` is below 1.
        """
        from engine.store import legacy

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        migrated = 0
        after: str | None = None
        while True:
            run_ids, after = await self._read(
                partial(legacy.runs_with_metadata, after=after, limit=batch_size)
            )
            for run_id in run_ids:
                if await self._write(partial(legacy.migrate_run, run_id=run_id)):
                    migrated += 1
            if after is None:
                return migrated
