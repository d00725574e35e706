"""What every ``wfe`` command shares: the common options, error handling, store and kernel.

Every command takes ``--temporal-address``, ``--namespace``, ``--task-queue``, ``--database-url``
(or their ``WFE_*`` environment variables, else :class:`~engine.core.settings.Settings`
defaults) and ``--json``; :func:`with_common` adds them to a command and hands it a
:class:`CommonOptions`.

Errors a user can fix (unknown run, bad JSON, an :class:`~engine.errors.EngineError`, a pydantic
``ValidationError``, a server or database that does not answer) end the command with exit code 2
and one ``error: ...`` line on stderr, never a traceback: see :func:`reported_errors`.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Concatenate, NoReturn, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode

from engine.cli.devserver import DevServerError
from engine.cli.render import Echo, masked_url, stage_line
from engine.core.records import RunRecord
from engine.core.settings import Settings
from engine.core.workflows import Workflow
from engine.errors import EngineError
from engine.runtime.kernel import Kernel
from engine.store import SqlStore
from engine.store.migrate import current_revision

__all__ = [
    "DEFAULT_WORKFLOWS",
    "CliError",
    "CommonOptions",
    "check_range",
    "WorkflowsOption",
    "connect_client",
    "execute",
    "fail",
    "load_workflows",
    "open_kernel",
    "open_store",
    "parse_attributes",
    "parse_json",
    "parse_time",
    "progress_echo",
    "registry",
    "reported_errors",
    "wait_with_progress",
    "with_common",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

DEFAULT_WORKFLOWS = "wfe_demo:WORKFLOWS"
"""The workflows ``run create``, ``worker`` and ``dev`` register unless told otherwise."""

CONNECT_TIMEOUT = timedelta(seconds=10)
"""How long to wait for the Temporal server to answer before giving up."""

EXIT_BAD_INPUT = 2
"""Exit code for errors the user can fix (the same code click uses for usage errors)."""


class CliError(Exception):
    """An error reported as one ``error: ...`` line and an exit code, without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def fail(message: str, exit_code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Stop the command with ``message`` on stderr."""
    raise CliError(message, exit_code)


# -- the common options -----------------------------------------------------------------------


@dataclass(frozen=True)
class CommonOptions:
    """The options every command takes, with defaults filled in."""

    temporal_address: str
    namespace: str
    task_queue: str
    database_url: str
    json: bool
    """Print machine-readable JSON instead of tables."""
    settings: Settings
    """The environment's settings (e.g. ``temporal_ui_url`` for links)."""

    def echo(self, line: str = "") -> None:
        """Print a line of human output (stdout)."""
        typer.echo(line)


def _connection_option(name: str, envvar: str, help: str, default: str) -> inspect.Parameter:
    """A keyword-only ``--<name>`` option read from ``envvar`` when absent."""
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(
                f"--{name.replace('_', '-')}",
                envvar=envvar,
                help=help,
                show_default=default,
                rich_help_panel="Connection",
            ),
        ],
    )


_COMMON_PARAMETERS = [
    _connection_option(
        "temporal_address",
        "WFE_TEMPORAL_ADDRESS",
        "host:port of the Temporal frontend.",
        "localhost:7233",
    ),
    _connection_option("namespace", "WFE_NAMESPACE", "Temporal namespace.", "default"),
    _connection_option(
        "task_queue", "WFE_TASK_QUEUE", "Task queue of the engine's worker.", "workflow-engine"
    ),
    _connection_option(
        "database_url",
        "WFE_DATABASE_URL",
        "SQLAlchemy URL of the side-store.",
        "sqlite+aiosqlite:///.wfe/engine.db",
    ),
    inspect.Parameter(
        "json_output",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[
            bool,
            typer.Option("--json", help="Print JSON (records with their field names)."),
        ],
    ),
]


