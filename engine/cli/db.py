"""``wfe db upgrade|downgrade`` (side-store schema) and ``wfe outbox flush``."""

from __future__ import annotations

from typing import Annotated

import typer

from engine.cli.connection import open_store
from engine.cli.options import CommonOptions, execute, with_common
from engine.cli.progress import progress_echo
from engine.cli.render import emit_json, masked_url
from engine.commands import OutboxFlush
from engine.runtime.outbox import OutboxRelay
from engine.store.migrate import current_revision

__all__ = ["db_app", "outbox_app"]

db_app = typer.Typer(help="Migrate the side-store schema (Alembic).", no_args_is_help=True)
outbox_app = typer.Typer(help="Publish outbox events.", no_args_is_help=True)


async def _migrate(options: CommonOptions, direction: str, revision: str) -> None:
    where = masked_url(options.database_url)
    async with open_store(options, require_schema=False) as store:
        before = await current_revision(store.engine)
        progress_echo(options)(
            f"Migrating {where} from {before or '<empty>'} {direction} to {revision}"
        )
        if direction == "up":
            await store.upgrade(revision)
        else:
            await store.downgrade(revision)
        after = await current_revision(store.engine)
    if options.json:
        emit_json({"database_url": where, "previous_revision": before, "revision": after})
    else:
        options.echo(f"{where} is at revision {after or '<empty>'}")


@db_app.command("upgrade")
@with_common
def upgrade(
    options: CommonOptions,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Create or upgrade the side-store schema (a missing SQLite file is created)."""
    execute(_migrate(options, "up", revision))


@db_app.command("downgrade")
@with_common
def downgrade(
    options: CommonOptions,
    revision: Annotated[
        str, typer.Argument(help="Target revision; base drops every table.", show_default=False)
    ],
) -> None:
    """Revert the side-store schema to REVISION."""
    execute(_migrate(options, "down", revision))


async def _flush(options: CommonOptions, command: OutboxFlush) -> None:
    async with open_store(options) as store:
        published = await OutboxRelay(store, None).flush(command.max_events)
    if options.json:
        emit_json({"published": published})
    else:
        options.echo(f"Published {published} outbox event(s)")


@outbox_app.command("flush")
@with_common
def flush(
    options: CommonOptions,
    max_events: Annotated[int, typer.Option("--max-events", help="At most this many.")] = 100,
) -> None:
    """Mark up to --max-events unpublished events published, in per-run order.

    The CLI has no event sink: use it to drain the outbox when nothing consumes it. A worker
    (wfe worker) relays events continuously unless started with --no-outbox-relay.
    """
    execute(_flush(options, OutboxFlush(max_events=max_events)))
