"""``wfe annotations list|attach|migrate-legacy``: provenance straight from the side-store."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from engine.cli.connection import open_store
from engine.cli.errors import fail
from engine.cli.options import CommonOptions, execute, with_common
from engine.cli.parsing import check_range, parse_attributes, parse_json, parse_time
from engine.cli.progress import progress_echo
from engine.cli.render import annotation_table, emit_json
from engine.cli.runs import actor_of
from engine.core.annotations import AnnotationLimits
from engine.core.records import Annotation
from engine.runtime.kernel_annotations import MAX_ATTEMPT, KernelAnnotations
from engine.store.annotation_rows import MAX_QUERY_LIMIT

__all__ = ["app"]

app = typer.Typer(
    help="List and attach provenance annotations (no Temporal server needed).",
    no_args_is_help=True,
)

MAX_BATCH = 10_000
"""Most runs ``migrate-legacy`` copies in one transaction."""

RunId = Annotated[str, typer.Argument(help="The run id (workflow_run_id).", show_default=False)]


def _print(options: CommonOptions, rows: list[Annotation]) -> None:
    if options.json:
        emit_json(rows)
    else:
        options.echo(annotation_table(rows))


# -- list -------------------------------------------------------------------------------------


async def _list(options: CommonOptions, run_id: str, filters: dict[str, Any]) -> None:
    async with open_store(options) as store:
        rows = await KernelAnnotations(store, AnnotationLimits()).list(run_id, **filters)
    _print(options, rows)


@app.command("list")
@with_common
def list_(
    options: CommonOptions,
    run_id: RunId,
    key: Annotated[str | None, typer.Option("--key", help="Exact key.")] = None,
    key_prefix: Annotated[
        str | None,
        typer.Option("--key-prefix", help="Literal, case-sensitive key prefix, e.g. decision."),
    ] = None,
    scope: Annotated[str | None, typer.Option("--scope", help="run, stage, ...")] = None,
    scope_id: Annotated[
        str | None, typer.Option("--scope-id", help="E.g. the stage id for --scope stage.")
    ] = None,
    actor_id: Annotated[str | None, typer.Option("--actor-id")] = None,
    actor_kind: Annotated[str | None, typer.Option("--actor-kind")] = None,
    attempt: Annotated[
        int | None, typer.Option("--attempt", help="Rerun generation (0 = first).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="ISO time, inclusive (UTC if no zone).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="ISO time, inclusive (UTC if no zone).")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", help=f"At most this many rows (1 to {MAX_QUERY_LIMIT}).")
    ] = MAX_QUERY_LIMIT,
) -> None:
    """List a run's annotations, oldest first; filters combine (AND)."""
    check_range(limit, "--limit", 1, MAX_QUERY_LIMIT)
    check_range(attempt, "--attempt", 0, MAX_ATTEMPT)
    filters = {
        "key": key,
        "key_prefix": key_prefix,
        "scope": scope,
        "scope_id": scope_id,
        "actor_id": actor_id,
        "actor_kind": actor_kind,
        "attempt": attempt,
        "since": parse_time(since, "--since"),
        "until": parse_time(until, "--until"),
        "limit": limit,
    }
    execute(_list(options, run_id, filters))


# -- attach -----------------------------------------------------------------------------------


async def _attach(options: CommonOptions, run_id: str, arguments: dict[str, Any]) -> None:
    async with open_store(options) as store:
        rows = await KernelAnnotations(store, AnnotationLimits()).attach(run_id, **arguments)
    if options.json:
        emit_json(rows)
        return
    count = len(arguments["attributes"])
    if len(rows) < count:
        skipped = count - len(rows)
        progress_echo(options)(f"{skipped} attribute(s) already attached with this idempotency key")
    _print(options, rows)


@app.command("attach")
@with_common
def attach(
    options: CommonOptions,
    run_id: RunId,
    attributes: Annotated[
        list[str],
        typer.Argument(
            help="key=value pairs; a value is JSON when it parses as JSON, else a string.",
            show_default=False,
        ),
    ],
    actor_kind: Annotated[str | None, typer.Option("--actor-kind", help="E.g. user.")] = None,
    actor_id: Annotated[str | None, typer.Option("--actor-id", help="E.g. an email.")] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="A repeat with the same key stores nothing new."),
    ] = None,
    scope: Annotated[str, typer.Option("--scope", help="run, stage, ...")] = "run",
    scope_id: Annotated[str | None, typer.Option("--scope-id", help="E.g. a stage id.")] = None,
    payload: Annotated[
        str | None, typer.Option("--payload", help="JSON payload shared by the attributes.")
    ] = None,
    emit_event: Annotated[
        bool, typer.Option("--emit-event", help="Write an annotation:created event per row.")
    ] = False,
) -> None:
    """Attach annotations to a run of any status, all in one transaction (prints new rows)."""
    arguments = {
        "attributes": parse_attributes(attributes, "attribute"),
        "actor": actor_of(actor_kind, actor_id),
        "scope": scope,
        "scope_id": scope_id,
        "payload": parse_json(payload, "--payload") if payload is not None else None,
        "idempotency_key": idempotency_key,
        "emit_event": emit_event,
    }
    if not arguments["attributes"]:
        fail("give at least one key=value attribute")
    execute(_attach(options, run_id, arguments))


# -- migrate-legacy ---------------------------------------------------------------------------


async def _migrate_legacy(options: CommonOptions, batch_size: int) -> None:
    echo = progress_echo(options)
    async with open_store(options) as store:
        echo(f"Copying legacy run metadata into annotations, {batch_size} runs per batch ...")
        started = time.monotonic()
        migrated = await store.migrate_legacy_metadata(batch_size=batch_size)
    elapsed = time.monotonic() - started
    if options.json:
        emit_json({"migrated": migrated})
    else:
        options.echo(f"Migrated {migrated} run(s) in {elapsed:.1f} s")


@app.command("migrate-legacy")
@with_common
def migrate_legacy(
    options: CommonOptions,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help=f"Runs per transaction (1 to {MAX_BATCH}).")
    ] = 500,
) -> None:
    """Turn deprecated run metadata into stored legacy.metadata.* annotations."""
    check_range(batch_size, "--batch-size", 1, MAX_BATCH)
    execute(_migrate_legacy(options, batch_size))
