"""Writes in one statement, on PostgreSQL: the common cases in one round trip.

The general writes (:func:`engine.store.stage_rows.commit_stage`, ``begin_stage``,
:func:`engine.store.runs.create_run`) are transactions of a few statements, each a round
trip, plus ``BEGIN`` and ``COMMIT``: five or six round trips. Every stage of a run waits for
its commit, and every run for its create and its first stage's begin, so on PostgreSQL those
round trips were most of the engine's cost over plain Temporal (``bench/``).

Most of these writes need nothing back from the database but whether they may go ahead:

- a stage commit: whether the outcome applies (a sequential stage that completes or fails,
  opening the next group or completing the run, with annotations that carry no idempotency
  key: their rows are all new); a completion's totals are read just before, from records
  that no longer change (:func:`_completion`);
- a run's first stage: whether the run is still PENDING (then it starts, with its first
  group's records, this stage RUNNING);
- a new run: whether its idempotency key is unclaimed (then the run, its annotations and
  events go in).

Every row they write is then known beforehand, so PostgreSQL can write them all in one
autocommitted statement: the deciding statement (the stage ``UPDATE`` with its run-status
guard under the run's row lock, the run's ``UPDATE`` from PENDING, the key's ``INSERT … ON
CONFLICT DO NOTHING``) as a ``WITH`` query returning its row, and every ``INSERT`` selecting
its rows ``FROM`` it, so that when it returns nothing, nothing is written. One statement is
one transaction: as atomic as the general write, in one round trip instead of five.

Anything else goes to the general write, in its own transaction: a write of another shape, one
whose deciding statement returned nothing (a duplicate, a ghost, a cancelled or started run, a
claimed key: the general write tells them apart), and one that hit a unique constraint. The
last happens when records it opens exist already, or when a concurrent writer of the run's
events (a cancel, an external attach) committed between this statement's snapshot and its
lock: the outbox numbers would collide. The statement then wrote nothing, and the general
write, which reads the sequence after taking the lock, does it right.

SQLite has no data-modifying ``WITH``; it runs the general writes, which cost it little (no
round trips: the database is in the process).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache, partial
from typing import Any

from sqlalchemy import Connection, Select, String, Table, bindparam, cast, select, union_all
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.expression import CTE
from sqlalchemy.types import TypeEngine

from engine.core.ids import new_id
from engine.core.payloads import CommitResult, StageCommit, StageSpec
from engine.core.records import RunStatus, StageOutcomeStatus, StageStartAction
from engine.store import direct
from engine.store.annotation_rows import draft_rows
from engine.store.chain import (
    chain_ctes,
    chain_params,
    link_row,
    outcome_link,
    run_link,
)
from engine.store.contract import NewRun, NewStage, RowContext, StageStart
from engine.store.models import (
    ANNOTATIONS,
    CHAIN_LINKS,
    IDEMPOTENCY_KEYS,
    LOGS,
    OUTBOX,
    RUNS,
    STAGES,
)
from engine.store.runs import (
    COMPLETION,
    COMPLETION_READ,
    annotation_events,
    run_completion,
    run_row,
    stage_rows,
)
from engine.store.sql import LAST_SEQUENCE, event_rows
from engine.store.stage_rows import (
    decisions,
    outcome_events,
    outcome_logs,
    outcome_update,
    stage_changes,
    started_event,
)

__all__ = [
    "ROWS_PER_TABLE",
    "begin_in_one_statement",
    "commit_gate",
    "commit_in_one_statement",
    "create_in_one_statement",
    "fits_one_statement",
]


Events = list[tuple[str, dict[str, Any]]]

ROWS_PER_TABLE = 32
"""Most rows one statement inserts into a table: more (a stage that writes hundreds of
annotations or log lines) take the general write, whose batched inserts have no such bound;
a statement's text grows with its rows, and PostgreSQL takes at most 65,535 parameters."""


# -- the mechanism: rows inserted FROM a gate ------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    """One table's part of a statement: how many rows, with which columns."""

    table: str
    prefix: str
    columns: tuple[str, ...]
    count: int


