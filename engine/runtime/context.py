"""What stage code sees: ``StageContext`` (execute) and ``CompletionContext`` (polls)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any, Generic, TypeVar

from temporalio import activity

from engine.core import clock
from engine.core.ai_calls import AICall
from engine.core.annotations import AnnotationBuffer, AnnotationLimits
from engine.core.payloads import LogDraft, ProgressDraft
from engine.core.records import LogLevel
from engine.errors import StageNotFoundError
from engine.runtime.storage import StageStorage

__all__ = ["CompletionContext", "StageBuffer", "StageContext"]

InT = TypeVar("InT")
CfgT = TypeVar("CfgT")


class StageBuffer(AnnotationBuffer):
    """Logs, progress and annotations, buffered until the outcome commit."""

    workflow_run_id: str

    def __init__(self, limits: AnnotationLimits) -> None:
        super().__init__(limits)
        self.logs: list[LogDraft] = []
        self.progress: list[ProgressDraft] = []
        self.ai_calls: list[AICall] = []

    def record_ai_call(self, call: AICall) -> None:
        """Buffer an AI call; its cost and tokens add to the stage's ``total_*`` metrics."""
        self.ai_calls.append(call)

    def log(self, level: str, message: str, metadata: dict[str, Any] | None = None) -> None:
        """Buffer a log line (``DEBUG``, ``INFO``, ``WARN`` or ``ERROR``)."""
        LogLevel(level.upper())  # a typo in the level is a bug in the stage: say so now
        self.logs.append(
            LogDraft(at=clock.now(), level=level.upper(), message=message, metadata=metadata)
        )


class StageContext(StageBuffer, Generic[InT, CfgT]):
    """Context of one ``execute`` call.

    ``log``, ``report_progress``, ``heartbeat`` and ``annotate`` are plain calls that buffer
    (or, for heartbeat, send) and return ``None``; everything buffered is committed with the
    stage outcome in one transaction. ``storage`` is async.
    """

    def __init__(
        self,
        *,
        input: InT,
        config: CfgT,
        workflow_run_id: str,
        workflow_id: str,
        stage_id: str,
        stage_name: str,
        stage_number: int,
        stage_record_id: str,
        attempt: int,
        activity_attempt: int,
        workflow_context: dict[str, Any],
        resume_state: Any,
        storage: StageStorage,
        limits: AnnotationLimits,
    ) -> None:
        super().__init__(limits)
        # Where heartbeats go when the stage's code runs in a worker thread.
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._loop_thread = threading.get_ident()
        self._activity_context = contextvars.copy_context()
        self.input = input
        """The parsed input (``None`` for ``input=None`` stages)."""
        self.config = config
        """This stage's config, parsed with defaults applied."""
        self.workflow_run_id = workflow_run_id
        self.workflow_id = workflow_id
        self.stage_id = stage_id
        self.stage_name = stage_name
        self.stage_number = stage_number
        self.stage_record_id = stage_record_id
        self.attempt = attempt
        """Rerun generation: 0 at first, +1 per ``RunRerunFrom``."""
        self.activity_attempt = activity_attempt
        """Temporal's delivery count of this activity (1 on the first try)."""
        self.workflow_context = workflow_context
        """Outputs of earlier groups' stages by stage id, snapshotted when this group began."""
        self.resume_state = resume_state
        self.storage = storage

    def require(self, stage_id: str) -> Any:
        """The output of an earlier stage; raises naming the id and the available ones."""
        if stage_id not in self.workflow_context:
            available = ", ".join(sorted(self.workflow_context)) or "(none)"
            raise StageNotFoundError(
                f"Stage {stage_id!r} has no output in the workflow context "
                f"(available: {available})",
                workflow_run_id=self.workflow_run_id,
                stage_id=stage_id,
            )
        return self.workflow_context[stage_id]

    def optional(self, stage_id: str) -> Any:
        """The output of an earlier stage, or ``None``."""
        return self.workflow_context.get(stage_id)

    def report_progress(self, progress: float, message: str, details: Any = None) -> None:
        """Buffer a ``stage:progress`` event (written before the outcome event)."""
        self.progress.append(ProgressDraft(progress=progress, message=message, details=details))

    def heartbeat(self, *details: Any) -> None:
        """Heartbeat the Temporal activity (lets long stages notice cancellation).

        A synchronous stage runs in a worker thread: there its heartbeats are handed to the
        activity's event loop, and once the activity has been cancelled the call raises
        :class:`asyncio.CancelledError` so the work stops instead of running on as a ghost.
        """
        if not activity.in_activity():
            return
        if self._loop is None or threading.get_ident() == self._loop_thread:
            activity.heartbeat(*details)
            return
        if activity.is_cancelled():
            raise asyncio.CancelledError("the stage's activity was cancelled")
        self._loop.call_soon_threadsafe(
            activity.heartbeat, *details, context=self._activity_context
        )


class CompletionContext(StageBuffer, Generic[CfgT]):
    """Context of one ``check_completion`` call of an async-batch stage."""

    def __init__(
        self,
        *,
        config: CfgT,
        workflow_run_id: str,
        workflow_id: str,
        stage_id: str,
        stage_record_id: str,
        attempt: int,
        poll_count: int,
        resume_data: Any,
        storage: StageStorage,
        limits: AnnotationLimits,
    ) -> None:
        super().__init__(limits)
        self.config = config
        self.workflow_run_id = workflow_run_id
        self.workflow_id = workflow_id
        self.stage_id = stage_id
        self.stage_record_id = stage_record_id
        self.attempt = attempt
        self.poll_count = poll_count
        """How many checks found the batch unfinished so far."""
        self.resume_data = resume_data
        """Data handed in by ``kernel.resume_stage(..., data=...)``, else ``None``."""
        self.storage = storage
