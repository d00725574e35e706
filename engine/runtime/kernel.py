"""The kernel: the client-side API of the engine (commands, reads, annotations)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, overload

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    Priority,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from engine.commands import (
    Command,
    CommandResult,
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
    parse_command,
)
from engine.core.annotations import Actor, AnnotationLimits, build_drafts, json_problem
from engine.core.evidence import ChainVerification
from engine.core.payloads import LEGACY_WORKFLOW_TYPE, ResumeRequest, RunPlan, RunWorkflowInput
from engine.core.plans import plan_of
from engine.core.records import (
    TERMINAL_STATUSES,
    LogRecord,
    OutboxEventRecord,
    RunRecord,
    RunStartStatus,
    RunStatus,
    StageRecord,
)
from engine.core.search_attributes import (
    ATTEMPT_ATTRIBUTE,
    DEFAULT_PROJECTED_KEYS,
    RUN_ID_ATTRIBUTE,
    RUN_STATUS_ATTRIBUTE,
    WORKFLOW_ID_ATTRIBUTE,
)
from engine.core.settings import Settings
from engine.core.workflows import Workflow
from engine.errors import (
    InvalidConfigError,
    InvalidInputError,
    InvalidStateError,
    RunNotFoundError,
    RunStartError,
    StageNotFoundError,
    WorkflowNotFoundError,
)
from engine.runtime.blobs import BlobStore, SqlBlobStore
from engine.runtime.evidence_bundle import build_bundle
from engine.runtime.forks import fork_run
from engine.runtime.kernel_annotations import KernelAnnotations
from engine.runtime.kernel_approvals import KernelApprovals
from engine.runtime.kernel_search_attributes import KernelSearchAttributes
from engine.runtime.outbox import EventSink, OutboxRelay
from engine.runtime.plugins import Plugin, PluginRunner
from engine.runtime.storage import resolve_outputs
from engine.store import SqlStore
from engine.store.contract import NewRun, NewStage

__all__ = ["Kernel"]

log = logging.getLogger(__name__)
R = TypeVar("R")


def temporal_workflow_id(run_id: str, attempt: int = 0) -> str:
    """The Temporal workflow id of a run's first execution, or of its ``attempt``-th rerun."""
    return f"wfe-run-{run_id}" if attempt == 0 else f"wfe-run-{run_id}-rerun-{attempt}"


def restart_workflow_id(temporal_id: str) -> str:
    """The id of the execution that takes over from ``temporal_id`` (``…-restart-<n>``)."""
    base, marker, count = temporal_id.rpartition("-restart-")
    if marker and count.isdigit():
        return f"{base}-restart-{int(count) + 1}"
    return f"{temporal_id}-restart-1"


def temporal_priority(priority: int) -> Priority:
    """Temporal's priority for the run's ``priority`` (higher runs sooner, default 5).

    Temporal's ``priority_key`` runs 1 (first) to 5 (last), 3 by default: the engine's
    default 5 maps to 3, each step above it one key sooner (7 and more: 1), each step below
    one key later (3 and less: 5). The stage activities inherit it from the workflow.
    """
    return Priority(priority_key=min(max(3 - (priority - 5), 1), 5))


RUNNING_SCAN_LIMIT = 200
"""RUNNING runs one ``RunClaimPending`` checks against Temporal (least recently updated)."""


