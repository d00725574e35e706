"""A durable stage-pipeline engine with first-class provenance, running on Temporal.

Define stages and workflows, run them through a :class:`Kernel` and a worker from
:func:`create_worker`, and query what each stage decided through ``kernel.annotations``.
"""

from engine.commands import (
    OutboxFlush,
    OutboxFlushResult,
    PluginReplayDLQ,
    PluginReplayDLQResult,
    RunCancel,
    RunCancelResult,
    RunClaimPending,
    RunClaimPendingResult,
    RunCreate,
    RunCreateResult,
    RunFork,
    RunForkResult,
    RunRerunFrom,
    RunRerunFromResult,
)
from engine.core.ai_calls import AICall, AICallLogger
from engine.core.annotations import Actor, AnnotationLimits, RunCreateAnnotation
from engine.core.records import (
    Annotation,
    LogRecord,
    OutboxEventRecord,
    RunRecord,
    RunStatus,
    StageRecord,
    StageStatus,
)
from engine.core.stages import (
    CompletionCheck,
    Stage,
    StageResult,
    Suspend,
    define_async_batch_stage,
    define_stage,
)
from engine.core.workflows import ConfigIssue, ConfigValidation, Workflow, define_workflow
from engine.errors import (
    AnnotationError,
    ArtifactNotFoundError,
    CommitRefusedError,
    EngineError,
    IdempotencyConflictError,
    IdempotencyInProgressError,
    InvalidConfigError,
    InvalidCursorError,
    InvalidInputError,
    InvalidStateError,
    RunNotFoundError,
    RunStartError,
    SchemaOutOfDateError,
    SearchAttributesError,
    StageNotFoundError,
    WorkflowDefinitionError,
    WorkflowNotFoundError,
)
from engine.runtime.approval_stages import define_approval_stage
from engine.runtime.context import CompletionContext, StageContext
from engine.runtime.kernel import Kernel
from engine.runtime.kernel_approvals import ApprovalsPage, KernelApprovals, PendingApproval
from engine.runtime.outbox import EventSink
from engine.runtime.plugins import Plugin, PluginRunner, define_plugin
from engine.runtime.recovery import recover_orphans, recovery_loop
from engine.worker import create_worker

__all__ = [
    "AICall",
    "AICallLogger",
    "Actor",
    "Annotation",
    "AnnotationError",
    "AnnotationLimits",
    "ApprovalsPage",
    "ArtifactNotFoundError",
    "CommitRefusedError",
    "CompletionCheck",
    "CompletionContext",
    "ConfigIssue",
    "ConfigValidation",
    "EngineError",
    "EventSink",
    "IdempotencyConflictError",
    "IdempotencyInProgressError",
    "InvalidConfigError",
    "InvalidCursorError",
    "InvalidInputError",
    "InvalidStateError",
    "Kernel",
    "KernelApprovals",
    "LogRecord",
    "OutboxEventRecord",
    "OutboxFlush",
    "OutboxFlushResult",
    "PendingApproval",
    "Plugin",
    "PluginReplayDLQ",
    "PluginReplayDLQResult",
    "PluginRunner",
    "RunCancel",
    "RunCancelResult",
    "RunClaimPending",
    "RunClaimPendingResult",
    "RunCreate",
    "RunCreateAnnotation",
    "RunCreateResult",
    "RunFork",
    "RunForkResult",
    "RunNotFoundError",
    "RunStartError",
    "RunRecord",
    "RunRerunFrom",
    "RunRerunFromResult",
    "RunStatus",
    "SchemaOutOfDateError",
    "SearchAttributesError",
    "Stage",
    "StageContext",
    "StageNotFoundError",
    "StageRecord",
    "StageResult",
    "StageStatus",
    "Suspend",
    "Workflow",
    "WorkflowDefinitionError",
    "WorkflowNotFoundError",
    "create_worker",
    "define_approval_stage",
    "define_async_batch_stage",
    "define_plugin",
    "define_stage",
    "define_workflow",
    "recover_orphans",
    "recovery_loop",
]
