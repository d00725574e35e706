"""``wfe serve``: the HTTP API and the provenance viewer (registered as app.command("serve"))."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from engine.cli.common import (
    DEFAULT_WORKFLOWS,
    CommonOptions,
    WorkflowsOption,
    execute,
    fail,
    load_workflows,
    open_kernel,
    open_store,
    with_common,
)

__all__ = ["serve"]


async def _serve(
    options: CommonOptions,
    *,
    host: str,
    port: int,
    api_token: str | None,
    public_url: str | None,
    workflows_spec: str,
    store_only: bool,
) -> None:
    from engine.web.app import check_bind
    from engine.web.app import serve as serve_app

    try:
        check_bind(host, api_token)
    except ValueError as exc:
        fail(str(exc))
    writes = "writes need the bearer token" if api_token else "writes disabled (no API token)"

    def ready(url: str) -> None:
        where = (public_url or url).rstrip("/")
        options.echo(f"Viewer {where}/  ·  API docs {where}/docs  ·  {writes}")
        options.echo("Press Ctrl-C to stop")

    try:
        if store_only:
            async with open_store(options) as store:
                await serve_app(
                    store,
                    options.settings,
                    host=host,
                    port=port,
                    api_token=api_token,
                    on_ready=ready,
                )
            return
        async with open_kernel(options, load_workflows(workflows_spec)) as kernel:
            await serve_app(
                kernel,
                options.settings,
                host=host,
                port=port,
                api_token=api_token,
                public_url=public_url,
                on_ready=ready,
            )
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


@with_common
def serve(
    options: CommonOptions,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            envvar="WFE_HOST",
            help="Interface to listen on; without an API token only 127.0.0.1 / ::1.",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option("--port", envvar="WFE_PORT", min=0, max=65535, help="TCP port (0: any free)."),
    ] = 8000,
    api_token: Annotated[
        str | None,
        typer.Option(
            "--api-token",
            envvar="WFE_API_TOKEN",
            help="Bearer token that write endpoints require; without one they answer 403.",
            show_default=False,
        ),
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option(
            "--public-url",
            envvar="WFE_VIEWER_URL",
            help="Base URL users reach the viewer at (linked from the Temporal UI).",
            show_default="http://HOST:PORT",
        ),
    ] = None,
    store_only: Annotated[
        bool,
        typer.Option(
            "--store-only",
            help="Serve the side-store without a Temporal server (no create/cancel/rerun).",
        ),
    ] = False,
    workflows: WorkflowsOption = DEFAULT_WORKFLOWS,
) -> None:
    """Serve the HTTP API (OpenAPI at /openapi.json, docs at /docs) and the web viewer.

    The viewer lists runs at / and shows a run's stage timeline and annotations at
    /runs/RUN_ID, each linking to the run's workflow in the Temporal UI (WFE_TEMPORAL_UI_URL).
    Reads are open; POST endpoints need "Authorization: Bearer <WFE_API_TOKEN>".
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    execute(
        _serve(
            options,
            host=host,
            port=port,
            api_token=api_token or None,
            public_url=public_url,
            workflows_spec=workflows,
            store_only=store_only,
        )
    )
