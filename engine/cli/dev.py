"""``wfe demo``, ``wfe dev`` and ``wfe worker``: the long-running commands."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.connection import open_kernel
from engine.cli.errors import fail
from engine.cli.hints import try_command, writes_hint
from engine.cli.options import CommonOptions, execute, with_common
from engine.cli.progress import progress_echo
from engine.cli.render import Echo, emit_json, masked_url
from engine.cli.stack import ConsoleSink, local_port, local_stack, run_until_shutdown
from engine.cli.workflow_loading import DEFAULT_WORKFLOWS, WorkflowsOption, load_workflows
from engine.core.records import RunStatus
from engine.core.settings import VIEWER_PORT_OFFSET
from engine.runtime.recovery import RECOVERY_INTERVAL

__all__ = ["demo", "dev", "worker"]

TEMPORAL_DEV_DB = ".wfe/temporal.db"
"""Where ``wfe dev`` keeps the dev server's state, next to the side-store's default file."""

OutboxRelayOption = Annotated[
    bool,
    typer.Option(
        "--outbox-relay/--no-outbox-relay",
        help="Publish outbox events continuously (printed as they go).",
    ),
]


RecoveryIntervalOption = Annotated[
    float,
    typer.Option(
        "--recovery-interval",
        envvar="WFE_RECOVERY_INTERVAL",
        help="Seconds between passes that start runs left PENDING and restart RUNNING runs "
        "whose Temporal execution is gone; 0 turns it off.",
    ),
]


DEFAULT_RECOVERY_SECONDS = RECOVERY_INTERVAL.total_seconds()


def _recovery(seconds: float) -> timedelta | None:
    return timedelta(seconds=seconds) if seconds > 0 else None


def _configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _human_echo(options: CommonOptions) -> Echo:
    """Narration goes to stdout, unless stdout is reserved for JSON."""
    return progress_echo(options) if options.json else options.echo


# -- demo -------------------------------------------------------------------------------------


async def _demo(options: CommonOptions, timeout: float, keep_running: bool) -> int:
    from engine.core.settings import DEFAULT_DATABASE_URL
    from wfe_demo.triage import DEMO_DATABASE_URL, DemoResult, render_demo, run_demo

    echo = _human_echo(options)

    def show(result: DemoResult) -> None:
        if options.json:
            emit_json(result.to_json())
        else:
            options.echo(render_demo(result))

    echo("wfe demo: ticket triage on Temporal, with provenance in a SQL side-store")
    # Unless told otherwise, the demo's run stays apart from wfe dev's store: its Temporal
    # history lives only as long as the demo's own server.
    database_url = options.database_url
    if database_url == DEFAULT_DATABASE_URL:
        database_url = DEMO_DATABASE_URL
    result = await run_demo(
        database_url=database_url,
        namespace=options.namespace,
        task_queue=options.task_queue,
        timeout=timedelta(seconds=timeout),
        echo=echo,
        on_result=show,
        keep_running=keep_running,
    )
    echo(f"Demo finished in {result.elapsed_seconds:.1f} s (run time, server start excluded)")
    return 0 if result.rerun is not None and result.run.status is RunStatus.COMPLETED else 1


@with_common
def demo(
    options: CommonOptions,
    keep_running: Annotated[
        bool,
        typer.Option("--keep-running", help="Keep the server (and its Web UI) up until Ctrl-C."),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds each run may take.")
    ] = 120.0,
) -> None:
    """Run the ticket-triage demo end to end, all in this process.

    Starts a local Temporal dev server with its Web UI on free ports (--temporal-address is
    not used), upgrades the side-store (--database-url, default .wfe/demo.db: apart from wfe
    dev's .wfe/engine.db, as the demo's Temporal histories go with its server), runs a worker
    and a triage run, approves its human-review step from outside while it waits, reruns the
    last stage, prints the stages, the annotation timeline and the Temporal UI links, and stops
    the server again.
    """
    _configure_logging()
    code = execute(_demo(options, timeout, keep_running))
    if code:
        raise typer.Exit(code)


# -- dev --------------------------------------------------------------------------------------


async def _dev(
    options: CommonOptions,
    workflows_spec: str,
    in_memory: bool,
    outbox_relay: bool,
    recovery_interval: float,
    viewer_port: int | None = None,
) -> None:
    echo = _human_echo(options)
    workflows = load_workflows(workflows_spec)
    port = local_port(options.temporal_address)
    viewer_port = viewer_port or port + VIEWER_PORT_OFFSET
    temporal_db = None
    if not in_memory:
        Path(TEMPORAL_DEV_DB).parent.mkdir(parents=True, exist_ok=True)
        temporal_db = TEMPORAL_DEV_DB
    async with (
        local_stack(
            database_url=options.database_url,
            namespace=options.namespace,
            task_queue=options.task_queue,
            workflows=workflows,
            echo=echo,
            port=port,
            ui_port=port + 1000,
            temporal_db=temporal_db,
            event_sink=ConsoleSink(json_lines=options.json),
        ) as stack,
        contextlib.AsyncExitStack() as exits,
    ):
        # Imported here: the web stack is only needed by the commands that serve it.
        from engine.web import TokenConfigError, create_app, start_server, tokens_from_env

        settings = dataclasses.replace(options.settings, temporal_ui_url=stack.server.ui_url)
        try:
            tokens = tokens_from_env()
        except TokenConfigError as exc:
            fail(str(exc))
        app = create_app(stack.kernel, settings, tokens=tokens)
        try:
            # A fixed port (the Temporal port + 1001: 8234), so links saved yesterday work.
            viewer = await exits.enter_async_context(start_server(app, port=viewer_port))
        except OSError as exc:
            fail(
                f"cannot serve the viewer on 127.0.0.1:{viewer_port}: {exc.strerror or exc} "
                "(another wfe dev running? pass --viewer-port)"
            )
        # Temporal's run details link back here; WFE_VIEWER_URL names another address (e.g.
        # behind a proxy). `wfe run create` links the same place by default.
        stack.kernel.viewer_url = os.environ.get("WFE_VIEWER_URL") or viewer.url
        suggestion = try_command(stack.kernel.workflows.values())
        echo("")
        echo(f"Temporal      {stack.server.address}  (namespace {options.namespace})")
        echo(f"Temporal UI   {stack.server.ui_url}/namespaces/{options.namespace}/workflows")
        echo(f"Viewer        {viewer.url}  (HTTP API under {viewer.url}/api)")
        echo(f"Access        {app.state.wfe_access.describe()}")
        if not tokens:
            echo(f"HTTP writes   {writes_hint()}")
        echo(f"Side-store    {masked_url(options.database_url)}")
        echo(f"State         {temporal_db or 'in memory (lost on exit)'}")
        if suggestion:
            echo(f"Try           {suggestion}")
        echo("Ready; press Ctrl-C to stop")
        await run_until_shutdown(
            stack.kernel,
            outbox_relay=outbox_relay,
            recovery_interval=_recovery(recovery_interval),
        )
        echo("Shutting down ...")


@with_common
def dev(
    options: CommonOptions,
    in_memory: Annotated[
        bool,
        typer.Option(
            "--in-memory", help=f"Keep Temporal's state in memory, not {TEMPORAL_DEV_DB}."
        ),
    ] = False,
    outbox_relay: OutboxRelayOption = True,
    recovery_interval: RecoveryIntervalOption = DEFAULT_RECOVERY_SECONDS,
    workflows: WorkflowsOption = DEFAULT_WORKFLOWS,
    viewer_port: Annotated[
        int | None,
        typer.Option(
            "--viewer-port",
            min=1,
            max=65535,
            help="Port of the viewer and HTTP API.",
            show_default="the Temporal port + 1001 (8234)",
        ),
    ] = None,
) -> None:
    """Run a local dev server with its Web UI, the side-store and a worker, until Ctrl-C.

    The server listens on the port of --temporal-address (7233 by default), its Web UI on
    that port + 1000 (8233) and the viewer with the HTTP API on that port + 1001 (8234); the
    side-store is upgraded to the current schema first. The HTTP API is read-only unless
    WFE_API_TOKEN is set (then writes need it as a bearer token).
    """
    _configure_logging()
    execute(_dev(options, workflows, in_memory, outbox_relay, recovery_interval, viewer_port))


# -- worker -----------------------------------------------------------------------------------


async def _worker(
    options: CommonOptions, workflows_spec: str, outbox_relay: bool, recovery_interval: float
) -> None:
    from engine.worker import create_worker

    echo = _human_echo(options)
    workflows = load_workflows(workflows_spec)
    sink = ConsoleSink(json_lines=options.json)
    async with open_kernel(options, workflows, event_sink=sink) as kernel:
        async with create_worker(kernel):
            ids = ", ".join(kernel.workflows)
            echo(
                f"Worker polling task queue {options.task_queue!r} on "
                f"{options.temporal_address} (namespace {options.namespace}); workflows: {ids}"
            )
            echo(f"Side-store {masked_url(options.database_url)}; press Ctrl-C to stop")
            await run_until_shutdown(
                kernel, outbox_relay=outbox_relay, recovery_interval=_recovery(recovery_interval)
            )
            echo("Shutting down ...")


@with_common
def worker(
    options: CommonOptions,
    outbox_relay: OutboxRelayOption = True,
    recovery_interval: RecoveryIntervalOption = DEFAULT_RECOVERY_SECONDS,
    workflows: WorkflowsOption = DEFAULT_WORKFLOWS,
) -> None:
    """Run a worker against a running Temporal server, until Ctrl-C or SIGTERM."""
    _configure_logging()
    execute(_worker(options, workflows, outbox_relay, recovery_interval))
