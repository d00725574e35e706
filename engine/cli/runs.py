"""``wfe run create|cancel|rerun|show``."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer

from engine.cli.connection import open_kernel, open_store
from engine.cli.errors import fail
from engine.cli.options import CommonOptions, execute, with_common
from engine.cli.parsing import parse_attributes, parse_json
from engine.cli.progress import progress_echo, wait_with_progress
from engine.cli.render import emit_json, run_document, run_summary, stage_table, temporal_ui_url
from engine.cli.workflow_loading import DEFAULT_WORKFLOWS, WorkflowsOption, load_workflows, registry
from engine.commands import RunCancel, RunCreate, RunCreateResult, RunFork, RunRerunFrom
from engine.core.annotations import Actor, RunCreateAnnotation
from engine.core.records import RunStatus
from engine.errors import WorkflowNotFoundError
from engine.runtime.kernel import Kernel
from engine.store import SqlStore

__all__ = ["actor_of", "app"]

app = typer.Typer(help="Create, cancel, rerun and inspect runs.", no_args_is_help=True)

RunId = Annotated[str, typer.Argument(help="The run id (workflow_run_id).", show_default=False)]
Wait = Annotated[
    bool, typer.Option("--wait", help="Wait for the run to end, showing stage progress.")
]
Timeout = Annotated[
    float, typer.Option("--timeout", min=0.1, help="Seconds --wait waits before giving up.")
]


def actor_of(kind: str | None, actor_id: str | None) -> Actor | None:
    """The actor given by ``--actor-kind`` and ``--actor-id`` (both or neither)."""
    if kind is None and actor_id is None:
        return None
    if kind is None or actor_id is None:
        fail("--actor-kind and --actor-id go together: give both or neither")
    return Actor(kind=kind, id=actor_id)


async def _print_run(options: CommonOptions, store: SqlStore, run_id: str) -> RunStatus:
    """Print the run and its stages; returns its status."""
    run = await store.get_run(run_id)
    stages = await store.list_stages(run_id)
    temporal_id = await store.temporal_workflow_id(run_id)
    if options.json:
        emit_json(run_document(run, stages, temporal_workflow_id=temporal_id))
        return run.status
    link = (
        temporal_ui_url(options.settings.temporal_ui_url, options.namespace, temporal_id)
        if temporal_id
        else None
    )
    options.echo(run_summary(run, temporal_workflow_id=temporal_id, ui_url=link))
    options.echo()
    options.echo(stage_table(stages))
    return run.status


async def _wait_and_show(
    options: CommonOptions,
    kernel: Kernel,
    run_id: str,
    timeout: float,
    seen: dict[str, tuple[str, int]] | None = None,
) -> None:
    echo = progress_echo(options)
    echo(f"Waiting for run {run_id} ...")
    await wait_with_progress(
        kernel, run_id, timeout=timedelta(seconds=timeout), echo=echo, seen=seen
    )
    status = await _print_run(options, kernel.store, run_id)
    if status != RunStatus.COMPLETED:
        raise typer.Exit(1)


# -- create -----------------------------------------------------------------------------------


async def _create(
    options: CommonOptions, command: RunCreate, workflows_spec: str, wait: bool, timeout: float
) -> None:
    workflows = registry(load_workflows(workflows_spec))
    workflow = workflows.get(command.workflow_id)
    if workflow is None:
        known = ", ".join(sorted(workflows)) or "(none)"
        raise WorkflowNotFoundError(
            f"Workflow {command.workflow_id} not found in registry "
            f"(registered from {workflows_spec}: {known})"
        )
    # Checked before connecting, so that bad input fails fast even with no server around.
    workflow.parse_input(command.input)
    workflow.merge_config(command.config)
    async with open_kernel(options, workflows.values()) as kernel:
        created: RunCreateResult = await kernel.dispatch(command)
        if not wait:
            if options.json:
                emit_json(created)
            else:
                options.echo(f"Created run {created.workflow_run_id} ({created.status.value})")
            return
        progress_echo(options)(f"Created run {created.workflow_run_id}")
        await _wait_and_show(options, kernel, created.workflow_run_id, timeout)


@app.command("create")
@with_common
def create(
    options: CommonOptions,
    workflow_id: Annotated[str, typer.Argument(help="Id of a registered workflow.")],
    input: Annotated[str, typer.Option("--input", help="Run input as JSON.", show_default=False)],
    config: Annotated[
        str | None, typer.Option("--config", help="Per-stage config as JSON: {stage_id: {...}}.")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Repeats with this key return the same run."),
    ] = None,
    annotation: Annotated[
        list[str] | None,
        typer.Option(
            "--annotation",
            "-a",
            help="key=value provenance attribute stored with the run (repeatable); "
            "the value is JSON when it parses as JSON, else a string.",
        ),
    ] = None,
    actor_kind: Annotated[
        str | None, typer.Option("--actor-kind", help="Actor of --annotation, e.g. user.")
    ] = None,
    actor_id: Annotated[
        str | None, typer.Option("--actor-id", help="Actor of --annotation, e.g. an email.")
    ] = None,
    priority: Annotated[int, typer.Option("--priority", help="Run priority.")] = 5,
    wait: Wait = False,
    timeout: Timeout = 300.0,
    workflows: WorkflowsOption = DEFAULT_WORKFLOWS,
) -> None:
    """Create a run of WORKFLOW_ID and start it.

    With --wait, show stage progress until the run ends, then the run; the exit code is 1
    unless it COMPLETED.
    """
    raw_input = parse_json(input, "--input")
    raw_config = parse_json(config, "--config") if config is not None else {}
    attributes = parse_attributes(annotation or [], "--annotation")
    actor = actor_of(actor_kind, actor_id)
    envelopes: list[dict[str, Any]] = []
    if attributes:
        envelopes.append(
            RunCreateAnnotation(attributes=attributes, actor=actor).model_dump(exclude_none=True)
        )
    elif actor is not None:
        fail("--actor-kind/--actor-id describe --annotation attributes: give some")
    command = RunCreate.model_validate(
        {
            "workflow_id": workflow_id,
            "input": raw_input,
            "config": raw_config,
            "idempotency_key": idempotency_key,
            "priority": priority,
            "annotations": envelopes,
        }
    )
    execute(_create(options, command, workflows, wait, timeout))


# -- cancel -----------------------------------------------------------------------------------


async def _cancel(options: CommonOptions, run_id: str, reason: str | None) -> None:
    async with open_kernel(options) as kernel:
        run = await kernel.get_run(run_id)  # unknown run: RunNotFoundError, exit 2
        result = await kernel.dispatch(RunCancel(workflow_run_id=run_id, reason=reason))
        if options.json:
            emit_json(result)
        elif result.cancelled:
            options.echo(f"Cancelled run {run_id}")
        if not result.cancelled:
            # A script must tell "cancelled" from "was already over": exit 1, saying why.
            fail(result.reason or f"run {run_id} is {run.status.value}", exit_code=1)


@app.command("cancel")
@with_common
def cancel(
    options: CommonOptions,
    run_id: RunId,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (stored in the event).")
    ] = None,
) -> None:
    """Cancel a PENDING or RUNNING run (a terminal run is left as it is)."""
    execute(_cancel(options, run_id, reason))


# -- rerun ------------------------------------------------------------------------------------


async def _rerun(
    options: CommonOptions,
    run_id: str,
    from_stage: str,
    workflows_spec: str,
    wait: bool,
    timeout: float,
) -> None:
    workflows = load_workflows(workflows_spec)
    async with open_kernel(options, workflows) as kernel:
        # Stages the rerun keeps are not shown again by --wait.
        stages = await kernel.list_stages(run_id)
        before = {stage.stage_id: (stage.status.value, stage.attempt) for stage in stages}
        command = RunRerunFrom(workflow_run_id=run_id, from_stage_id=from_stage)
        result = await kernel.dispatch(command)
        if not wait:
            if options.json:
                emit_json(result)
            else:
                deleted = ", ".join(result.deleted_stages) or "(none)"
                options.echo(f"Rerunning run {run_id} from {from_stage} (replaced: {deleted})")
            return
        progress_echo(options)(f"Rerunning run {run_id} from {from_stage}")
        await _wait_and_show(options, kernel, run_id, timeout, seen=before)


@app.command("rerun")
@with_common
def rerun(
    options: CommonOptions,
    run_id: RunId,
    from_stage: Annotated[
        str, typer.Option("--from-stage", help="Stage id whose group reruns.", show_default=False)
    ],
    wait: Wait = False,
    timeout: Timeout = 300.0,
    workflows: WorkflowsOption = DEFAULT_WORKFLOWS,
) -> None:
    """Rerun a COMPLETED or FAILED run from a stage's group on (attempt + 1)."""
    execute(_rerun(options, run_id, from_stage, workflows, wait, timeout))


