"""Errors at the activity boundary: what Temporal sees of the engine's errors.

Also the one-line messages stored on failed stages.

An engine error that leaves an activity is raised as a temporalio ``ApplicationError`` whose
``type`` is the error's class name (what a retry policy's ``non_retryable_error_types``
compares, as it did with the bare exception) and which is ``non_retryable`` where no retry can
help: the same input, state or definition fails the same way every time, and retrying would
only delay the failure by the whole retry policy (Temporal's default never gives up). Database
and other transient errors are not engine errors: they leave untouched, and retry.

A stage's own code is not behind this boundary: its exceptions follow the stage's retry policy
(see :mod:`activities.stage`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import ValidationError
from temporalio.exceptions import ApplicationError

from engine.core.presentation import describe_validation
from engine.errors import (
    AnnotationError,
    CommitRefusedError,
    EngineError,
    IdempotencyConflictError,
    InvalidConfigError,
    InvalidCursorError,
    InvalidInputError,
    InvalidStateError,
    RunNotFoundError,
    WorkflowDefinitionError,
)

__all__ = ["NO_RETRY_HELPS", "application_error", "engine_errors_translated", "error_message"]

NO_RETRY_HELPS: tuple[type[Exception], ...] = (
    ValidationError,
    InvalidInputError,
    InvalidConfigError,
    AnnotationError,
    InvalidCursorError,
    WorkflowDefinitionError,
    InvalidStateError,
    RunNotFoundError,
    IdempotencyConflictError,
    CommitRefusedError,
)
"""Errors that a retry meets again: bad values or definitions, a run that is not there or not
in the status the step needs, a key used for something else, a commit the database refused
for good. Others (a schema behind the code, an idempotency key still held, a workflow or stage
this worker does not know but another worker version may) stay retryable."""


def application_error(error: EngineError | ValidationError) -> ApplicationError:
    """The ``ApplicationError`` that carries ``error`` out of an activity."""
    if isinstance(error, ValidationError):
        message = f"invalid {error.title}: {describe_validation(error)}"
    else:
        message = error.message
    return ApplicationError(
        message, type=type(error).__name__, non_retryable=isinstance(error, NO_RETRY_HELPS)
    )


@contextmanager
def engine_errors_translated() -> Iterator[None]:
    """Raise the engine errors of the block as :func:`application_error` (their cause kept).

    Raises:
        ApplicationError: the block raised an :class:`~engine.errors.EngineError` or a
            pydantic ``ValidationError``.
    """
    try:
        yield
    except (EngineError, ValidationError) as error:
        raise application_error(error) from error


def error_message(error: BaseException) -> str:
    """The message a failed stage stores: the exception's text, or its type if it has none."""
    text = str(error)
    return text if text else type(error).__name__
