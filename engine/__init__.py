"""A durable stage-pipeline engine with first-class provenance, running on Temporal.

Define stages and workflows, run them through a :class:`Kernel` and a worker from
:func:`create_worker`, and query what each stage decided through ``kernel.annotations``.
"""

from engine.ai_calls import AICall, AICallLogger
from engine.annotations import Actor, AnnotationLimits, RunCreateAnnotation
from engine.approval_stages import define_approval_stage
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
from engine.context import CompletionContext, StageContext
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
from engine.kernel import Kernel
from engine.kernel_approvals import ApprovalsPage, KernelApprovals, PendingApproval
from engine.outbox import EventSink
from engine.plugins import Plugin, PluginRunner, define_plugin
from engine.records import (
    Annotation,
    LogRecord,
    OutboxEventRecord,
    RunRecord,
    RunStatus,
    StageRecord,
    StageStatus,
)
from engine.recovery import recover_orphans, recovery_loop
from engine.stages import (
    CompletionCheck,
    Stage,
    StageResult,
    Suspend,
    define_async_batch_stage,
    define_stage,
)
from engine.worker import create_worker
from engine.workflows import ConfigIssue, ConfigValidation, Workflow, define_workflow

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
