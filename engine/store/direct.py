"""The hot statements on SQLite, run through the driver as SQLAlchemy compiled them.

SQLAlchemy's work around each execution (an execution context, the parameters rebuilt from
the compiled form, a result object) costs more than SQLite's own work on the stage commit's
short statements. :func:`execute` compiles a statement once, with SQLAlchemy and the
connection's dialect, and then hands the driver the SQL and its parameters, converted by the
same type processors SQLAlchemy would use. The statement, its types and the transaction stay
SQLAlchemy's; only the per-call bookkeeping goes.

The run's hot path goes this way on SQLite: ``RunCreate``'s inserts, the first stage's start
of the run, each sequential stage's commit (the outcome's ``UPDATE``, the next stage's record,
its events), the run-status guard and ``get_run``. Measured: 650 → 477 µs of CPU per stage
commit on one thread; over 200 concurrent runs of the 10-stage benchmark pipeline, 18.9 →
14.7 ms of store-thread CPU and 68 → 60 ms of process CPU per run, interleaved in one
process (``bench/README.md``).

Only statements that need nothing from SQLAlchemy at execution go this way: no Python-side
column defaults to compute (every column with one is given), no expanding ``IN`` or literal
binds, on the synchronous driver (the store's threads); several rows of the same parameters
go through :func:`execute_many`, which returns nothing. Anything else, and every statement on
PostgreSQL (whose hot writes are one statement already, see
:mod:`engine.store.one_statement`), runs through ``Connection.execute``. Listeners of
``before_cursor_execute`` still see each statement (the benchmarks count them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import Select

__all__ = ["execute", "execute_many"]

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement as the driver takes it: SQL text, where each parameter comes from."""

    statement: Any
    """Kept so the cache's ``id`` key cannot be reused by another statement."""
    sql: str
    binds: tuple[tuple[str, bool, Any, Processor], ...]
    """Per ``?``: the parameter's name, whether the caller gives it, its fixed value, processor."""
    results: tuple[Processor, ...]


_cache: dict[tuple[int, frozenset[str]], _Compiled | None] = {}
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
    if (
        compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.positiontup is None
        or compiled.literal_execute_params
        or compiled.post_compile_params
    ):
        return None  # SQLAlchemy has work to do at execution: let it
    binds = []
    for name in compiled.positiontup:
        bind = compiled.binds[name]
        given = name in keys
        if not given and bind.required:
            return None  # a missing parameter: SQLAlchemy names it
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        binds.append((name, given, None if given else bind.effective_value, processor))
    results = tuple(
        kind.dialect_impl(dialect).result_processor(dialect, None)
        for kind in _returned_types(statement)
    )
    return _Compiled(statement, compiled.string, tuple(binds), results)


def _compiled_for(
    connection: Connection, statement: Any, params: Mapping[str, Any]
) -> _Compiled | None:
    """The statement's driver form for these parameter names, or ``None``: not this way."""
    if connection.dialect.driver != "pysqlite":  # the store's threads (not aiosqlite's)
        return None
    key = (id(statement), frozenset(params))
    try:
        return _cache[key]
    except KeyError:
        pass
    if len(_cache) >= _MOST_SHAPES:  # statements built per call: do not keep them all
        _cache.clear()
    compiled = _cache[key] = _compile(connection, statement, key[1])
    return compiled


def _values(compiled: _Compiled, params: Mapping[str, Any]) -> list[Any]:
    values = []
    for name, given, fixed, processor in compiled.binds:
        value = params[name] if given else fixed
        values.append(processor(value) if processor else value)
    return values


def _run(
    connection: Connection,
    compiled: _Compiled,
    rows: Sequence[Mapping[str, Any]],
    *,
    many: bool,
) -> list[tuple[Any, ...]]:
    """The driver call, seen by statement listeners, failing as SQLAlchemy would.

    A value a type processor refuses is a ``StatementError``, a refusal of the database's a
    ``DBAPIError`` (``IntegrityError``, ``OperationalError``, ...): callers tell them apart.
    """
    parameters: Any = rows
    try:
        values = [_values(compiled, row) for row in rows]
        parameters = values if many else values[0]
        if connection.dispatch.before_cursor_execute:
            for listener in connection.dispatch.before_cursor_execute:
                listener(connection, None, compiled.sql, parameters, None, many)
        raw = connection.connection.driver_connection
        assert raw is not None
        if many:
            raw.executemany(compiled.sql, values)
            return []
        result: list[tuple[Any, ...]] = raw.execute(compiled.sql, parameters).fetchall()
        return result
    except Exception as error:
        raise DBAPIError.instance(
            compiled.sql,
            parameters,
            error,
            connection.dialect.loaded_dbapi.Error,
            dialect=connection.dialect,
        ) from error


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
    rows = _run(connection, compiled, [params], many=False)
    if not compiled.results:
        return rows
    return [
        tuple(
            processor(value) if processor else value
            for processor, value in zip(compiled.results, row, strict=True)
        )
        for row in rows
    ]


def execute_many(connection: Connection, statement: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run a statement that returns nothing once per row of ``rows`` (all with the same keys)."""
    if not rows:
        return
    compiled = _compiled_for(connection, statement, rows[0])
    if compiled is None:
        connection.execute(statement, list(rows))
        return
    _run(connection, compiled, rows, many=True)
