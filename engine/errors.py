"""The engine's exceptions.

Every error the engine raises on purpose derives from :class:`EngineError`::

    EngineError
    ├── WorkflowDefinitionError      a workflow or stage definition is malformed (at build time)
    ├── WorkflowNotFoundError        a workflow id is not registered with the kernel
    ├── RunNotFoundError             no run has that id
    ├── StageNotFoundError           the run's workflow has no such stage
    ├── InvalidInputError            run input failed the workflow's input model
    ├── InvalidConfigError           a stage's config slice failed its config model
    ├── InvalidStateError            the run or stage is in the wrong status for the command
    ├── InvalidCursorError           a page cursor that was not handed out (also a ValueError)
    ├── AnnotationError              bad annotation key, non-JSON value, or over the size limit
    ├── IdempotencyInProgressError   an idempotency key is held by a command still running
    ├── IdempotencyConflictError     an idempotency key was used for another request
    ├── RunStartError                the run was written but its Temporal workflow did not start
    ├── ArtifactNotFoundError        ``ctx.storage.load`` of a missing key
    ├── CommitRefusedError           the database refused even a stage's bare FAILED outcome
    ├── SchemaOutOfDateError         the side-store's schema is behind the code's migrations
    ├── SearchAttributesError        Temporal's search attributes do not fit the workflows
    ├── PluginDeliveryError          (engine.runtime.plugins) one or more plugins failed on an event
    ├── WebhookDeliveryError         (engine.runtime.sinks) the webhook did not take an event
    ├── WebhookVerificationError     (engine.runtime.sinks) a delivery failed ``verify_webhook``
    ├── DevServerError               (engine.cli.devserver) the local Temporal server failed
    └── BinaryNotFoundError          (engine.cli.devserver) a binary is missing (FileNotFoundError)

A test (``tests/engine/test_errors.py``) holds this drawing to the classes.
"""

from __future__ import annotations

__all__ = [
    "AnnotationError",
    "ArtifactNotFoundError",
    "CommitRefusedError",
    "EngineError",
    "IdempotencyConflictError",
    "IdempotencyInProgressError",
    "InvalidConfigError",
    "InvalidCursorError",
    "InvalidInputError",
    "InvalidStateError",
    "RunNotFoundError",
    "RunStartError",
    "SchemaOutOfDateError",
    "SearchAttributesError",
    "StageNotFoundError",
    "WorkflowDefinitionError",
    "WorkflowNotFoundError",
]


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        workflow_run_id: str | None = None,
        stage_id: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.workflow_run_id = workflow_run_id
        """The run the error concerns, when there is one."""
        self.stage_id = stage_id
        """The stage the error concerns, when there is one."""
        self.key = key
        """The annotation or idempotency key the error concerns, when there is one."""


class WorkflowDefinitionError(EngineError):
    """A workflow or stage definition is malformed; raised by ``build()`` and ``define_*``."""


class WorkflowNotFoundError(EngineError):
    """The workflow id is not registered with the kernel."""


class RunNotFoundError(EngineError):
    """No run has the given id."""


class StageNotFoundError(EngineError):
    """The run's workflow has no stage with the given id."""


class InvalidInputError(EngineError):
    """Run input failed the input model; the message starts ``Invalid workflow input``."""


class InvalidConfigError(EngineError):
    """A config slice failed its stage's model; the message starts ``Invalid workflow config``."""


class InvalidStateError(EngineError):
    """The run or stage is not in a status that allows the command."""


class AnnotationError(EngineError):
    """An annotation was rejected before anything was written."""


class IdempotencyInProgressError(EngineError):
    """The idempotency key belongs to a command that has not finished."""


class IdempotencyConflictError(EngineError):
    """The idempotency key belongs to a run created with another workflow, input or config.

    Nothing was written. ``key`` is the key, ``workflow_run_id`` the run that holds it.
    """


class RunStartError(EngineError):
    """The run is stored but its Temporal workflow could not be started.

    ``workflow_run_id`` names the run: the worker's recovery loop starts it, or ``wfe run
    recover`` does.
    """


class ArtifactNotFoundError(EngineError):
    """No artifact is stored under the key."""


class CommitRefusedError(EngineError):
    """The database refused a stage's outcome for good, and then its bare FAILED record too.

    No retry can change that (a data or constraint error), so the activities raise it to
    Temporal as non-retryable instead of retrying the commit forever.
    """


class InvalidCursorError(EngineError, ValueError):
    """A page cursor that the listing did not hand out (or that was altered)."""


class SchemaOutOfDateError(EngineError):
    """The side-store schema is behind the code; run ``wfe db upgrade``."""


class SearchAttributesError(EngineError):
    """The Temporal server's search attributes do not fit what the workflows declare.

    The server lacks some, has one of another type, or the engine would need more of one type
    than Temporal allows.
    """
