"""A worker whose wall clock is 10 minutes ahead of, or behind, everyone else's.

The worker process runs under Debian's ``libfaketime`` (``LD_PRELOAD``, ``FAKETIME=±600``:
every wall-clock read of the process, Python's and the Temporal SDK core's, is shifted; its
monotonic clock is left alone, as an NTP-less machine's would be). The test process, the
Temporal server and the database keep the real time. Each run (``skew`` workflow) annotates
from the worker, gets an annotation attached from the test process between two stages, then
suspends with a 1 s poll interval and a 4 s ``max_wait``. Asserted:

- the skew is real (a stage returns the worker's clock);
- annotation order within a run is insertion order, across the two processes' clocks;
- ``next_poll_at`` and ``max_wait_until`` in SQL are in Temporal's clock (the real one);
- polls come one interval apart; a run that never becomes ready fails on ``max_wait`` after
  4 s of real time, not at once and not 10 minutes late; the other completes;
- every row exactly once, on both backends.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine import Kernel, RunCreate
from engine.core import clock
from engine.core.records import StageRecord
from engine.store import SqlStore
from tests.reliability.support import FastEnv, WorkerProcess, table_counts, wait_for_files
from tests.reliability.workloads import (
    SKEW_MAX_WAIT,
    SKEW_POLL_INTERVAL,
    release_path,
    skew_workflow,
)

pytestmark = pytest.mark.reliability

WAIT = timedelta(seconds=60)
LIBFAKETIME = next(
    (
        path
        for pattern in ("/usr/lib/*/faketime/libfaketimeMT.so.1", "/usr/lib/faketime/*MT.so.1")
        for path in sorted(Path("/").glob(pattern.lstrip("/")))
    ),
    None,
)


@pytest.fixture(autouse=True)
def real_time_here() -> None:
    """This process stands for the API, on real time. An in-process worker of an earlier test
    on the time-skipping server taught it that server's (skipped) clock: forget it."""
    clock._recent.clear()
    clock._offset_ns = 0


def utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def poll_stage(kernel: Kernel, run_id: str) -> StageRecord:
    """The ``poll`` stage's record once it is SUSPENDED."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for stage in await kernel.list_stages(run_id):
            if stage.stage_id == "poll" and stage.status == "SUSPENDED":
                return stage
        await asyncio.sleep(0.05)
    raise TimeoutError(f"run {run_id}: the poll stage never suspended")


@pytest.mark.skipif(
    LIBFAKETIME is None, reason="libfaketime not installed (Debian: apt-get install faketime)"
)
@pytest.mark.parametrize("skew", [600, -600], ids=["ahead-10min", "behind-10min"])
async def test_worker_clock_skew(
    fast_env: FastEnv, store: SqlStore, tmp_path: Path, skew: int
) -> None:
    task_queue = f"tq-skew-{uuid.uuid4()}"
    worker = await WorkerProcess.spawn(
        tmp_path / "worker.log",
        database_url=store.url,
        application_name=f"rel-skew-{uuid.uuid4().hex[:6]}",
        WFE_TEMPORAL_ADDRESS=fast_env.address,
        WFE_TASK_QUEUE=task_queue,
        REL_MARKERS=str(tmp_path),
        LD_PRELOAD=str(LIBFAKETIME),
        FAKETIME=f"{skew:+d}",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    try:
        await wait_for_files([tmp_path / f"worker-{worker.pid}.ready"])
        kernel = Kernel(
            client=fast_env.client, store=store, workflows=[skew_workflow()], task_queue=task_queue
        )
        try:
            await check_runs(kernel, store, tmp_path, skew)
        except (AssertionError, TimeoutError) as exc:
            raise AssertionError(f"worker output:\n{worker.output()[-4000:]}") from exc
    finally:
        worker.check_alive()
        await worker.kill()


async def check_runs(kernel: Kernel, store: SqlStore, directory: Path, skew: int) -> None:
    job = {"dir": str(directory)}
    # Room for its three checks on a loaded machine: only the other run meets its max_wait.
    ready_job = {**job, "max_wait_seconds": 60}
    ready = (await kernel.dispatch(RunCreate(workflow_id="skew", input=ready_job))).workflow_run_id
    never = (
        await kernel.dispatch(RunCreate(workflow_id="skew", input={**job, "ready_after": 10**6}))
    ).workflow_run_id
    runs = [ready, never]
    await wait_for_files([directory / f"{run_id}.hold.entered" for run_id in runs])
    for run_id in runs:
        # From this process's (real) clock, between the worker's first and hold annotations.
        await kernel.annotations.attach(run_id, attributes={"skew.external": 9})
    # The worker's corrected clock is as exact as an activity task is quick to arrive (the
    # least delay of its recent starts: tens of milliseconds on this loaded machine), so the
    # next annotation comes a clear second later, as a person's or a later stage's would.
    await asyncio.sleep(1)
    for run_id in runs:
        release_path(directory, run_id).touch()

    suspended: dict[str, float] = {}
    for run_id in runs:
        stage = await poll_stage(kernel, run_id)
        suspended[run_id] = time.monotonic()
        real_now = datetime.now(UTC)
        assert stage.next_poll_at is not None and stage.max_wait_until is not None, stage
        # Temporal's clock, not the worker's 10 minutes off.
        assert abs(utc(stage.next_poll_at) - real_now) < timedelta(seconds=5), stage
        max_wait = timedelta(seconds=60) if run_id == ready else SKEW_MAX_WAIT
        assert abs(utc(stage.max_wait_until) - real_now) < max_wait + timedelta(seconds=5)

    done = await kernel.wait_for_run(ready, timeout=WAIT)
    assert done.status == "COMPLETED", done
    assert done.output == {"polls": 2}
    failed = await kernel.wait_for_run(never, timeout=WAIT)
    failed_after = time.monotonic() - suspended[never]
    assert failed.status == "FAILED", failed
    poll = {s.stage_id: s for s in await kernel.list_stages(never)}["poll"]
    assert poll.status == "FAILED" and "max_wait" in (poll.error_message or ""), poll
    # max_wait (4 s) measured in real time from the suspension (seen slightly after it began).
    assert SKEW_MAX_WAIT.total_seconds() - 1.5 <= failed_after <= 25, failed_after

    first = {s.stage_id: s for s in await kernel.list_stages(ready)}["first"]
    assert first.output_data is not None
    assert abs(first.output_data["worker_time"] - time.time() - skew) < 60, "no skew?"

    for run_id in runs:
        annotations = await kernel.annotations.list(run_id)
        keys = [a.key for a in annotations]
        checks = keys.count("skew.checked")
        assert keys == [
            "skew.first",
            "skew.external",
            "skew.hold",
            "skew.submitted",
            *["skew.checked"] * checks,
        ], [(a.key, a.created_at.isoformat()) for a in annotations]
        assert [a.id for a in annotations] == sorted(a.id for a in annotations)
        polled = [a for a in annotations if a.key == "skew.checked"]
        assert [a.value for a in polled] == list(range(checks))
        if run_id == ready:
            assert checks == 3  # polls 0 and 1 not ready, 2 ready
        else:
            assert 2 <= checks <= 5, checks  # about one a second for 4 s
        gaps = [
            (later.created_at - earlier.created_at).total_seconds()
            for earlier, later in zip(polled, polled[1:], strict=False)
        ]
        interval = SKEW_POLL_INTERVAL.total_seconds()
        # One interval apart (Temporal timers); the run that never gets ready has its last
        # check brought forward to its max_wait deadline.
        spaced = gaps if run_id == ready else gaps[:-1]
        assert all(interval * 0.8 <= gap <= interval + 10 for gap in spaced), gaps
        assert all(gap <= interval + 10 for gap in gaps), gaps
        events = await kernel.list_outbox_events(run_id)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))

    counts = await table_counts(store)
    assert counts["workflow_runs"] == 2
    assert counts["workflow_stages"] == 6
