"""The hot statements, run through the driver as SQLAlchemy compiled them.

SQLAlchemy's work around each execution (an execution context, the parameters rebuilt from
the compiled form, a result object) costs more than SQLite's own work on the stage commit's
short statements, and a good part of PostgreSQL's on its long one-statement writes.
:func:`execute` compiles a statement once, with SQLAlchemy and the connection's dialect, and
then hands the driver the SQL and its parameters, converted by the same type processors
SQLAlchemy would use. The statement, its types and the transaction stay SQLAlchemy's; only
the per-call bookkeeping goes.

The run's hot path goes this way on both backends: ``RunCreate``'s inserts, the first stage's
start of the run, each sequential stage's commit (on PostgreSQL the one statement of
:mod:`engine.store.one_statement`; on SQLite the outcome's ``UPDATE``, the next stage's
record, its events), the run-status guard and ``get_run``. Measured on SQLite: 650 → 477 µs of
CPU per stage commit on one thread; over 200 concurrent runs of the 10-stage benchmark
pipeline, 18.9 → 14.7 ms of store-thread CPU and 68 → 60 ms of process CPU per run. On
PostgreSQL, the 10-annotation stage commit: 3,397 and 3,720 → 3,126 and 3,049 µs of CPU
(client and server, two interleaved pairs of ``bench.annotations`` quick runs), and in a
single run of the benchmark pipeline 2.60 → 2.23 ms of wall time per commit
(``bench/README.md``, session 12).

Only statements that need nothing from SQLAlchemy at execution go this way: no Python-side
column defaults to compute (every column with one is given), no expanding ``IN`` or literal
binds, on a synchronous driver (the store's threads); several rows of the same parameters go
through :func:`execute_many`, which returns nothing. Anything else runs through
``Connection.execute``. Listeners of ``before_cursor_execute`` still see each statement (the
benchmarks count them). Errors come out as SQLAlchemy's: a database's refusal as its
``DBAPIError`` subclass, and a value refused on its way to the database (a type processor's,
or psycopg's adaptation of it) as ``StatementError``, which
:func:`engine.store.refusals.unfixable` recognizes; a lost connection is invalidated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import Select

__all__ = ["execute", "execute_many"]

Processor = Callable[[Any], Any] | None

_DRIVERS = ("pysqlite", "psycopg")
"""The synchronous drivers the store's threads use, whose parameter styles this module binds."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement as the driver takes it: SQL text, where each parameter comes from."""

    statement: Any
    """Kept so the cache's ``id`` key cannot be reused by another statement."""
    sql: str
    binds: tuple[tuple[str, str, bool, Any, Processor], ...]
    """Per parameter, in the order of its ``?`` (SQLite) or by its ``%(key)s`` (psycopg): the
    driver's key, the parameter's name, whether the caller gives it, its fixed value, processor."""
    named: bool
    """The driver takes a mapping (psycopg's ``pyformat``), not a sequence (``qmark``)."""
    returned: tuple[Any, ...]
    """The types of the columns it returns."""
    results: dict[tuple[Any, ...], tuple[Processor, ...]] = field(default_factory=dict)
    """Their result processors, per the column type codes the driver reports: some need them
    (PostgreSQL's floats and numerics), as in SQLAlchemy's own result handling."""

    def typed(
        self, dialect: Any, rows: list[tuple[Any, ...]], codes: tuple[Any, ...]
    ) -> list[tuple[Any, ...]]:
        """``rows`` with their values converted as SQLAlchemy would for these column types."""
        processors = self.results.get(codes)
        if processors is None:
            processors = self.results[codes] = tuple(
                kind.dialect_impl(dialect).result_processor(dialect, code)
                for kind, code in zip(self.returned, codes, strict=True)
            )
        if not any(processors):
            return rows
        return [
            tuple(
                processor(value) if processor else value
                for processor, value in zip(processors, row, strict=True)
            )
            for row in rows
        ]


_cache: dict[tuple[int, str, frozenset[str]], _Compiled | None] = {}
"""Per statement, driver (one process may hold both backends) and parameter names."""
_MOST_SHAPES = 512
"""Compiled forms kept; the hot statements make a few dozen."""


def _returned_types(statement: Any) -> list[Any]:
    if isinstance(statement, Select):
        return [column.type for column in statement.selected_columns]
    if isinstance(statement, UpdateBase):
        return [column.type for column in statement.exported_columns]
    return []


