"""The web app (HTTP API + viewer) and the functions that serve it with uvicorn.

``create_app(kernel)`` serves everything; ``create_app(store)`` serves the reads and
annotation writes of a side-store without a Temporal client (create, cancel and rerun then
answer 503). Who may call what is :mod:`engine.web.auth`: with tokens configured every route
(reads included, except ``/healthz``) needs one; without, reads are open to this machine only
and writes are refused, and :func:`serve` / :func:`start_server` refuse to listen beyond
loopback unless reads were made public on purpose (``public_read=True``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.core.settings import Settings
from engine.runtime.kernel import Kernel
from engine.store import SqlStore
from engine.web import api, approvals_api, inbox, views
from engine.web.auth import (
    API_TOKEN_ENV,
    API_TOKENS_ENV,
    API_TOKENS_FILE_ENV,
    AccessPolicy,
    AuthError,
    Right,
    TokenSet,
    is_loopback,
    require,
    tokens_from_env,
)
from engine.web.state import ApiError, build_state, validation_error

__all__ = [
    "RunningServer",
    "check_bind",
    "create_app",
    "serve",
    "start_server",
]


def create_app(
    source: Kernel | SqlStore,
    settings: Settings | None = None,
    *,
    api_token: str | None = None,
    tokens: TokenSet | None = None,
    public_read: bool = False,
) -> FastAPI:
    """The FastAPI app: JSON API under ``/api``, viewer pages at ``/`` and ``/runs/{id}``.

    Args:
        source: A kernel (everything, including create/cancel/rerun through
            ``kernel.dispatch``) or a bare side-store (reads and annotation writes).
        settings: Where the Temporal UI is (``temporal_ui_url``) and, for a bare store, the
            namespace of its links; defaults to the ``WFE_*`` environment.
        api_token: A single token, the principal ``api`` with read and write (the older
            ``WFE_API_TOKEN``); combined with ``tokens``.
        tokens: Named tokens and their principals' rights (:func:`~engine.web.auth.tokens_from_env`
            reads them from the environment). With none, reads need no token but are answered to
            requests addressed to localhost only, and writes answer 403.
        public_read: Reads need no token (and any ``Host`` is answered); writes still do.
    """
    configured = tokens or TokenSet()
    if api_token:
        configured = configured | tokens_from_env({}, legacy_token=api_token)
    access = AccessPolicy(tokens=configured, public_read=public_read)
    app = FastAPI(
        title="wfe provenance API",
        version="1",
        summary="Runs, stages, logs, outbox events and annotations of the workflow engine.",
        description=(
            "Every route needs `Authorization: Bearer <token>` once the server has tokens "
            f"(`{API_TOKENS_ENV}`, `{API_TOKENS_FILE_ENV}`): 401 without a valid one, 403 "
            "when the token's principal lacks the route's right (`read`, `write`, "
            "`approve`). A server without tokens answers reads from this machine only and "
            "refuses writes. Annotations written through the API carry the token's principal "
            "as their actor; an actor given in the body is kept as `on_behalf_of`. Errors "
            "answer with `{error, message, field, details}` naming the field at fault. The "
            "viewer pages (`/`, `/runs/{run_id}`) show the same data as HTML (HTTP Basic "
            "auth, any user name, the token as password)."
        ),
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.wfe = build_state(source, settings or Settings())
    app.state.wfe_access = access
    app.include_router(api.router)
    app.include_router(approvals_api.router)
    app.include_router(views.router)
    app.include_router(inbox.router)
    reader = [Depends(require(Right.READ))]

    @app.get("/openapi.json", include_in_schema=False, dependencies=reader)
    async def _openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=reader)
    async def _docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    @app.get("/healthz", include_in_schema=False)
    async def _healthz() -> dict[str, str]:
        """Liveness for load balancers and healthchecks: says nothing but ``ok``."""
        return {"status": "ok"}

    @app.exception_handler(AuthError)
    async def _refused(request: Request, exc: AuthError) -> Response:
        headers = {"WWW-Authenticate": exc.challenge} if exc.challenge else None
        field = "Authorization" if exc.status == 401 else None
        error = ApiError(exc.status, exc.error, exc.message, field=field, headers=headers)
        return _error_response(request, error)

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
    if request.url.path.startswith("/api/") or request.url.path in ("/api", "/openapi.json"):
        return JSONResponse(
            error.body.model_dump(exclude_none=True),
            status_code=error.status,
            headers=error.headers,
        )
    page = views.html_error(
        request.app.state.wfe, error.status, _TITLES.get(error.status, "Error"), error.body.message
    )
    page.headers.update(error.headers or {})
    return page


_TITLES = {404: "Not found", 422: "Bad request", 403: "Forbidden", 401: "Unauthorized"}


# -- serving ----------------------------------------------------------------------------------


def check_bind(host: str, access: AccessPolicy) -> None:
    """Refuse to listen beyond loopback while reads need no token, unless made public.

    Raises:
        ValueError: ``host`` is not a loopback address, no token is configured and reads
            were not made public on purpose.
    """
    if not access.tokens and not access.public_read and not is_loopback(host):
        raise ValueError(
            f"without an API token the server listens on 127.0.0.1 only, not {host!r}: "
            f"set {API_TOKENS_ENV} (or {API_TOKEN_ENV}) to serve other hosts, or pass "
            "--public-read to let anyone read"
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
        ValueError: a non-loopback ``host`` while reads need no token (see :func:`check_bind`).
        OSError: the address cannot be bound (e.g. the port is taken).
    """
    check_bind(host, app.state.wfe_access)
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
    try:
        yield RunningServer(url=_url(host, bound_port), port=bound_port)
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
    tokens: TokenSet | None = None,
    public_read: bool = False,
    public_url: str | None = None,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the API and viewer until Ctrl-C or SIGTERM (what ``wfe serve`` runs).

    Args:
        source: A kernel (everything) or a bare side-store (no create/cancel/rerun).
        settings: See :func:`create_app`.
        host: Interface to listen on; only loopback addresses without tokens (unless
            ``public_read``).
        port: TCP port (0: a free one).
        api_token: See :func:`create_app`.
        tokens: See :func:`create_app`.
        public_read: See :func:`create_app`.
        public_url: Base URL users reach the viewer at. A kernel without ``viewer_url``
            gets it (default ``http://{host}:{port}``), so the Temporal workflows of runs
            created through this server link back to their viewer page.
        log_level: uvicorn's log level (``"info"`` logs each request line: method, path and
            status, never headers, so never a token).
        on_ready: Called with the server's URL once it accepts connections.

    Raises:
        ValueError: a non-loopback ``host`` while reads need no token.
        OSError: the address cannot be bound (e.g. the port is taken).
    """
    app = create_app(source, settings, api_token=api_token, tokens=tokens, public_read=public_read)
    check_bind(host, app.state.wfe_access)
    sock = _bind(host, port)
    try:
        url = _url(host, sock.getsockname()[1])
        if isinstance(source, Kernel) and source.viewer_url is None:
            source.viewer_url = (public_url or url).rstrip("/")
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


def _url(host: str, port: int) -> str:
    shown_host = f"[{host}]" if ":" in host else host
    return f"http://{shown_host}:{port}"
