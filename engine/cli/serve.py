"""``wfe serve``: the HTTP API and the provenance viewer (registered as app.command("serve"))."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from engine.cli.connection import open_kernel, open_store
from engine.cli.errors import fail
from engine.cli.options import CommonOptions, execute, with_common
from engine.cli.workflow_loading import DEFAULT_WORKFLOWS, WorkflowsOption, load_workflows

if TYPE_CHECKING:
    from engine.runtime.kernel import Kernel
    from engine.store import SqlStore

__all__ = ["serve"]


async def _serve(
    options: CommonOptions,
    *,
    host: str,
    port: int,
    api_token: str | None,
    tokens_file: Path | None,
    public_read: bool,
    public_url: str | None,
    workflows_spec: str,
    store_only: bool,
) -> None:
    from engine.web.app import check_bind
    from engine.web.app import serve as serve_app
    from engine.web.auth import AccessPolicy, TokenConfigError, tokens_from_env

    try:
        tokens = tokens_from_env(tokens_file=tokens_file, legacy_token=api_token or "")
        access = AccessPolicy(tokens=tokens, public_read=public_read)
        check_bind(host, access)
    except (TokenConfigError, ValueError) as exc:
        fail(str(exc))

    def ready(url: str) -> None:
        where = (public_url or url).rstrip("/")
        options.echo(f"Viewer {where}/  ·  API docs {where}/docs")
        options.echo(f"Access: {access.describe()}")
        options.echo("Press Ctrl-C to stop")

    async def run(source: Kernel | SqlStore) -> None:
        await serve_app(
            source,
            options.settings,
            host=host,
            port=port,
            tokens=tokens,
            public_read=public_read,
            public_url=public_url,
            on_ready=ready,
        )

    try:
        if store_only:
            async with open_store(options) as store:
                await run(store)
            return
        # Links point at this server: --public-url (WFE_VIEWER_URL), else where it listens.
        async with open_kernel(options, load_workflows(workflows_spec), viewer_url=None) as kernel:
            await run(kernel)
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
            help="Interface to listen on; without tokens only 127.0.0.1 / ::1 "
            "(unless --public-read).",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option("--port", envvar="WFE_PORT", min=0, max=65535, help="TCP port (0: any free)."),
    ] = 8000,
    tokens_file: Annotated[
        Path | None,
        typer.Option(
            "--api-tokens-file",
            envvar="WFE_API_TOKENS_FILE",
            help="File of NAME:TOKEN[:RIGHTS] lines (RIGHTS: read, write, approve joined by "
            "+; default read+write). Adds to WFE_API_TOKENS.",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    api_token: Annotated[
        str | None,
        typer.Option(
            "--api-token",
            envvar="WFE_API_TOKEN",
            help="One more token, principal 'api' with read+write (older setting; prefer "
            "WFE_API_TOKENS: a token on the command line shows in the process list).",
            show_default=False,
        ),
    ] = None,
    public_read: Annotated[
        bool,
        typer.Option(
            "--public-read",
            help="Let anyone who reaches the server read runs, logs and annotations without a "
            "token (writes still need one).",
        ),
    ] = False,
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

    Security: tokens are named (WFE_API_TOKENS=alice:TOKEN:read+write+approve,ci:TOKEN2 or a
    file of such lines); each request sends "Authorization: Bearer TOKEN" (browsers: HTTP
    Basic, the token as password, reads only). With tokens configured every route, reads
    included, needs one (401 without, 403 without the right; /healthz excepted). Without any
    token the server listens on loopback only, answers reads to localhost and refuses writes;
    --public-read opens reads to everyone on purpose. Annotations written through the API are
    signed by the token's principal (a body "actor" is kept as on_behalf_of). Tokens are
    compared in constant time and never logged. Put a TLS proxy in front beyond one machine.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    execute(
        _serve(
            options,
            host=host,
            port=port,
            api_token=api_token or None,
            tokens_file=tokens_file,
            public_read=public_read,
            public_url=public_url,
            workflows_spec=workflows,
            store_only=store_only,
        )
    )