def with_common(fn: Callable[Concatenate[CommonOptions, P], R]) -> Callable[P, R]:
    """Give a command the common options; it receives them as its first argument.

    The options are appended to the command's signature, which is what Typer reads, so they
    are accepted after the subcommand like its own options (``wfe run show ID --json``). The
    command runs under :func:`reported_errors`.
    """
    signature = inspect.signature(fn, eval_str=True)
    own = list(signature.parameters.values())[1:]

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        settings = Settings()

        def pick(name: str, default: str) -> str:
            value = kwargs.pop(name, None)
            return value if isinstance(value, str) and value else default

        address = pick("temporal_address", settings.temporal_address)
        namespace = pick("namespace", settings.namespace)
        # Derived links (Temporal UI, viewer) follow --temporal-address, not just the variable.
        settings = Settings(temporal_address=address, namespace=namespace)
        options = CommonOptions(
            temporal_address=address,
            namespace=namespace,
            task_queue=pick("task_queue", settings.task_queue),
            database_url=pick("database_url", settings.database_url),
            json=bool(kwargs.pop("json_output", False)),
            settings=settings,
        )
        with reported_errors(options):
            return fn(options, *args, **kwargs)

    parameters = own + _COMMON_PARAMETERS
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    wrapper.__annotations__["return"] = signature.return_annotation
    return wrapper


WorkflowsOption = Annotated[
    str,
    typer.Option(
        "--workflows",
        envvar="WFE_WORKFLOWS",
        help="module:attribute of a Workflow, a list of them, or a function returning either.",
    ),
]


# -- running a command ------------------------------------------------------------------------


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _describe_validation(error: ValidationError) -> str:
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(root)"
        parts.append(f"{where}: {problem['msg']}")
    return f"invalid {error.title}: " + "; ".join(parts)


def _database_error(url: str, error: BaseException) -> CliError:
    cause = getattr(error, "orig", None) or error
    return CliError(f"cannot reach database at {masked_url(url)}: {_one_line(str(cause))}")


