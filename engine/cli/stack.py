"""Long-running pieces of ``wfe demo|dev|worker``: the local stack, the outbox relay, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import typer
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from engine.cli.devserver import DevServer
from engine.cli.errors import CliError, fail
from engine.cli.render import Echo, dump, masked_url
from engine.commands import OutboxFlush
from engine.core.presentation import format_time
from engine.core.records import OutboxEventRecord
from engine.core.search_attributes import ENGINE_SEARCH_ATTRIBUTE_TYPES
from engine.core.workflows import Workflow
from engine.runtime.kernel import Kernel
from engine.runtime.outbox import EventSink
from engine.runtime.recovery import recovery_loop
from engine.store import SqlStore
from engine.store.migrate import current_revision
from engine.worker import create_worker

__all__ = [
    "ConsoleSink",
    "LocalStack",
    "local_stack",
    "relay_outbox",
    "wait_for_shutdown",
]

log = logging.getLogger(__name__)

RELAY_INTERVAL = timedelta(seconds=1)
"""Pause between outbox flushes when the outbox is drained."""
RELAY_BATCH = 500


class ConsoleSink:
    """An event sink that prints each published outbox event (one line, or JSON lines)."""

    def __init__(self, *, json_lines: bool = False) -> None:
        self._json_lines = json_lines

    async def publish(self, event: OutboxEventRecord) -> None:
        """Print the event."""
        if self._json_lines:
            typer.echo(json.dumps(dump(event), ensure_ascii=False, default=str))
            return
        stage = event.payload.get("stage_id") or event.payload.get("key") or ""
        typer.echo(
            f"event  {format_time(event.occurred_at, date=False)}  run {event.workflow_run_id}  "
            f"#{event.sequence:<3} {event.event_type:<20} {stage}".rstrip()
        )


async def relay_outbox(kernel: Kernel, *, interval: timedelta = RELAY_INTERVAL) -> None:
    """Publish outbox events through the kernel's sink until cancelled."""
    while True:
        try:
            result = await kernel.dispatch(OutboxFlush(max_events=RELAY_BATCH))
        except Exception as exc:  # a database hiccup must not stop the worker: retry later
            log.warning("outbox relay: flush failed: %s", exc)
            result = None
        if result is None or result.published < RELAY_BATCH:
            await asyncio.sleep(interval.total_seconds())


async def wait_for_shutdown() -> None:
    """Return on Ctrl-C (SIGINT) or SIGTERM, for a clean shutdown instead of a traceback."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            continue
        installed.append(signum)
    try:
        await stop.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


@dataclass(frozen=True)
class LocalStack:
    """A dev server, a migrated side-store and a kernel with a running worker."""

    server: DevServer
    store: SqlStore
    kernel: Kernel
    revision: str | None
    """The side-store's schema revision."""


@asynccontextmanager
async def local_stack(
    *,
    database_url: str,
    namespace: str,
    task_queue: str,
    workflows: Iterable[Workflow],
    echo: Echo,
    port: int | None = None,
    ui_port: int | None = None,
    temporal_db: str | None = None,
    event_sink: EventSink | None = None,
) -> AsyncIterator[LocalStack]:
    """Start everything in this process; on exit stop the worker, the store and the server.

    Raises:
        CliError: the side-store cannot be reached or migrated.
        DevServerError: the dev server could not start (e.g. its port is taken).
    """
    workflows = list(workflows)
    # The engine's attributes, and those the workflows declare (all Keyword).
    attributes = dict(ENGINE_SEARCH_ATTRIBUTE_TYPES)
    for workflow in workflows:
        attributes.update(dict.fromkeys((workflow.search_attributes or {}).values(), "Keyword"))
    server = DevServer(
        port=port,
        ui_port=ui_port,
        db_filename=temporal_db,
        namespace=namespace,
        ui=True,
        search_attributes=attributes,
    )
    started = time.monotonic()
    echo(f"Starting the Temporal dev server on {server.address} (Web UI {server.ui_url}) ...")
    await server.start()
    try:
        echo(f"  ready in {time.monotonic() - started:.1f} s")
        store = SqlStore(database_url)
        try:
            try:
                await store.upgrade()
                revision = await current_revision(store.engine)
            except OSError as exc:
                raise CliError(
                    f"cannot reach database at {masked_url(database_url)}: {exc}"
                ) from exc
            echo(f"Side-store {masked_url(database_url)} at schema revision {revision}")
            client = await Client.connect(
                server.address, namespace=namespace, data_converter=pydantic_data_converter
            )
            kernel = Kernel(
                client=client,
                store=store,
                workflows=workflows,
                task_queue=task_queue,
                event_sink=event_sink,
            )
            async with create_worker(kernel):
                ids = ", ".join(kernel.workflows) or "(none)"
                echo(f"Worker polling task queue {task_queue!r} (workflows: {ids})")
                yield LocalStack(server=server, store=store, kernel=kernel, revision=revision)
        finally:
            await store.dispose()
    finally:
        await server.stop()
        echo("Stopped the Temporal dev server")


def local_port(address: str) -> int:
    """The port of a ``localhost:PORT`` / ``127.0.0.1:PORT`` address (``wfe dev`` binds it)."""
    host, _, port = address.rpartition(":")
    if host not in ("localhost", "127.0.0.1", "") or not port.isdigit():
        fail(
            "wfe dev starts a local server: --temporal-address must be localhost:PORT, "
            f"got {address!r}"
        )
    return int(port)


async def run_until_shutdown(
    kernel: Kernel, *, outbox_relay: bool, recovery_interval: timedelta | None = None
) -> None:
    """Relay the outbox (if asked) and recover orphaned runs until Ctrl-C or SIGTERM.

    Recovery runs every ``recovery_interval`` (``None``: not at all).
    """
    relay = asyncio.create_task(relay_outbox(kernel)) if outbox_relay else None
    recovery = (
        asyncio.create_task(recovery_loop(kernel, interval=recovery_interval))
        if recovery_interval is not None
        else None
    )
    try:
        await wait_for_shutdown()
    finally:
        if recovery is not None:
            recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovery
        if relay is not None:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
    if relay is not None:
        # One last pass, so that events of the final seconds are not left for the next start.
        try:
            await kernel.dispatch(OutboxFlush(max_events=RELAY_BATCH))
        except Exception as exc:
            log.warning("outbox relay: final flush failed: %s", exc)