@dataclass
class _Writes:
    """The rows a statement inserts (bound by name) once its gate lets them through."""

    params: dict[str, Any] = field(default_factory=dict)
    inserts: list[_Rows] = field(default_factory=list)
    fits: bool = True
    """False once a table got more rows than one statement takes (:data:`ROWS_PER_TABLE`)."""

    def add(self, table: Table, prefix: str, rows: list[dict[str, Any]]) -> None:
        if len(rows) > ROWS_PER_TABLE:
            self.fits = False
        if not rows or not self.fits:
            return
        for number, row in enumerate(rows):
            self.params.update({f"{prefix}{number}_{name}": value for name, value in row.items()})
        self.inserts.append(_Rows(table.name, prefix, tuple(rows[0]), len(rows)))

    def add_events(self, run_id: str, events: Events, *, causation_id: str, now: datetime) -> None:
        """Outbox rows numbered after the run's last sequence."""
        rows = event_rows(run_id, events, causation_id=causation_id, now=now)
        self.params["run_id"] = run_id
        self.add(OUTBOX, "e", rows)

    def run(self, connection: Connection, statement: Callable[[], Select[Any]]) -> str | None:
        """The gate's id if it let the rows through, else ``None``.

        ``None`` also if a row hit a unique constraint (the statement then wrote nothing), or if the
        rows did not fit.
        """
        if not self.fits:
            return None
        try:
            rows = direct.execute(connection, statement(), self.params)
        except IntegrityError:
            return None
        return str(rows[0][0]) if rows else None


def _gated(gate: CTE, inserts: tuple[_Rows, ...]) -> Select[Any]:
    """``WITH gate AS (…), … SELECT gate.id``: each insert selects its rows ``FROM gate``.

    So they are written only if the gate's statement returned its row.
    """
    return select(gate.c.id).add_cte(*(_insert(rows, gate) for rows in inserts))


def _insert(rows: _Rows, gate: CTE) -> CTE:
    """``INSERT`` of bound rows, each selected ``FROM gate``.

    Outbox rows are numbered after the run's last sequence, in order.
    """
    table = _TABLES[rows.table]
    numbered = table is OUTBOX
    selects = []
    for number in range(rows.count):
        # Cast: PostgreSQL types a UNION's column from its first row, and a NULL there says
        # nothing (text), which a later row's boolean or number would then contradict.
        values: list[Any] = [
            cast(
                bindparam(f"{rows.prefix}{number}_{name}", type_=table.c[name].type),
                _unbounded(table.c[name].type),
            ).label(name)
            for name in rows.columns
        ]
        if numbered:
            values.append((LAST_SEQUENCE + (number + 1)).label("sequence"))
        selects.append(select(*values).select_from(gate))
    source = selects[0] if rows.count == 1 else union_all(*selects)
    columns = [*rows.columns, "sequence"] if numbered else list(rows.columns)
    return (
        table.insert()
        .from_select(columns, source, include_defaults=False)
        .cte(f"{rows.prefix}_rows")
    )


def _unbounded(kind: TypeEngine[Any]) -> TypeEngine[Any]:
    """The type to cast a value to on its way into a column of type ``kind``.

    A string column's without its length: an explicit cast to ``VARCHAR(8)`` cuts a longer
    value to 8 characters without a word, where storing it in the column refuses it, as the
    general write's does (a value cut short would also no longer match its chain link).
    """
    return String() if isinstance(kind, String) and kind.length is not None else kind


_TABLES: dict[str, Table] = {
    t.name: t for t in (RUNS, STAGES, ANNOTATIONS, LOGS, OUTBOX, CHAIN_LINKS)
}


# -- the stage commit ---------------------------------------------------------------------------


def fits_one_statement(commit: StageCommit) -> bool:
    """Whether every row ``commit`` writes is known before it runs (see the module doc)."""
    outcome = commit.outcome
    return (
        outcome.status in (StageOutcomeStatus.COMPLETED, StageOutcomeStatus.FAILED)
        and outcome.stage_record_id is not None
        and commit.group_size == 1
        and not commit.after_suspend
        and not outcome.ai_calls
        and all(draft.idempotency_key is None for draft in outcome.annotations)
    )


