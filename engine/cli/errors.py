"""How a ``wfe`` command fails: one ``error: ...`` line on stderr and an exit code.

Errors a user can fix (unknown run, bad JSON, an :class:`~engine.errors.EngineError`, a pydantic
``ValidationError``, a server or database that does not answer) end the command with exit code 2
and one line, never a traceback: see :func:`reported_errors`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from temporalio.service import RPCError

from engine.cli.devserver import DevServerError
from engine.cli.render import masked_url
from engine.core.presentation import describe_validation
from engine.errors import EngineError

__all__ = [
    "EXIT_BAD_INPUT",
    "CliError",
    "database_error",
    "fail",
    "one_line",
    "reported_errors",
]

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


def one_line(text: str) -> str:
    """The first non-blank line of ``text``, stripped."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def database_error(url: str, error: BaseException) -> CliError:
    """The error for a database at ``url`` that does not answer (its driver's first line)."""
    cause = getattr(error, "orig", None) or error
    return CliError(f"cannot reach database at {masked_url(url)}: {one_line(str(cause))}")


@contextmanager
def reported_errors(*, database_url: str, temporal_address: str) -> Iterator[None]:
    """Turn the errors a user can fix into ``error: ...`` on stderr and exit code 2.

    Args:
        database_url: named (password hidden) when the database does not answer.
        temporal_address: named when the Temporal server answers with an error.

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
        message, code = f"invalid {exc.title}: {describe_validation(exc)}", EXIT_BAD_INPUT
    except (OperationalError, InterfaceError) as exc:
        message, code = database_error(database_url, exc).message, EXIT_BAD_INPUT
    except RPCError as exc:
        message = f"Temporal server at {temporal_address}: {exc.message}"
        code = EXIT_BAD_INPUT
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)