def _compile(connection: Connection, statement: Any, keys: frozenset[str]) -> _Compiled | None:
    dialect = connection.dialect
    compiled = statement.compile(dialect=dialect, column_keys=sorted(keys))
    assert isinstance(compiled, SQLCompiler)
    named = compiled.positiontup is None
    if (
        compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.literal_execute_params
        or compiled.post_compile_params
    ):
        return None  # SQLAlchemy has work to do at execution: let it
    binds = []
    escaped: dict[str, str] = compiled.escaped_bind_names or {}
    for name in compiled.binds if named else compiled.positiontup or ():
        bind = compiled.binds[name]
        given = name in keys
        if not given and bind.required:
            return None  # a missing parameter: SQLAlchemy names it
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        fixed = None if given else bind.effective_value
        binds.append((escaped.get(name, name), name, given, fixed, processor))
    returned = tuple(_returned_types(statement))
    return _Compiled(statement, compiled.string, tuple(binds), named, returned)


def _compiled_for(
    connection: Connection, statement: Any, params: Mapping[str, Any]
) -> _Compiled | None:
    """The statement's driver form for these parameter names, or ``None``: not this way."""
    dialect = connection.dialect
    if dialect.is_async or dialect.driver not in _DRIVERS:  # the store's threads only
        return None
    key = (id(statement), dialect.driver, frozenset(params))
    try:
        return _cache[key]
    except KeyError:
        pass
    if len(_cache) >= _MOST_SHAPES:  # statements built per call: do not keep them all
        _cache.clear()
    compiled = _cache[key] = _compile(connection, statement, key[2])
    return compiled


def _values(compiled: _Compiled, params: Mapping[str, Any]) -> list[Any] | dict[str, Any]:
    """The driver's parameters: a mapping by key, or one per ``?`` in their order.

    A parameter the SQL uses twice is there twice in the second form.
    """
    values = []
    for _key, name, given, fixed, processor in compiled.binds:
        value = params[name] if given else fixed
        values.append(processor(value) if processor else value)
    if compiled.named:
        return dict(zip((bind[0] for bind in compiled.binds), values, strict=True))
    return values


def _run(
    connection: Connection,
    compiled: _Compiled,
    rows: Sequence[Mapping[str, Any]],
    *,
    many: bool,
) -> tuple[list[tuple[Any, ...]], tuple[Any, ...]]:
    """The driver call's rows and their columns' type codes, as SQLAlchemy would make it.

    Statement listeners see it. A value refused before it reaches the database is a
    ``StatementError``, a refusal of the database's a ``DBAPIError`` (``IntegrityError``,
    ``OperationalError``, ...): callers tell them apart. A lost connection is invalidated, so
    the pool does not hand it out again.
    """
    parameters: Any = rows
    raw = connection.connection.driver_connection
    dialect = connection.dialect
    try:
        values = [_values(compiled, row) for row in rows]
        parameters = values if many else values[0]
        if connection.dispatch.before_cursor_execute:
            for listener in connection.dispatch.before_cursor_execute:
                listener(connection, None, compiled.sql, parameters, None, many)
        assert raw is not None
        cursor = raw.cursor()
        try:
            if many:
                cursor.executemany(compiled.sql, values)
                return [], ()
            cursor.execute(compiled.sql, parameters)
            if not cursor.description:
                return [], ()
            return cursor.fetchall(), tuple(column[1] for column in cursor.description)
        finally:
            cursor.close()
    except Exception as error:
        lost = isinstance(error, dialect.loaded_dbapi.Error) and dialect.is_disconnect(
            error, raw, None
        )
        wrapped = DBAPIError.instance(
            compiled.sql,
            parameters,
            error,
            dialect.loaded_dbapi.Error,
            hide_parameters=connection.engine.hide_parameters,
            connection_invalidated=lost,
            dialect=dialect,
        )
        if lost:
            connection.invalidate(wrapped)
        raise wrapped from error


def execute(
    connection: Connection, statement: Any, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """Run ``statement`` with ``params`` in the connection's transaction; its rows, typed.

    ``statement`` must be built once and reused (a module-level or cached statement): compiled
    forms are kept per statement object.
    """
    compiled = _compiled_for(connection, statement, params)
    if compiled is None:
        result = connection.execute(statement, params)
        return [tuple(row) for row in result] if result.returns_rows else []
    rows, codes = _run(connection, compiled, [params], many=False)
    if not compiled.returned or not rows:
        return rows
    return compiled.typed(connection.dialect, rows, codes)


def execute_many(connection: Connection, statement: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run a statement that returns nothing once per row of ``rows`` (all with the same keys)."""
    if not rows:
        return
    compiled = _compiled_for(connection, statement, rows[0])
    if compiled is None:
        connection.execute(statement, list(rows))
        return
    _run(connection, compiled, rows, many=True)