class Kernel:
    """Creates, controls and reads runs; the worker (``create_worker``) executes them.

    Args:
        client: A connected Temporal client (re-wrapped with the pydantic data converter if it
            has another one).
        store: The SQL side-store.
        workflows: The workflows this kernel may run.
        task_queue: Task queue of the engine's worker.
        annotation_limits: Size and naming limits for annotations.
        viewer_url: Base URL of the provenance viewer, linked from the Temporal UI.
        event_sink: Where ``OutboxFlush`` publishes outbox events (``None``: marks them
            published).
        plugins: Plugins to publish events to instead (a :class:`PluginRunner` on this
            store becomes the ``event_sink``).
        start_grace: How long the recovery pass (``RunClaimPending``) leaves a RUNNING run
            whose Temporal execution does not exist yet to whoever is starting it.
    """

    def __init__(
        self,
        *,
        client: Client,
        store: SqlStore,
        workflows: Iterable[Workflow] = (),
        task_queue: str = "workflow-engine",
        annotation_limits: AnnotationLimits | None = None,
        viewer_url: str | None = None,
        event_sink: EventSink | None = None,
        plugins: Iterable[Plugin] = (),
        projected_keys: Mapping[str, str] = DEFAULT_PROJECTED_KEYS,
        continue_as_new_after_events: int = 10_000,
        start_grace: timedelta = timedelta(seconds=60),
        large_output_bytes: int = 256 * 1024,
        blob_store: BlobStore | None = None,
    ) -> None:
        if client.data_converter is not pydantic_data_converter:
            config = client.config()
            config["data_converter"] = pydantic_data_converter
            client = Client(**config)
        self.client = client
        self.store = store
        self.task_queue = task_queue
        self.workflows: dict[str, Workflow] = {}
        for workflow in workflows:
            if workflow.id == LEGACY_WORKFLOW_TYPE:
                raise ValueError(
                    f"workflow id {workflow.id!r} is the engine's legacy Workflow Type; "
                    "choose another id"
                )
            if workflow.id in self.workflows:
                raise ValueError(f"workflow {workflow.id!r} is registered twice")
            self.workflows[workflow.id] = workflow
        self.annotation_limits = annotation_limits or AnnotationLimits()
        self.annotations = KernelAnnotations(store, self.annotation_limits)
        """Attach, list and query annotations (see :class:`KernelAnnotations`)."""
        self.viewer_url = viewer_url
        plugin_list = list(plugins)
        if plugin_list:
            if event_sink is not None:
                raise ValueError("pass plugins= or event_sink=, not both")
            event_sink = PluginRunner(plugin_list, store=store)
        self.event_sink = event_sink
        """Where ``OutboxFlush`` publishes events (``None``: marks them published)."""
        self.projected_keys = dict(projected_keys)
        """Annotation keys copied into Keyword search attributes of the run's workflow."""
        self.continue_as_new_after_events = continue_as_new_after_events
        self.start_grace = start_grace
        """How long a RUNNING run whose execution was never started is left to its starter
        (a rerun in flight) before the recovery pass restarts it."""
        self.large_output_bytes = large_output_bytes
        """Stage outputs larger than this (JSON bytes) travel to Temporal by reference."""
        self.blob_store = blob_store or SqlBlobStore(store)
        """Where stage artifacts and large outputs live (default: the side-store's table)."""
        self.search_attributes = KernelSearchAttributes(client, self.workflows, self.projected_keys)
        """The Temporal search attributes the runs carry, checked against the server."""
        self._owns: list[Any] = []
        self.approvals = KernelApprovals(
            store, self.annotation_limits, self.workflows, self._handle
        )
        """The approvals inbox and decisions (see :class:`KernelApprovals`)."""

    @classmethod
    async def connect(
        cls,
        *,
        temporal_address: str | None = None,
        namespace: str | None = None,
        task_queue: str | None = None,
        database_url: str | None = None,
        workflows: Iterable[Workflow] = (),
        **kwargs: Any,
    ) -> Kernel:
        """Connect to Temporal and the side-store (settings default to ``WFE_*`` variables).

        ``viewer_url`` defaults to ``WFE_VIEWER_URL``, else to where ``wfe dev`` serves the
        viewer for a local ``temporal_address`` (its port + 1001), so every run links to it.

        Raises:
            SchemaOutOfDateError: the side-store schema is behind; run ``wfe db upgrade``.
        """
        settings = Settings()
        store = SqlStore(database_url or settings.database_url)
        try:
            await store.ensure_current()
            client = await Client.connect(
                temporal_address or settings.temporal_address,
                namespace=namespace or settings.namespace,
                data_converter=pydantic_data_converter,
            )
        except BaseException:
            await store.dispose()
            raise
        address = temporal_address or settings.temporal_address
        kwargs.setdefault("viewer_url", Settings(temporal_address=address).viewer_url or None)
        kernel = cls(
            client=client,
            store=store,
            workflows=workflows,
            task_queue=task_queue or settings.task_queue,
            **kwargs,
        )
        kernel._owns.append(store)
        return kernel

    async def close(self) -> None:
        """Release what :meth:`connect` opened."""
        for owned in self._owns:
            await owned.dispose()
        self._owns.clear()

    # -- commands -----------------------------------------------------------------------------

    @overload
    async def dispatch(self, command: RunCreate) -> RunCreateResult: ...
    @overload
    async def dispatch(self, command: RunCancel) -> RunCancelResult: ...
    @overload
    async def dispatch(self, command: RunRerunFrom) -> RunRerunFromResult: ...
    @overload
    async def dispatch(self, command: RunFork) -> RunForkResult: ...
    @overload
    async def dispatch(self, command: RunClaimPending) -> RunClaimPendingResult: ...
    @overload
    async def dispatch(self, command: OutboxFlush) -> OutboxFlushResult: ...
    @overload
    async def dispatch(self, command: PluginReplayDLQ) -> PluginReplayDLQResult: ...
    @overload
    async def dispatch(self, command: Mapping[str, Any]) -> CommandResult: ...

    async def dispatch(self, command: Command | Mapping[str, Any]) -> CommandResult:
        """Run one command (a model from :mod:`engine.commands` or a dict with ``"type"``).

        Each command type returns its own result type (the overloads say which); a dict is
        parsed into its command first, so its result is only known to be one of them.
        """
        parsed = parse_command(command)
        if isinstance(parsed, RunCreate):
            return await self._create(parsed)
        if isinstance(parsed, RunCancel):
            return await self._cancel(parsed)
        if isinstance(parsed, RunRerunFrom):
            return await self._rerun(parsed)
        if isinstance(parsed, RunFork):
            return await self._fork(parsed)
        if isinstance(parsed, RunClaimPending):
            return await self._claim_pending(parsed)
        if isinstance(parsed, OutboxFlush):
            return OutboxFlushResult(published=await self._outbox().flush(parsed.max_events))
        if isinstance(parsed, PluginReplayDLQ):
            return PluginReplayDLQResult(
                replayed=await self._outbox().replay_dlq(parsed.max_events)
            )
        raise TypeError(f"unknown command {parsed!r}")  # pragma: no cover - union is exhaustive

    def _outbox(self) -> OutboxRelay:
        return OutboxRelay(self.store, self.event_sink)

    def workflow(self, workflow_id: str) -> Workflow:
        """The registered workflow, or :class:`WorkflowNotFoundError`."""
        try:
            return self.workflows[workflow_id]
        except KeyError:
            raise WorkflowNotFoundError(f"Workflow {workflow_id} not found in registry") from None

    async def _create(self, command: RunCreate) -> RunCreateResult:
        workflow = self.workflow(command.workflow_id)
        workflow.parse_input(command.input)
        # The models check fields, not what else the value carries: refuse what the side-store
        # cannot keep as JSON on every backend rather than failing in SQL (or on one only).
        for what, value in (("input", command.input), ("run metadata", command.metadata)):
            problem = json_problem(value)
            if problem is not None:
                raise InvalidInputError(f"Invalid workflow input: the {what} {problem}")
        config = workflow.merge_config(command.config)
        for stage_id, config_slice in config.items():
            problem = json_problem(config_slice)
            if problem is not None:
                raise InvalidConfigError(
                    f"Invalid workflow config: {stage_id}: the config {problem}",
                    stage_id=stage_id,
                )
        annotations = [
            (
                build_drafts(
                    envelope.attributes,
                    actor=envelope.actor,
                    on_behalf_of=envelope.on_behalf_of,
                    payload=envelope.payload,
                    idempotency_key=envelope.idempotency_key,
                    emit_event=envelope.emit_event,
                    limits=self.annotation_limits,
                ),
                envelope.emit_event,
            )
            for envelope in command.annotations
        ]
        if command.metadata is not None:
            warnings.warn(
                "RunCreate(metadata=...) is deprecated: pass annotations=[...] instead",
                DeprecationWarning,
                stacklevel=3,
            )
        new = NewRun(
            workflow_id=workflow.id,
            workflow_name=workflow.name,
            input=command.input,
            config=config,
            priority=command.priority,
            metadata=command.metadata,
            # An empty key is a key: only an absent one gets a fresh key (a repeat of a create
            # with idempotency_key="" must find the first run, not make another).
            idempotency_key=(
                command.idempotency_key
                if command.idempotency_key is not None
                else str(uuid.uuid4())
            ),
            annotations=annotations,
        )
        run_id, created = await self.store.create_run(new, temporal_workflow_id("{run_id}"))
        # A repeat reads the run: it may have moved on since the first dispatch.
        status = RunStatus.PENDING if created else (await self.store.get_run(run_id)).status
        if status == RunStatus.PENDING:
            # Also on a repeat: the first caller may have crashed before starting. The
            # workflow id is derived from the run id and never reused, so this starts at
            # most one workflow.
            # The run input travels once, as the execution's first argument (see _start).
            plan = RunPlan(status=RunStartStatus.OK, groups=plan_of(workflow, config))
            await self._start_or_report(
                run_id,
                workflow.id,
                start_group=1,
                priority=command.priority,
                plan=plan,
                run_input=command.input,
            )
        return RunCreateResult(workflow_run_id=run_id, status=status)

    async def _start_or_report(
        self, run_id: str, workflow_id: str, *, start_group: int, priority: int, **kwargs: Any
    ) -> None:
        """Start the run's workflow; if Temporal refuses, say which run is waiting for it."""
        try:
            await self._start(
                run_id, workflow_id, start_group=start_group, priority=priority, **kwargs
            )
        except RPCError as err:
            raise RunStartError(
                f"Run {run_id} is stored but its Temporal workflow could not be started "
                f"({err}); the worker's recovery loop starts it, or `wfe run recover` does",
                workflow_run_id=run_id,
            ) from err

    def projection(self, workflow_id: str) -> dict[str, str]:
        """Annotation key → Keyword search attribute for runs of ``workflow_id``.

        See :meth:`KernelSearchAttributes.projection`.
        """
        return self.search_attributes.projection(workflow_id)

    async def check_search_attributes(self) -> None:
        """Check the server against the search attributes the workflows use.

        The worker does this when it starts; see :meth:`KernelSearchAttributes.check`.
        """
        await self.search_attributes.check()

    async def _start(
        self,
        run_id: str,
        workflow_id: str,
        *,
        start_group: int,
        priority: int,
        attempt: int = 0,
        temporal_id: str | None = None,
        note: str | None = None,
        plan: RunPlan | None = None,
        run_input: Any = None,
    ) -> bool:
        """Start the run's Temporal workflow; False if it was already started.

        It executes as Workflow Type ``workflow_id`` (:class:`PipelineWorkflow`), with the
        run's input as its first argument, so the Temporal UI shows the user's input first.
        """
        usable = await self.search_attributes.usable()
        enabled = RUN_STATUS_ATTRIBUTE.name in usable
        pairs: list[SearchAttributePair[Any]] = [
            SearchAttributePair(RUN_STATUS_ATTRIBUTE, RunStatus.PENDING.value),
            SearchAttributePair(WORKFLOW_ID_ATTRIBUTE, workflow_id),
            SearchAttributePair(RUN_ID_ATTRIBUTE, run_id),
            SearchAttributePair(ATTEMPT_ATTRIBUTE, attempt),
        ]
        search = TypedSearchAttributes([p for p in pairs if p.key.name in usable]) or None
        projected = {k: a for k, a in self.projection(workflow_id).items() if a in usable}
        lines = []
        if attempt > 0:
            # The Temporal UI shows each rerun as its own execution: say what it continues.
            lines.append(
                f"Rerun {attempt} of run `{run_id}` from group {start_group}; previous "
                f"execution `{temporal_workflow_id(run_id, attempt - 1)}`"
            )
        if note:
            lines.append(note)
        if self.viewer_url:
            lines.append(f"Provenance: {self.viewer_url}/runs/{run_id}")
        details = "\n\n".join(lines) or None
        try:
            await self.client.start_workflow(
                workflow_id,
                args=[
                    run_input,
                    RunWorkflowInput(
                        run_id=run_id,
                        workflow_id=workflow_id,
                        start_group=start_group,
                        search_attributes=enabled,
                        projected_keys=projected,
                        continue_as_new_after_events=self.continue_as_new_after_events,
                        plan=plan,
                    ),
                ],
                id=temporal_id or temporal_workflow_id(run_id, attempt),
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=search,
                static_summary=f"engine workflow `{workflow_id}` · run `{run_id}`"
                + (f" · rerun {attempt}" if attempt else ""),
                static_details=details,
                priority=temporal_priority(priority),
            )
        except WorkflowAlreadyStartedError:
            return False
        return True

    def _handle(self, temporal_id: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(temporal_id)

    async def _cancel(self, command: RunCancel) -> RunCancelResult:
        cancelled = await self.store.cancel_run(
            command.workflow_run_id, command.reason, causation_id=str(uuid.uuid4())
        )
        if cancelled:
            temporal_id = await self.store.temporal_workflow_id(command.workflow_run_id)
            if temporal_id:
                try:
                    await self._handle(temporal_id).cancel()
                except RPCError as err:  # already closed or never started: SQL decides
                    log.info("cancel of %s: %s", temporal_id, err)
            return RunCancelResult(cancelled=True)
        try:
            status = (await self.store.get_run(command.workflow_run_id)).status.value
        except RunNotFoundError:
            return RunCancelResult(
                cancelled=False, reason=f"run {command.workflow_run_id} does not exist"
            )
        return RunCancelResult(
            cancelled=False,
            reason=f"run {command.workflow_run_id} is {status}: only PENDING or RUNNING runs "
            "can be cancelled",
        )

    async def _rerun(self, command: RunRerunFrom) -> RunRerunFromResult:
        run = await self.store.get_run(command.workflow_run_id)
        workflow = self.workflow(run.workflow_id)
        if not workflow.has_stage(command.from_stage_id):
            raise StageNotFoundError(
                f"Stage {command.from_stage_id} not found in workflow {workflow.id}",
                workflow_run_id=run.id,
                stage_id=command.from_stage_id,
            )
        group = workflow.get_execution_group_index(command.from_stage_id)
        plan = plan_of(workflow, run.config)
        before = [spec.stage_id for specs in plan[: group - 1] for spec in specs]
        rerun = await self.store.rerun_from(
            run.id,
            target_group=group,
            groups_before=before,
            target_stages=[NewStage.of(spec) for spec in plan[group - 1]],
            temporal_workflow_id=f"{temporal_workflow_id(run.id)}-rerun-{{attempt}}",
            causation_id=command.idempotency_key or str(uuid.uuid4()),
            idempotency_key=command.idempotency_key,
            from_stage_id=command.from_stage_id,
        )
        result = RunRerunFromResult(
            workflow_run_id=run.id,
            from_stage_id=command.from_stage_id,
            deleted_stages=rerun.deleted_stages,
        )
        if rerun.repeated:
            # The first rerun started its execution, or the recovery pass restarts the run
            # (starting it here could race that restart into a second execution).
            return result
        if not isinstance(self.blob_store, SqlBlobStore):  # (SQL blobs went in the transaction)
            for stage_id in rerun.deleted_stages:
                try:
                    await self.blob_store.delete_prefix(run.id, f"{stage_id}/")
                except Exception as err:  # cleanup only: a leftover blob is harmless
                    log.warning("rerun cleanup of %s/%s: %s", run.id, stage_id, err)
        await self._start_or_report(
            run.id,
            workflow.id,
            start_group=group,
            priority=run.priority,
            attempt=rerun.attempt,
            run_input=run.input,
        )
        return result

    async def _fork(self, command: RunFork) -> RunForkResult:
        async def start(
            run_id: str, workflow_id: str, group: int, priority: int, note: str
        ) -> None:
            await self._start_or_report(
                run_id, workflow_id, start_group=group, priority=priority, note=note
            )

        return await fork_run(
            command,
            store=self.store,
            workflow_of=self.workflow,
            limits=self.annotation_limits,
            temporal_id_template=temporal_workflow_id("{run_id}"),
            start=start,
        )

    async def _claim_pending(self, command: RunClaimPending) -> RunClaimPendingResult:
        started = []
        for pending in await self.store.pending_runs(command.max_claims):
            # The id is derived from the run: of several claimers (or the creator), one starts.
            run_input = (await self.store.get_run(pending.run_id)).input
            if await self._start(
                pending.run_id,
                pending.workflow_id,
                start_group=1,
                priority=pending.priority,
                run_input=run_input,
            ):
                started.append(pending.run_id)
        restarted: list[str] = []
        now = datetime.now(UTC)
        for running in await self.store.running_runs(RUNNING_SCAN_LIMIT):
            if len(restarted) >= command.max_claims:
                break
            temporal_id = running.temporal_id
            state = await self._execution_state(temporal_id) if temporal_id else "missing"
            if state == "running":
                continue
            if state == "missing" and now - running.updated_at < self.start_grace:
                continue  # a rerun's start may still be on its way: give it time
            run_id = running.run_id
            new_id = restart_workflow_id(temporal_id or temporal_workflow_id(run_id))
            group = await self.store.restart_run(
                run_id, expected_temporal_id=temporal_id, temporal_id=new_id
            )
            if group is None:  # another claimer restarted it, or it finished meanwhile
                continue
            ended = "never started" if state == "missing" else "ended"
            note = f"Restart of run `{run_id}` at group {group}: execution `{temporal_id}` {ended}"
            run_input = (await self.store.get_run(run_id)).input
            attempt = max((s.attempt for s in await self.store.list_stages(run_id)), default=0)
            if await self._start(
                run_id,
                running.workflow_id,
                start_group=group,
                priority=running.priority,
                attempt=attempt,
                temporal_id=new_id,
                note=note,
                run_input=run_input,
            ):
                log.warning("restarted run %s as %s (%s)", run_id, new_id, note)
                restarted.append(run_id)
        return RunClaimPendingResult(started=started, restarted=restarted)

    async def _execution_state(self, temporal_id: str) -> str:
        """``running``, ``closed`` or ``missing`` (never started, or deleted since)."""
        try:
            description = await self._handle(temporal_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return "missing"
            raise
        return "running" if description.status == WorkflowExecutionStatus.RUNNING else "closed"

    async def resume_stage(
        self,
        run_id: str,
        stage_id: str,
        *,
        output: Any = None,
        data: Any = None,
        attributes: Mapping[str, Any] | None = None,
        actor: Actor | None = None,
    ) -> None:
        """Wake a SUSPENDED stage now: complete it with ``output``, or check it with ``data``.

        Raises:
            RunNotFoundError: no such run.
            StageNotFoundError: the run has no such stage.
            InvalidStateError: the stage is not SUSPENDED.
        """
        stages = {s.stage_id: s for s in await self.store.list_stages(run_id)}
        if stage_id not in stages:
            raise StageNotFoundError(
                f"Stage {stage_id} not found in run {run_id}",
                workflow_run_id=run_id,
                stage_id=stage_id,
            )
        if stages[stage_id].waiting_since is not None:
            raise InvalidStateError(
                f"Stage {stage_id} is an approval stage: decide it with kernel.approvals.decide",
                workflow_run_id=run_id,
                stage_id=stage_id,
            )
        if stages[stage_id].status != RunStatus.SUSPENDED:
            raise InvalidStateError(
                f"Stage {stage_id} is {stages[stage_id].status}, expected SUSPENDED",
                workflow_run_id=run_id,
                stage_id=stage_id,
            )
        drafts = build_drafts(attributes or {}, actor=actor, limits=self.annotation_limits)
        temporal_id = await self.store.temporal_workflow_id(run_id)
        assert temporal_id is not None
        try:
            await self._handle(temporal_id).execute_update(
                "wfe.resume_stage",
                ResumeRequest(stage_id=stage_id, output=output, data=data, annotations=drafts),
            )
        except WorkflowUpdateFailedError as err:
            # The workflow refused it (the stage settled, or another resume got there first).
            raise InvalidStateError(
                f"Stage {stage_id} of run {run_id} cannot be resumed: "
                f"{getattr(err.cause, 'message', None) or err}",
                workflow_run_id=run_id,
                stage_id=stage_id,
            ) from err

    # -- reads --------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord:
        """The run, its output resolved if stored by reference; raises RunNotFoundError."""
        return await self._resolved(await self.store.get_run(run_id))

    async def _resolved(self, run: RunRecord) -> RunRecord:
        output = await resolve_outputs(self.blob_store, run.id, run.output)
        return run if output is run.output else run.model_copy(update={"output": output})

    async def verify(self, run_id: str) -> ChainVerification:
        """Check the run's tamper-evident record chain against its records.

        Returns ``ok`` with the number of links checked, or the first record that does not match
        (:mod:`engine.core.evidence`).
        """
        return await self.store.verify_chain(run_id)

    async def export_bundle(self, run_id: str) -> dict[str, Any]:
        """The run's evidence bundle (:mod:`engine.runtime.evidence_bundle`), unsigned.

        It carries a digest of each of its Temporal executions' histories that the server still has.
        """
        records = await self.store.chain_records(run_id)
        run = await self.store.get_run(run_id)
        attempts = max((int(s["attempt"]) for s in records.stages.values()), default=0)
        candidates = [temporal_workflow_id(run_id, a) for a in range(attempts + 1)]
        current = await self.store.temporal_workflow_id(run_id)
        if current and current not in candidates:
            candidates.append(current)
        histories = []
        for workflow_id in candidates:
            try:
                history = await self.client.get_workflow_handle(workflow_id).fetch_history()
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    continue  # never started, or past the namespace's retention
                raise
            text = history.to_json()
            histories.append(
                {
                    "workflow_id": workflow_id,
                    "run_id": history.run_id,
                    "events": len(history.events),
                    "sha256": hashlib.sha256(text.encode()).hexdigest(),
                }
            )
        return build_bundle(records, run.model_dump(mode="json"), histories)

    async def list_stages(self, run_id: str) -> list[StageRecord]:
        """The run's stage records in execution order."""
        return await self.store.list_stages(run_id)

    async def list_logs(self, run_id: str) -> list[LogRecord]:
        """The run's log lines, oldest first."""
        return await self.store.list_logs(run_id)

    async def list_outbox_events(self, run_id: str) -> list[OutboxEventRecord]:
        """The run's outbox events in sequence order."""
        return await self.store.list_outbox_events(run_id)

    async def wait_for_run(
        self, run_id: str, timeout: timedelta = timedelta(seconds=30)
    ) -> RunRecord:
        """Wait (in real time) until the run is terminal in the side-store.

        It waits on the run's Temporal execution, which closes right after the run's final
        commit, and reads the side-store again whenever that returns; a run whose execution
        is not there (its start was lost) is polled.

        Raises:
            TimeoutError: the run is still active after ``timeout``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout.total_seconds()
        closed = 0
        # Most runs are driven by their first execution, whose id is known: wait on it before
        # reading anything (a rerun's or restart's id is read from the run below).
        temporal_id: str | None = temporal_workflow_id(run_id)
        while True:
            remaining = max(deadline - loop.time(), 0.001)
            if temporal_id is None:
                await asyncio.sleep(min(0.02, remaining))
            elif await self._execution_closed(temporal_id, min(remaining, 5.0)):
                closed += 1
                if closed > 2:  # closed, yet not terminal in SQL: a rerun's new execution, or lag
                    await asyncio.sleep(min(0.02, remaining))
                run = await self.store.get_run(run_id)  # the usual end: the only read
                if run.status in TERMINAL_STATUSES:
                    return await self._resolved(run)
            status, temporal_id = await self.store.run_progress(run_id)
            if status in TERMINAL_STATUSES:
                return await self._resolved(await self.store.get_run(run_id))
            if loop.time() >= deadline:
                raise TimeoutError(f"run {run_id} still {status} after {timeout}")

    async def _execution_closed(self, temporal_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the Temporal execution to close."""
        try:
            await asyncio.wait_for(self._handle(temporal_id).result(), timeout=timeout)
        except TimeoutError:
            return False
        except Exception:  # failed, cancelled, not found: the side-store has the status
            pass
        return True

    def stage_specs(self, workflow_id: str, config: Mapping[str, Any]) -> Sequence[Any]:
        """The plan of a registered workflow as stage specs (the CLI shows it)."""
        return plan_of(self.workflow(workflow_id), config)