# -- recover ----------------------------------------------------------------------------------


async def _recover(options: CommonOptions, max_claims: int) -> None:
    from engine.runtime.recovery import recover_orphans

    async with open_kernel(options) as kernel:
        result = await recover_orphans(kernel, max_claims=max_claims)
        if options.json:
            emit_json(result)
            return
        options.echo(
            f"Started {len(result.started)} PENDING run(s)"
            + (f": {', '.join(result.started)}" if result.started else "")
        )
        options.echo(
            f"Restarted {len(result.restarted)} RUNNING run(s)"
            + (f": {', '.join(result.restarted)}" if result.restarted else "")
        )


@app.command("recover")
@with_common
def recover(
    options: CommonOptions,
    max_claims: Annotated[
        int, typer.Option("--max-claims", help="At most this many runs of each kind.")
    ] = 50,
) -> None:
    """Start runs left PENDING, restart RUNNING runs whose Temporal execution is gone.

    One recovery pass; the worker does this every --recovery-interval.
    """
    execute(_recover(options, max_claims))


# -- fork -------------------------------------------------------------------------------------


async def _fork(
    options: CommonOptions, command: RunFork, workflows_spec: str, wait: bool, timeout: float
) -> None:
    workflows = load_workflows(workflows_spec)
    async with open_kernel(options, workflows) as kernel:
        result = await kernel.dispatch(command)
        if not wait:
            if options.json:
                emit_json(result)
            else:
                options.echo(
                    f"Forked run {result.source_run_id} from {result.from_stage_id}: "
                    f"new run {result.workflow_run_id}"
                )
            return
        progress_echo(options)(
            f"Forked run {result.source_run_id} from {result.from_stage_id}: "
            f"new run {result.workflow_run_id}"
        )
        copied = await kernel.list_stages(result.workflow_run_id)
        seen = {stage.stage_id: (stage.status.value, stage.attempt) for stage in copied}
        await _wait_and_show(options, kernel, result.workflow_run_id, timeout, seen=seen)


