"""``create_worker``: the Temporal worker that executes the engine's runs."""

from __future__ import annotations

from typing import Any

from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.run import RunActivities
from activities.stage import StageActivities
from engine.kernel import Kernel
from engine.workflow_code import cache_workflow_code

__all__ = ["create_worker"]


def create_worker(kernel: Kernel, **worker_options: Any) -> Worker:
    """A worker running the run workflow and the engine's activities on the kernel's queue.

    Use it as ``async with create_worker(kernel): ...``; ``worker_options`` go to
    :class:`temporalio.worker.Worker` (e.g. ``max_concurrent_activities``).
    """
    # Imported here: the workflow module imports engine modules, so importing it at the top
    # of a module that ``engine/__init__`` loads would be circular.
    cache_workflow_code()  # before the first import: the sandbox re-imports it per run
    from temporal_workflows.run import RunWorkflow

    stages = StageActivities(
        kernel.store,
        kernel.workflows,
        kernel.annotation_limits,
        kernel.large_output_bytes,
        kernel.blob_store,
    )
    runs = RunActivities(kernel.store, kernel.workflows)
    options: dict[str, Any] = {
        "task_queue": kernel.task_queue,
        "workflows": [RunWorkflow],
        "activities": [
            stages.execute_stage,
            stages.check_completion,
            runs.start_run,
            runs.commit_stage,
            runs.cancel_run,
            runs.finalize_run,
        ],
        # The payload models are plain pydantic: safe to share with the sandbox.
        "workflow_runner": SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules("pydantic", "engine")
        ),
    }
    options.update(worker_options)
    return Worker(kernel.client, **options)
