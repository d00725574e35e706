"""``RunFork``: a new run that starts where a finished run's stage began, without touching it.

Temporal's reset rewrites the history it resets (and loses the signals and updates after its
point); a fork leaves the source run as it was and records the link both ways instead: the fork
carries ``revision.previous_run_id`` and ``revision.reason``, and its copied stage records name
the records they were copied from.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from engine.commands import RunFork, RunForkResult
from engine.conventions import Revision
from engine.core.annotations import AnnotationLimits, build_drafts, json_problem
from engine.core.plans import plan_of
from engine.core.records import RunStatus
from engine.core.workflows import Workflow
from engine.errors import InvalidInputError, StageNotFoundError
from engine.store import SqlStore
from engine.store.contract import NewRun

__all__ = ["fork_run", "fork_idempotency_key"]

Starter = Callable[[str, str, int, int, str], Coroutine[Any, Any, None]]
"""Starts a run's workflow: (run id, workflow id, start group, priority, note)."""


def fork_idempotency_key(source_run_id: str, key: str | None) -> str:
    """The stored key of a fork: scoped to its source, and apart from ``RunCreate`` keys."""
    if key is None:
        return f"run.fork:{uuid.uuid4()}"
    digest = hashlib.sha256(f"{source_run_id}\0{key}".encode()).hexdigest()
    return f"run.fork:{digest}"


def _config(workflow: Workflow, source: dict[str, Any], overrides: dict[str, Any] | None) -> Any:
    merged = {
        stage_id: dict(value) for stage_id, value in source.items() if workflow.has_stage(stage_id)
    }
    for stage_id, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(stage_id), dict):
            merged[stage_id] = {**merged[stage_id], **value}
        else:
            merged[stage_id] = value
    return workflow.merge_config(merged)


async def fork_run(
    command: RunFork,
    *,
    store: SqlStore,
    workflow_of: Callable[[str], Workflow],
    limits: AnnotationLimits,
    temporal_id_template: str,
    start: Starter,
) -> RunForkResult:
    """Create (or find, by idempotency key) the fork, and start its workflow at the group.

    Raises:
        RunNotFoundError: no such source run.
        WorkflowNotFoundError: the source's workflow is not registered with this kernel.
        StageNotFoundError: the workflow has no ``from_stage_id``.
        InvalidInputError / InvalidConfigError: the fork's input or config does not fit.
        InvalidStateError: the source is not terminal, or an earlier stage is not COMPLETED.
    """
    source = await store.get_run(command.workflow_run_id)
    workflow = workflow_of(source.workflow_id)
    if not workflow.has_stage(command.from_stage_id):
        raise StageNotFoundError(
            f"Stage {command.from_stage_id} not found in workflow {workflow.id}",
            workflow_run_id=source.id,
            stage_id=command.from_stage_id,
        )
    run_input = source.input if command.input is None else command.input
    workflow.parse_input(run_input)
    problem = json_problem(run_input)
    if problem is not None:
        raise InvalidInputError(f"Invalid workflow input: the input {problem}")
    config = _config(workflow, source.config, command.config)
    group = workflow.get_execution_group_index(command.from_stage_id)
    plan = plan_of(workflow, config)
    before = [spec.stage_id for specs in plan[: group - 1] for spec in specs]
    reason = command.reason or f"fork from {command.from_stage_id}"
    drafts = build_drafts(
        {Revision.previous_run_id.key: source.id, Revision.reason.key: reason}, limits=limits
    )
    new = NewRun(
        workflow_id=workflow.id,
        workflow_name=workflow.name,
        input=run_input,
        config=config,
        priority=source.priority,
        metadata=None,
        idempotency_key=fork_idempotency_key(source.id, command.idempotency_key),
        annotations=[(drafts, False)],
    )
    fork = await store.fork_run(
        source.id,
        new,
        target_group=group,
        groups_before=before,
        temporal_workflow_id=temporal_id_template,
    )
    status = RunStatus.PENDING if fork.created else (await store.get_run(fork.run_id)).status
    if status == RunStatus.PENDING:
        # Also on a repeat: the first caller may have crashed before starting it.
        note = f"Fork of run `{source.id}` from stage `{command.from_stage_id}`: {reason}"
        await start(fork.run_id, workflow.id, group, source.priority, note)
    return RunForkResult(
        workflow_run_id=fork.run_id, source_run_id=source.id, from_stage_id=command.from_stage_id
    )
