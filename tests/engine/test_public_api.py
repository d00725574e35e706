"""``engine.__all__`` is the public contract (``PYTHON-API.md``): pinned here, so that adding
or dropping a public name is a decision a reviewer sees, never an accident."""

from __future__ import annotations

import engine

PUBLIC = [
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
    "RunRecord",
    "RunRerunFrom",
    "RunRerunFromResult",
    "RunStartError",
    "RunStatus",
    "SchemaOutOfDateError",
    "SearchAttributesError",  # what create_worker raises when the server's attributes do not fit
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


def test_all_is_the_pinned_public_api() -> None:
    assert sorted(engine.__all__) == sorted(PUBLIC)


def test_every_public_name_resolves() -> None:
    missing = [name for name in engine.__all__ if not hasattr(engine, name)]
    assert missing == []
