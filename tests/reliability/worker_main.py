"""A worker process for the reliability tests: ``python tests/reliability/worker_main.py``.

It builds a :class:`~engine.Kernel` with the workflows of ``workloads.py`` and runs
:func:`~engine.create_worker` until it is killed. Configured by environment variables:

``WFE_TEMPORAL_ADDRESS``, ``WFE_DATABASE_URL``, ``WFE_TASK_QUEUE``
    Where the worker connects (the engine's own settings variables).
``REL_MARKERS``
    Directory for the marker files below.
``REL_GATE`` (optional)
    Connect, then wait until this file exists before polling: a standby worker whose start-up
    cost is paid before the crash it recovers from.
``REL_HOOKS`` (optional, ``1`` to enable)
    Hold the first commit of a completed ``work`` stage according to its run's mode (the stage
    returns it in its output; see ``workloads.MODES``); a commit whose marker exists already is
    the recovery of a held one and goes through:

    ``before_commit``: write ``<run id>.work.before_commit`` and sleep before committing; the
    stage's code has finished, so a kill now is a crash between the stage finishing and its
    commit (the commit runs at the end of the stage activity).

    ``in_commit``: do every write of the commit, flush them to the database, write
    ``<run id>.work.in_commit`` and keep the transaction open before committing; a kill now is
    a crash during the commit transaction.

    ``after_commit``: commit, then write ``<run id>.work.after_commit`` and sleep before the
    activity returns; a kill now is a crash after the commit landed and before Temporal
    recorded the activity's result.
``REL_HOOK_SECONDS``
    How long a hook holds (default 30; the tests kill the worker long before).
``REL_FILE_LIMIT`` (optional, ``1`` to enable)
    Make the process ready to run under a file-size limit (``RLIMIT_FSIZE``) that the test
    sets and lifts from outside (``prlimit``): writes past it fail with ``EFBIG`` instead of
    ``SIGXFSZ`` killing the process, and the process's output goes through a ``cat`` child
    (which has no limit), so that only the side-store's files meet it.
``REL_STICKY_SECONDS``
    The worker's sticky-queue schedule-to-start timeout: how soon Temporal hands a dead
    worker's cached workflows to another worker (default 1).

The worker writes ``<REL_MARKERS>/worker-<pid>.ready`` once it polls.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine import Kernel, create_worker  # noqa: E402
from engine.core.payloads import CommitResult, StageCommit  # noqa: E402
from engine.store import SqlStore, stage_rows  # noqa: E402
from tests.reliability.workloads import (  # noqa: E402
    crash_workflow,
    load_workflow,
    skew_workflow,
    touch,
)


def install_hooks(seconds: float, markers: Path) -> None:
    """Wrap ``SqlStore.commit_stage`` in this process only (see the module docstring)."""
    original = SqlStore.commit_stage

    async def commit_stage(self: SqlStore, commit: StageCommit) -> CommitResult:
        output = commit.outcome.output
        mode = output.get("mode") if isinstance(output, dict) else None
        if commit.stage.stage_id != "work" or mode not in (
            "before_commit",
            "in_commit",
            "after_commit",
        ):
            return await original(self, commit)
        marker = markers / f"{commit.run_id}.work.{mode}"
        if marker.exists():
            return await original(self, commit)  # held once already: this is the recovery
        if mode == "before_commit":
            touch(marker)
            await asyncio.sleep(seconds)
            return await original(self, commit)
        if mode == "after_commit":
            result = await original(self, commit)
            touch(marker)
            await asyncio.sleep(seconds)
            return result
        async with self.transaction() as session:
            result = await session.run_sync(stage_rows.commit_stage, commit)
            await session.flush()  # every row is written, the transaction is open
            touch(marker)
            await asyncio.sleep(seconds)
            return result

    SqlStore.commit_stage = commit_stage  # type: ignore[method-assign]


def prepare_for_a_file_limit() -> None:
    """See ``REL_FILE_LIMIT`` in the module docstring."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    relay = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=sys.stdout.fileno())
    assert relay.stdin is not None
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(relay.stdin.fileno(), 1)
    os.dup2(relay.stdin.fileno(), 2)


async def main() -> None:
    if os.environ.get("REL_FILE_LIMIT") == "1":
        prepare_for_a_file_limit()
    markers = Path(os.environ["REL_MARKERS"])
    if os.environ.get("REL_HOOKS") == "1":
        install_hooks(float(os.environ.get("REL_HOOK_SECONDS", "30")), markers)
    kernel = await Kernel.connect(workflows=[crash_workflow(), load_workflow(), skew_workflow()])
    try:
        gate = os.environ.get("REL_GATE")
        if gate:
            while not Path(gate).exists():
                await asyncio.sleep(0.02)
        sticky = timedelta(seconds=float(os.environ.get("REL_STICKY_SECONDS", "1")))
        async with create_worker(kernel, sticky_queue_schedule_to_start_timeout=sticky):
            touch(markers / f"worker-{os.getpid()}.ready")
            await asyncio.Event().wait()  # until killed
    finally:
        await kernel.close()


if __name__ == "__main__":
    asyncio.run(main())
