"""The options every ``wfe`` command takes, and running a command under them.

Every command takes ``--temporal-address``, ``--namespace``, ``--task-queue``, ``--database-url``
(or their ``WFE_*`` environment variables, else :class:`~engine.core.settings.Settings`
defaults) and ``--json``; :func:`with_common` adds them to a command and hands it a
:class:`CommonOptions`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar

import typer

from engine.cli.errors import reported_errors
from engine.core.settings import Settings

__all__ = ["CommonOptions", "execute", "with_common"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


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
    command runs under :func:`~engine.cli.errors.reported_errors`.
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
        with reported_errors(
            database_url=options.database_url, temporal_address=options.temporal_address
        ):
            return fn(options, *args, **kwargs)

    parameters = own + _COMMON_PARAMETERS
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    wrapper.__annotations__["return"] = signature.return_annotation
    return wrapper


def execute(command: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine (errors are reported by :func:`with_common`'s wrapper)."""
    return asyncio.run(command)