def execute(command: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine (errors are reported by :func:`with_common`'s wrapper)."""
    return asyncio.run(command)


@contextmanager
def reported_errors(options: CommonOptions) -> Iterator[None]:
    """Turn the errors a user can fix into ``error: ...`` on stderr and exit code 2.

    Raises:
        typer.Exit: with the error's exit code, after printing the message.
    """
    try:
        yield
        return
    except CliError as exc:
        message, code = exc.message, exc.exit_code
    except DevServerError as exc:
        # The server's last stderr lines follow the first line: they say what went wrong.
        first, _, details = exc.message.partition("\n")
        typer.echo(f"error: {first}", err=True)
        if details:
            typer.echo(details, err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except EngineError as exc:
        message, code = exc.message, EXIT_BAD_INPUT
    except ValidationError as exc:
        message, code = _describe_validation(exc), EXIT_BAD_INPUT
    except (OperationalError, InterfaceError) as exc:
        message, code = _database_error(options.database_url, exc).message, EXIT_BAD_INPUT
    except RPCError as exc:
        message = f"Temporal server at {options.temporal_address}: {exc.message}"
        code = EXIT_BAD_INPUT
    typer.echo(f"error: {_one_line(message)}", err=True)
    raise typer.Exit(code)


# -- parsing ----------------------------------------------------------------------------------


def check_range(value: int | None, what: str, low: int, high: int) -> None:
    """Stop with one ``error:`` line (exit 2) unless ``value`` is ``None`` or in ``low..high``.

    A huge number must not reach the database (an overflow traceback there).
    """
    if value is not None and not low <= value <= high:
        shown = str(value) if len(str(value)) <= 30 else f"{str(value)[:27]}..."
        fail(f"{what} must be between {low} and {high}, got {shown}")


def parse_json(text: str, what: str) -> Any:
    """``text`` as JSON, or a :class:`CliError` naming the option it came from."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")


def parse_attributes(items: Iterable[str], what: str = "annotation") -> dict[str, Any]:
    """``key=value`` items as a dict; a value is JSON when it parses as JSON, else a string."""
    attributes: dict[str, Any] = {}
    for item in items:
        key, separator, raw = item.partition("=")
        key = key.strip()
        if not separator or not key:
            fail(f"{what} must be key=value, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        attributes[key] = value
    return attributes


def parse_time(text: str | None, what: str) -> datetime | None:
    """An ISO 8601 time (``2026-11-26T10:00:00Z``; without a zone: UTC), or ``None``."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{what} must be an ISO 8601 time such as 2026-11-26T10:00:00Z, got {text!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def load_workflows(spec: str) -> list[Workflow]:
    """The workflows named by ``module:attribute`` (a Workflow, a list, or a factory of them).

    The current directory is importable, as for ``python -m``, so project modules resolve.
    """
    module_name, separator, attribute = spec.partition(":")
    if not separator or not module_name or not attribute:
        fail(f"--workflows must be module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        fail(f"cannot import workflows module {module_name!r}: {exc}")
    for part in attribute.split("."):
        if not hasattr(target, part):
            fail(f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if callable(target) and not isinstance(target, Workflow):
        target = target()
    if isinstance(target, Workflow):
        return [target]
    if isinstance(target, list | tuple) and target and all(isinstance(w, Workflow) for w in target):
        return list(target)
    fail(f"{spec} is not a Workflow or a non-empty list of them (got {type(target).__name__})")


def registry(workflows: Iterable[Workflow]) -> dict[str, Workflow]:
    """Workflows by id."""
    return {workflow.id: workflow for workflow in workflows}


# -- store, Temporal, kernel ------------------------------------------------------------------


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
        fail(f"bad --database-url {masked_url(url)!r}: {_one_line(str(exc))}")
    except ImportError as exc:
        fail(f"no database driver for {masked_url(url)!r}: {exc}")
    try:
        try:
            if require_schema:
                await store.ensure_current()
            else:
                await current_revision(store.engine)
        except (OperationalError, InterfaceError, OSError) as exc:
            raise _database_error(url, exc) from None
        yield store
    finally:
        await store.dispose()


def _rust_error_summary(error: BaseException) -> str:
    text = str(error)
    found = re.search(r'message: "([^"]+)"', text)
    if found:
        return found.group(1)
    return _one_line(text)[:200]


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


# -- waiting ----------------------------------------------------------------------------------


def progress_echo(options: CommonOptions) -> Echo:
    """Progress lines go to stderr, so stdout holds only the result (e.g. JSON)."""

    def echo(line: str) -> None:
        typer.echo(line, err=True)

    return echo


async def wait_with_progress(
    kernel: Kernel,
    run_id: str,
    *,
    timeout: timedelta,
    echo: Echo,
    indent: str = "  ",
    seen: dict[str, tuple[str, int]] | None = None,
) -> RunRecord:
    """Wait until the run is terminal, printing each stage status change as it happens.

    Args:
        kernel: The kernel the run and its stages are read through.
        run_id: The run to wait for.
        timeout: How long to wait in all.
        echo: Where the stage lines go.
        indent: What each stage line starts with.
        seen: (status, attempt) by stage id already shown; updated in place, so that a later
            wait (after a rerun) shows only what changed.

    Returns:
        The run's record, once terminal.

    Raises:
        CliError: (exit code 1) the run is still active after ``timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout.total_seconds()
    seen = {} if seen is None else seen
    while True:
        remaining = deadline - loop.time()
        run: RunRecord | None
        try:
            # Short slices: a stage that suspends briefly is still shown SUSPENDED.
            run = await kernel.wait_for_run(
                run_id, timeout=timedelta(seconds=max(0.0, min(0.25, remaining)))
            )
        except TimeoutError:
            run = None
        for stage in await kernel.list_stages(run_id):
            state = (stage.status.value, stage.attempt)
            if seen.get(stage.stage_id) != state:
                seen[stage.stage_id] = state
                echo(indent + stage_line(stage))
        if run is not None:
            return run
        if loop.time() >= deadline:
            status = (await kernel.get_run(run_id)).status.value
            fail(f"run {run_id} is still {status} after {timeout.total_seconds():g} s", 1)
