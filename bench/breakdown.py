"""Where a run's time goes: Temporal histories taken apart, side-store calls timed, CPU and RSS.

Used by :mod:`bench.overhead` and :mod:`bench.scale`; nothing here starts a run.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from bench.common import median
from engine.store import SqlStore

__all__ = [
    "Breakdown",
    "StoreTimer",
    "breakdown",
    "cpu_seconds",
    "median_breakdown",
    "postgres_backend_pids",
    "rss_mib",
    "sample_peak_rss",
    "thread_cpu",
]


@dataclass
class Breakdown:
    """Timings read from one workflow history (milliseconds)."""

    events: float
    markers: float
    """Local activities recorded (``MarkerRecorded`` events)."""
    wall_ms: float
    """Workflow started to closed."""
    first_schedule_ms: float
    """Workflow start to the first activity scheduled."""
    schedule_to_start_ms: float
    """Mean per activity: scheduled to picked up by the worker."""
    start_to_close_ms: float
    """Mean per activity: the activity itself (engine: user code and the stage's commit)."""
    close_to_next_ms: float
    """Mean per activity: completed to the next one scheduled (the workflow task round trip)."""
    tail_ms: float
    """Last activity completed to workflow closed."""


def breakdown(history: WorkflowHistory) -> Breakdown:
    def ms(event: Any) -> float:
        return float(event.event_time.ToMicroseconds()) / 1000

    events = list(history.events)

    def of(kind: int) -> list[Any]:
        return [e for e in events if e.event_type == kind]

    scheduled = of(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    started = of(EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED)
    completed = of(EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
    first, last = ms(events[0]), ms(events[-1])
    s2s = [ms(b) - ms(a) for a, b in zip(scheduled, started, strict=False)]
    s2c = [ms(c) - ms(b) for b, c in zip(started, completed, strict=False)]
    c2n = [ms(n) - ms(c) for c, n in zip(completed, scheduled[1:], strict=False)]
    return Breakdown(
        events=len(events),
        markers=len(of(EventType.EVENT_TYPE_MARKER_RECORDED)),
        wall_ms=last - first,
        first_schedule_ms=ms(scheduled[0]) - first if scheduled else 0.0,
        schedule_to_start_ms=sum(s2s) / len(s2s) if s2s else 0.0,
        start_to_close_ms=sum(s2c) / len(s2c) if s2c else 0.0,
        close_to_next_ms=sum(c2n) / len(c2n) if c2n else 0.0,
        tail_ms=last - ms(completed[-1]) if completed else 0.0,
    )


def median_breakdown(each: list[Breakdown]) -> Breakdown:
    """Field by field, the median over the timed single runs."""
    names = Breakdown.__dataclass_fields__
    return Breakdown(**{name: median([getattr(b, name) for b in each]) for name in names})


class StoreTimer:
    """Times the side-store calls (wraps the bound methods on the instance) and counts SQL.

    ``create_run`` and ``get_run`` are the client side (``RunCreate`` and ``wait_for_run``);
    the others run inside the worker's activities.
    """

    METHODS = ("create_run", "start_run", "begin_stage", "commit_stage", "finalize_run", "get_run")

    def __init__(self, store: SqlStore) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.enabled = False
        self.statements = 0
        self.transactions = 0
        for name in self.METHODS:
            setattr(store, name, self._wrap(name, getattr(store, name)))
        for engine in (store.sync_engine, store.engine.sync_engine):  # store thread, async
            event.listen(engine, "before_cursor_execute", self._statement)
            event.listen(engine, "commit", self._commit)

    def _statement(self, connection: Connection, *_args: Any) -> None:
        if self.enabled:
            self.statements += 1
            # An autocommitted statement (the one-statement stage commit) is a transaction.
            if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
                self.transactions += 1

    def _commit(self, *_args: Any) -> None:
        if self.enabled:
            self.transactions += 1

    def _wrap(self, name: str, original: Callable[..., Awaitable[Any]]) -> Any:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                if self.enabled:
                    self.times[name].append((time.perf_counter() - started) * 1000)

        return timed


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process so far (0 when unknown).

    For a process of one thread (a PostgreSQL backend), from the scheduler's count in
    nanoseconds (``/proc/PID/schedstat``, which covers the main thread only): ``/proc/PID/stat``
    counts in clock ticks (10 ms), as long as a chunk of 25 stage commits takes a backend, so
    each reading of a chunk was off by up to a tick. Other processes (the dev server) by
    ``stat``, whose count includes every thread, over phases of seconds.
    """
    if pid is None:
        return 0.0
    try:
        if len(os.listdir(f"/proc/{pid}/task")) == 1:
            return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int | str = "self", field: str = "VmRSS") -> float:
    """Resident memory of a process in MiB (``VmHWM``: its peak so far); 0 where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def sample_peak_rss(peak: list[float], pid: int | str = "self") -> None:
    """Keep ``peak[0]`` at the highest RSS seen, every 100 ms, until cancelled (every 20 ms,
    reading ``/proc`` took about 2% of the event loop's CPU in the throughput phase)."""
    while True:
        peak[0] = max(peak[0], rss_mib(pid))
        await asyncio.sleep(0.1)


def postgres_backend_pids(url: str) -> list[int]:
    """The server processes serving ``url``'s database now (its pool's connections)."""
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    with psycopg.connect(parsed.render_as_string(hide_password=False), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(row[0]) for row in rows]


THREAD_GROUPS = (
    ("MainThread", "event loop"),
    ("wfe-store", "side-store threads"),
    ("temporal_workflow", "workflow threads"),
    ("tokio", "Temporal core"),
)
"""Thread name prefixes (Python's name, else the OS's) and the group they are counted in."""


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's threads, added up per :data:`THREAD_GROUPS` group
    (``other`` for the rest); threads that ended are not counted."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    groups: dict[str, float] = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return groups
    for task in tasks:
        try:
            stat = Path(f"/proc/self/task/{task}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        name = names.get(int(task)) or stat[stat.index("(") + 1 : stat.rindex(")")]
        group = next((label for prefix, label in THREAD_GROUPS if name.startswith(prefix)), "other")
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        groups[group] = groups.get(group, 0.0) + seconds
    return groups
