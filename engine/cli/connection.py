"""Reaching what a ``wfe`` command works on: the side-store, the Temporal server, a kernel.

Each is checked to answer before the command uses it, so that a wrong URL or a server that is
down ends the command with one ``error:`` line that names it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode

from engine.cli.errors import database_error, fail, one_line
from engine.cli.options import CommonOptions
from engine.cli.render import masked_url
from engine.core.workflows import Workflow
from engine.runtime.kernel import Kernel
from engine.store import SqlStore
from engine.store.migrate import current_revision

__all__ = ["CONNECT_TIMEOUT", "connect_client", "open_kernel", "open_store"]

CONNECT_TIMEOUT = timedelta(seconds=10)
"""How long to wait for the Temporal server to answer before giving up."""


def _missing_sqlite_file(url: str) -> Path | None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


@asynccontextmanager
async def open_store(
    options: CommonOptions, *, require_schema: bool = True
) -> AsyncIterator[SqlStore]:
    """The side-store, checked to answer (and, with ``require_schema``, to be at head).

    Without ``require_schema`` (``wfe db ...``) a missing SQLite file is created.

    Raises:
        CliError: the URL is malformed, the database does not answer, or (with
            ``require_schema``) the SQLite file does not exist.
        SchemaOutOfDateError: with ``require_schema``, the schema is not at head.
    """
    url = options.database_url
    if require_schema and (path := _missing_sqlite_file(url)) is not None:
        fail(f"database file {path} does not exist: create it with `wfe db upgrade`")
    try:
        store = SqlStore(url)
    except (ArgumentError, ValueError) as exc:
        fail(f"bad --database-url {masked_url(url)!r}: {one_line(str(exc))}")
    except ImportError as exc:
        fail(f"no database driver for {masked_url(url)!r}: {exc}")
    try:
        try:
            if require_schema:
                await store.ensure_current()
            else:
                await current_revision(store.engine)
        except (OperationalError, InterfaceError, OSError) as exc:
            raise database_error(url, exc) from None
        yield store
    finally:
        await store.dispose()


def _rust_error_summary(error: BaseException) -> str:
    text = str(error)
    found = re.search(r'message: "([^"]+)"', text)
    if found:
        return found.group(1)
    return one_line(text)[:200]


async def connect_client(options: CommonOptions) -> Client:
    """A client of the Temporal server, checked to answer and to have the namespace.

    Raises:
        CliError: the server does not answer, or has no such namespace.
    """
    where = f"Temporal server at {options.temporal_address}"
    try:
        client = await asyncio.wait_for(
            Client.connect(
                options.temporal_address,
                namespace=options.namespace,
                data_converter=pydantic_data_converter,
            ),
            CONNECT_TIMEOUT.total_seconds(),
        )
    except TimeoutError:
        fail(f"cannot reach {where}: no answer within {CONNECT_TIMEOUT.total_seconds():g} s")
    except (RuntimeError, RPCError, ValueError) as exc:
        fail(f"cannot reach {where}: {_rust_error_summary(exc)}")
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=options.namespace)
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            fail(f"{where} has no namespace {options.namespace!r}")
        fail(f"{where}: {exc.message}")
    return client


@asynccontextmanager
async def open_kernel(
    options: CommonOptions, workflows: Iterable[Workflow] = (), **kernel_options: Any
) -> AsyncIterator[Kernel]:
    """A kernel on the side-store and a connected Temporal client."""
    async with open_store(options) as store:
        client = await connect_client(options)
        # Every run links to its viewer page, whoever starts it (WFE_VIEWER_URL).
        kernel_options.setdefault("viewer_url", options.settings.viewer_url or None)
        yield Kernel(
            client=client,
            store=store,
            workflows=workflows,
            task_queue=options.task_queue,
            **kernel_options,
        )
