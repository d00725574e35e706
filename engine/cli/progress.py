"""Showing a run's progress while a command waits for it to end."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import typer

from engine.cli.errors import fail
from engine.cli.options import CommonOptions
from engine.cli.render import Echo, stage_line
from engine.core.records import RunRecord
from engine.runtime.kernel import Kernel

__all__ = ["progress_echo", "wait_with_progress"]


def progress_echo(options: CommonOptions) -> Echo:
    """Progress lines go to stderr, so stdout holds only the result (e.g. JSON)."""

    def echo(line: str) -> None:
        typer.echo(line, err=True)

    return echo


async def wait_with_progress(
    kernel: Kernel,
    run_id: str,
    *,
    timeout: timedelta,
    echo: Echo,
    indent: str = "  ",
    seen: dict[str, tuple[str, int]] | None = None,
) -> RunRecord:
    """Wait until the run is terminal, printing each stage status change as it happens.

    Args:
        kernel: The kernel the run and its stages are read through.
        run_id: The run to wait for.
        timeout: How long to wait in all.
        echo: Where the stage lines go.
        indent: What each stage line starts with.
        seen: (status, attempt) by stage id already shown; updated in place, so that a later
            wait (after a rerun) shows only what changed.

    Returns:
        The run's record, once terminal.

    Raises:
        CliError: (exit code 1) the run is still active after ``timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout.total_seconds()
    seen = {} if seen is None else seen
    while True:
        remaining = deadline - loop.time()
        run: RunRecord | None
        try:
            # Short slices: a stage that suspends briefly is still shown SUSPENDED.
            run = await kernel.wait_for_run(
                run_id, timeout=timedelta(seconds=max(0.0, min(0.25, remaining)))
            )
        except TimeoutError:
            run = None
        for stage in await kernel.list_stages(run_id):
            state = (stage.status.value, stage.attempt)
            if seen.get(stage.stage_id) != state:
                seen[stage.stage_id] = state
                echo(indent + stage_line(stage))
        if run is not None:
            return run
        if loop.time() >= deadline:
            status = (await kernel.get_run(run_id)).status.value
            fail(f"run {run_id} is still {status} after {timeout.total_seconds():g} s", 1)