def commit_in_one_statement(connection: Connection, commit: StageCommit) -> CommitResult | None:
    """Apply ``commit`` in one statement on an autocommit ``connection``.

    ``None`` when it did not fit, did not apply, or collided, and wrote nothing: run the general
    commit then.
    """
    if not fits_one_statement(commit):
        return None
    outcome, spec, now = commit.outcome, commit.stage, commit.now
    record_id = outcome.stage_record_id
    assert record_id is not None  # fits_one_statement() checked it
    changes = stage_changes(commit)
    writes = _Writes({f"v_{name}": value for name, value in changes.items()})
    writes.params.update(
        w_run_id=commit.run_id,
        w_stage_id=spec.stage_id,
        w_attempt=commit.attempt,
        w_record_id=record_id,
    )
    where = RowContext(
        commit.run_id, "stage", spec.stage_id, stage_record_id=record_id, attempt=commit.attempt
    )
    annotations = draft_rows(outcome.annotations, where, now)
    emitting = {
        row["id"]
        for draft, row in zip(outcome.annotations, annotations, strict=True)
        if draft.emit_event
    }
    opening = commit.open_next if outcome.status == StageOutcomeStatus.COMPLETED else []
    stages = stage_rows(
        commit.run_id, [NewStage.of(s) for s in opening], commit.attempt, now, running=True
    )
    events = outcome_events(commit, outcome.duration_ms)
    events.extend(annotation_events(annotations, emitting))
    events.extend(started_event(s) for s in opening)
    writes.add(STAGES, "s", stages)
    writes.add(ANNOTATIONS, "a", annotations)
    writes.add(LOGS, "l", outcome_logs(commit, record_id))
    if not writes.fits:
        return None  # before the completion's read, which would then be for nothing
    completes = outcome.status == StageOutcomeStatus.COMPLETED and commit.completes_run
    if completes:
        completion = _completion(connection, commit, record_id, changes)
        if completion is None:
            return None  # the run is gone: the general commit says so
        run_values, completed = completion
        writes.params.update(run_values)
        events.append(completed)
    writes.add_events(commit.run_id, events, causation_id=commit.commit_id, now=now)
    outcome_record = outcome_link(record_id, spec.stage_id, commit.attempt, changes)
    writes.params.update(chain_params([outcome_record], annotations))
    statement = partial(_commit_statement, tuple(changes), tuple(writes.inserts), completes)
    if writes.run(connection, statement) is None:
        return None
    return CommitResult(
        committed=True,
        decisions=decisions(annotations, commit.report_keys),
        opened={str(row["stage_id"]): str(row["id"]) for row in stages},
        completed_run=completes,
    )


def _completion(
    connection: Connection, commit: StageCommit, record_id: str, changes: dict[str, Any]
) -> tuple[dict[str, Any], tuple[str, dict[str, Any]]] | None:
    """The run's completion by this commit: its columns and ``workflow:completed`` event.

    Read before the statement, with this stage's new metrics put in, and computed as the
    general commit computes it after its stage's ``UPDATE`` (:func:`run_completion`). What it
    reads cannot change in between while the statement applies: the run began long before,
    and its other stages settled before this one (it is the last group's only stage); a
    rerun or a cancel meanwhile makes the statement's gate refuse, and nothing is written.
    With one round trip more, the last stage's commit is one statement too. As the general
    commit it took 6.5 ms, against 2.8 for the stages before it; now 4.2 against 3.3, at a
    slower moment of the same VM (PostgreSQL, the benchmark pipeline's single runs, medians
    of 40 runs timed in the worker; ``bench/README.md``, session 13).
    """
    found = direct.execute(connection, COMPLETION_READ, {"run_id": commit.run_id})
    if not found:
        return None
    new_metrics = changes.get("metrics")
    stages = [row if row[2] != record_id else (*row[:3], new_metrics) for row in found]
    return run_completion(stages, commit.outcome.output, commit.now)


def commit_gate(changes: tuple[str, ...]) -> CTE:
    """The stage commit's gate: the record's ``UPDATE`` setting ``changes``, with its guard."""
    return (
        outcome_update(changes, suspended=False)
        .where(STAGES.c.id == bindparam("w_record_id"))
        .cte("applied")
    )


@lru_cache(maxsize=256)
def _commit_statement(
    changes: tuple[str, ...], inserts: tuple[_Rows, ...], completes: bool
) -> Select[Any]:
    """Built once per shape: building a statement costs more than running it."""
    gate = commit_gate(changes)
    # The run's completion, if this commit completes it, goes in the chain's UPDATE of the run
    # row: the only one a statement may make.
    completion = COMPLETION if completes else None
    # The outcome's and annotations' chain link, hashed in the statement after the head
    # it finds under the run's lock (engine.store.chain).
    return _gated(gate, inserts).add_cte(*chain_ctes(gate, bindparam("w_run_id"), completion))


