"""The web app (HTTP API + viewer) and the functions that serve it with uvicorn.

``create_app(kernel)`` serves everything; ``create_app(store)`` serves the reads and
annotation writes of a side-store without a Temporal client (create, cancel and rerun then
answer 503). Writes need ``Authorization: Bearer <token>``; without a token they answer 403,
and :func:`serve` / :func:`start_server` refuse to listen beyond the loopback interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.kernel import Kernel
from engine.settings import Settings
from engine.store import SqlStore
from engine.web import api, views
from engine.web.state import ApiError, build_state, validation_error

__all__ = [
    "API_TOKEN_ENV",
    "RunningServer",
    "api_token_from_env",
    "check_bind",
    "create_app",
    "serve",
    "start_server",
]

API_TOKEN_ENV = "WFE_API_TOKEN"
"""Environment variable holding the bearer token that write endpoints require."""


def api_token_from_env() -> str | None:
    """The API token from ``WFE_API_TOKEN`` (``None`` when unset or empty: writes disabled)."""
    return os.environ.get(API_TOKEN_ENV) or None


def create_app(
    source: Kernel | SqlStore,
    settings: Settings | None = None,
    *,
    api_token: str | None = None,
) -> FastAPI:
    """The FastAPI app: JSON API under ``/api``, viewer pages at ``/`` and ``/runs/{id}``.

    Args:
        source: A kernel (everything, including create/cancel/rerun through
            ``kernel.dispatch``) or a bare side-store (reads and annotation writes).
        settings: Where the Temporal UI is (``temporal_ui_url``) and, for a bare store, the
            namespace of its links; defaults to the ``WFE_*`` environment.
        api_token: Bearer token that write endpoints require; ``None`` disables them (403).
            Pass :func:`api_token_from_env` to read ``WFE_API_TOKEN``.
    """
    app = FastAPI(
        title="wfe provenance API",
        version="1",
        summary="Runs, stages, logs, outbox events and annotations of the workflow engine.",
        description=(
            "Reads are open. Writes (POST) need `Authorization: Bearer <WFE_API_TOKEN>`; a "
            "server without a token refuses them with 403. Errors answer with "
            "`{error, message, field, details}` naming the field at fault. The viewer pages "
            "(`/`, `/runs/{run_id}`) show the same data as HTML."
        ),
    )
    app.state.wfe = build_state(source, settings or Settings(), api_token)
    app.include_router(api.router)
    app.include_router(views.router)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return _error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return _error_response(request, validation_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        error = ApiError(exc.status_code, code, str(exc.detail), headers=exc.headers)
        return _error_response(request, error)

    return app


def _error_response(request: Request, error: ApiError) -> Response:
    """JSON for the API; an HTML page for the viewer."""
    if request.url.path.startswith("/api/") or request.url.path == "/api":
        return JSONResponse(
            error.body.model_dump(exclude_none=True),
            status_code=error.status,
            headers=error.headers,
        )
    return views.html_error(
        request.app.state.wfe, error.status, _TITLES.get(error.status, "Error"), error.body.message
    )


_TITLES = {404: "Not found", 422: "Bad request", 403: "Forbidden", 401: "Unauthorized"}


# -- serving ----------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_token: str | None) -> None:
    """Refuse to listen beyond loopback without a token (writes would be off, but so is auth).

    Raises:
        ValueError: ``host`` is not a loopback address and there is no API token.
    """
    if api_token is None and not _is_loopback(host):
        raise ValueError(
            f"without an API token the server listens on 127.0.0.1 only, not {host!r}: "
            f"set {API_TOKEN_ENV} to serve other hosts"
        )


@dataclass(frozen=True)
class RunningServer:
    """A server started by :func:`start_server`."""

    url: str
    """Base URL, e.g. ``http://127.0.0.1:8080`` (the viewer's run pages are ``{url}/runs/{id}``)."""
    port: int


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the program embedding it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listening now means clients queue in the backlog until uvicorn accepts: the URL
        # works as soon as this returns, with no wait for the server's startup.
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def start_server(
    app: FastAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    access_log: bool = False,
) -> AsyncIterator[RunningServer]:
    """Serve ``app`` from this event loop until the block exits (``port=0``: a free port).

    Meant for programs that run other things in the same loop (``wfe dev``, tests): the
    app's store connections belong to this loop. Signals are left to the caller.

    Raises:
        ValueError: a non-loopback ``host`` while the app has no API token.
        OSError: the address cannot be bound (e.g. the port is taken).
    """
    check_bind(host, app.state.wfe.api_token)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=log_level,
        access_log=access_log,
        lifespan="off",
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="wfe-web")
    shown_host = f"[{host}]" if ":" in host else host
    try:
        yield RunningServer(url=f"http://{shown_host}:{bound_port}", port=bound_port)
    finally:
        server.should_exit = True
        try:
            await task
        finally:
            sock.close()


async def serve(
    source: Kernel | SqlStore,
    settings: Settings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_token: str | None = None,
    public_url: str | None = None,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the API and viewer until Ctrl-C or SIGTERM (what ``wfe serve`` runs).

    Args:
        source: A kernel (everything) or a bare side-store (no create/cancel/rerun).
        settings: See :func:`create_app`.
        host: Interface to listen on; only loopback addresses without ``api_token``.
        port: TCP port (0: a free one).
        api_token: Bearer token for writes (``None``: writes answer 403).
        public_url: Base URL users reach the viewer at. A kernel without ``viewer_url``
            gets it (default ``http://{host}:{port}``), so the Temporal workflows of runs
            created through this server link back to their viewer page.
        log_level: uvicorn's log level (``"info"`` logs each request).
        on_ready: Called with the server's URL once it accepts connections.

    Raises:
        ValueError: a non-loopback ``host`` without ``api_token``.
        OSError: the address cannot be bound (e.g. the port is taken).
    """
    check_bind(host, api_token)
    sock = _bind(host, port)
    try:
        shown_host = f"[{host}]" if ":" in host else host
        url = f"http://{shown_host}:{sock.getsockname()[1]}"
        if isinstance(source, Kernel) and source.viewer_url is None:
            source.viewer_url = (public_url or url).rstrip("/")
        app = create_app(source, settings, api_token=api_token)
        config = uvicorn.Config(app, log_level=log_level, lifespan="off")
        server = _EmbeddedServer(config)
        # Ctrl-C / SIGTERM end the server gracefully and return; uvicorn's own handling
        # would re-raise the signal afterwards (a KeyboardInterrupt in the caller).
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, server.handle_exit, signum, None)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                continue
            installed.append(signum)
        try:
            if on_ready is not None:
                on_ready(url)
            await server.serve(sockets=[sock])
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
    finally:
        sock.close()
