"""``create_worker``: the Temporal worker that executes the engine's runs.

The run workflow runs outside Temporal's sandbox by default. The sandbox exists to keep user
code in workflows deterministic, and no user code runs in this workflow: stages run in
activities, and the workflow is the engine's own generic code, kept deterministic by review
and by replay tests that run it *inside* the sandbox (:func:`sandboxed_runner`), where a
clock, I/O or randomness would fail them. What the sandbox costs per run is large for a
workflow this small: it re-imports the workflow module for every instance and proxies every
activation through its restricted importer. In the overhead benchmark (10-stage run,
PostgreSQL side-store) the worker's CPU per run fell from 168 to 125 ms without it, and
throughput rose by a fifth (``bench/README.md``). Pass ``workflow_runner=sandboxed_runner()``
to :func:`create_worker` to run it sandboxed anyway.
"""

from __future__ import annotations

from typing import Any

from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from engine.runtime.kernel import Kernel
from engine.worker.workflow_code import cache_workflow_code

__all__ = ["EngineWorker", "create_worker", "sandboxed_runner"]


def sandboxed_runner() -> WorkflowRunner:
    """Temporal's sandbox, set up for the run workflow (the replay tests run under it).

    The payload models are plain pydantic and the engine modules the workflow imports hold no
    per-run state, so both pass through. The workflow modules are compiled once per process
    (:mod:`engine.worker.workflow_code`), as the sandbox re-imports them for every instance.
    """
    cache_workflow_code()
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("pydantic", "engine")
    )


def create_worker(kernel: Kernel, **worker_options: Any) -> EngineWorker:
    """A worker running the run workflow and the engine's activities on the kernel's queue.

    Starting it checks the server's search attributes against what the workflows project
    (raising :class:`SearchAttributesError` with what to fix). Use it as
    ``async with create_worker(kernel): ...``; ``worker_options`` go to
    :class:`temporalio.worker.Worker` (e.g. ``max_concurrent_activities``, or
    ``workflow_runner=sandboxed_runner()``).
    """
    # Imported here: the workflow and activity modules import engine modules, so importing them
    # at the top of a module that ``engine/__init__`` loads would be circular (``import
    # activities`` before ``engine`` failed so).
    from activities.run import RunActivities
    from activities.stage import StageActivities
    from temporal_workflows.pipeline import PipelineWorkflow
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
        # Runs execute as PipelineWorkflow, under their engine workflow's id as Workflow Type;
        # RunWorkflow (type ``wfe.run``) keeps running the executions started before that.
        "workflows": [PipelineWorkflow, RunWorkflow],
        "activities": [
            stages.execute_stage,
            stages.check_completion,
            runs.start_run,
            runs.commit_stage,
            runs.cancel_run,
            runs.finalize_run,
        ],
        # No user code runs in the workflow: see the module docstring.
        "workflow_runner": UnsandboxedWorkflowRunner(),
    }
    options.update(worker_options)
    return EngineWorker(kernel, options)


class EngineWorker:
    """The engine's :class:`temporalio.worker.Worker`, made after a search-attribute check.

    The server's search attributes are checked against what the workflows project before the
    Worker exists: a Worker registers with the SDK core as soon as it exists, so a failed check
    must come first.

    ``async with`` gives the running Worker; :meth:`run` and :meth:`shutdown` work as
    the Worker's, and other attributes are the Worker's once it exists.
    """

    def __init__(self, kernel: Kernel, options: dict[str, Any]) -> None:
        self._kernel = kernel
        self._options = options
        self._worker: Worker | None = None

    async def _start(self) -> Worker:
        if self._worker is None:
            await self._kernel.check_search_attributes()
            self._worker = Worker(self._kernel.client, **self._options)
        return self._worker

    async def __aenter__(self) -> Worker:
        return await (await self._start()).__aenter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._worker is not None
        await self._worker.__aexit__(*exc_info)

    async def run(self) -> None:
        """Check the search attributes, then run until shut down (see ``Worker.run``)."""
        await (await self._start()).run()

    async def shutdown(self) -> None:
        """Shut the worker down (nothing to do if it never started)."""
        if self._worker is not None:
            await self._worker.shutdown()

    def __getattr__(self, name: str) -> Any:
        if self._worker is None:
            raise AttributeError(f"{name!r}: the worker has not started yet")
        return getattr(self._worker, name)