# -- the first stage of a run: start the run, open its first group ----------------------------


def begin_in_one_statement(
    connection: Connection,
    run_id: str,
    spec: StageSpec,
    attempt: int,
    now: datetime,
    first_group: Sequence[NewStage],
) -> StageStart | None:
    """Start a PENDING run with its first group and this stage RUNNING, in one statement.

    As the general :func:`~engine.store.stage_rows.begin_stage` does; ``None`` if the run was not
    PENDING, or a record existed: nothing written, run the general one.
    """
    if spec.stage_id not in {stage.stage_id for stage in first_group}:
        return None
    stages = stage_rows(run_id, first_group, attempt, now, running={spec.stage_id})
    writes = _Writes({"g_run_id": run_id, "g_now": now})
    writes.add(STAGES, "s", stages)
    events: Events = [("workflow:started", {}), started_event(spec)]
    writes.add_events(run_id, events, causation_id=run_id, now=now)
    if writes.run(connection, partial(_begin_statement, tuple(writes.inserts))) is None:
        return None
    record_id = next(str(row["id"]) for row in stages if row["stage_id"] == spec.stage_id)
    return StageStart(StageStartAction.RUN, record_id, RunStatus.RUNNING)


@lru_cache(maxsize=64)
def _begin_statement(inserts: tuple[_Rows, ...]) -> Select[Any]:
    gate = (
        RUNS.update()
        .where(RUNS.c.id == bindparam("g_run_id"), RUNS.c.status == RunStatus.PENDING)
        .values(
            status=RunStatus.RUNNING, started_at=bindparam("g_now"), updated_at=bindparam("g_now")
        )
        .returning(RUNS.c.id)
        .cte("started")
    )
    return _gated(gate, inserts)


# -- a new run ----------------------------------------------------------------------------------


def create_in_one_statement(
    connection: Connection, new: NewRun, now: datetime, temporal_workflow_id: str | None
) -> str | None:
    """Claim the idempotency key and insert the PENDING run, its annotations and events.

    As the general :func:`~engine.store.runs.create_run` does; the new run's id, or ``None`` if
    the key was claimed before, or an annotation carries a key of its own: nothing written, run
    the general one.
    """
    if any(d.idempotency_key is not None for drafts, _ in new.annotations for d in drafts):
        return None
    run_id = new_id()
    writes = _Writes(
        {
            "k_id": new_id(),
            "k_created_at": now,
            "k_key": new.idempotency_key,
            "k_command_type": "run.create",
            "k_result": {"workflow_run_id": run_id},
        }
    )
    row = run_row(new, run_id, now, temporal_workflow_id)
    links = [run_link(row)]
    annotations: list[dict[str, Any]] = []
    events: Events = [("workflow:created", {"workflow_id": new.workflow_id})]
    for drafts, _ in new.annotations:
        rows = draft_rows(drafts, RowContext(run_id, "run"), now)
        emitting = {row["id"] for draft, row in zip(drafts, rows, strict=True) if draft.emit_event}
        annotations.extend(rows)
        events.extend(annotation_events(rows, emitting))
    # A new run's chain starts here: its one link is known, hashed in Python.
    chain, row["chain_head"] = link_row(run_id, None, 0, links, annotations)
    row["chain_length"] = 1
    writes.add(RUNS, "r", [row])
    writes.add(ANNOTATIONS, "a", annotations)
    writes.add(CHAIN_LINKS, "c", [chain])
    writes.add_events(run_id, events, causation_id=new.idempotency_key, now=now)
    if writes.run(connection, partial(_create_statement, tuple(writes.inserts))) is None:
        return None
    return run_id


@lru_cache(maxsize=64)
def _create_statement(inserts: tuple[_Rows, ...]) -> Select[Any]:
    gate = (
        postgresql.insert(IDEMPOTENCY_KEYS)
        .values(
            {
                name: bindparam(f"k_{name}", type_=IDEMPOTENCY_KEYS.c[name].type)
                for name in ("id", "created_at", "key", "command_type", "result")
            }
        )
        .on_conflict_do_nothing()
        .returning(IDEMPOTENCY_KEYS.c.id)
        .cte("claimed")
    )
    return _gated(gate, inserts)