@app.command("fork")
@with_common
def fork(
    options: CommonOptions,
    run_id: RunId,
    from_stage: Annotated[
        str,
        typer.Option(
            "--from-stage", help="Stage id whose group the fork starts at.", show_default=False
        ),
    ],
    input: Annotated[
        str | None,
        typer.Option("--input", help="The fork's run input as JSON (default: the source's)."),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config", help="Config merged over the source's, as JSON: {stage_id: {...}}."
        ),
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Stored as revision.reason.")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Repeats with this key return the same fork."),
    ] = None,
    wait: Wait = False,
    timeout: Timeout = 300.0,
    workflows: WorkflowsOption = DEFAULT_WORKFLOWS,
) -> None:
    """Start a new run from a finished run's stage; the source run is left as it is.

    The stages before the stage's group are copied from the source (COMPLETED, with their
    outputs); the fork records revision.previous_run_id and revision.reason.
    """
    command = RunFork(
        workflow_run_id=run_id,
        from_stage_id=from_stage,
        input=parse_json(input, "--input") if input is not None else None,
        config=parse_json(config, "--config") if config is not None else None,
        reason=reason,
        idempotency_key=idempotency_key,
    )
    execute(_fork(options, command, workflows, wait, timeout))


# -- show -------------------------------------------------------------------------------------


async def _show(options: CommonOptions, run_id: str) -> None:
    async with open_store(options) as store:
        await _print_run(options, store, run_id)


@app.command("show")
@with_common
def show(options: CommonOptions, run_id: RunId) -> None:
    """Show a run and its stages (reads the side-store only: no Temporal server needed)."""
    execute(_show(options, run_id))
