"""The process's wall clock, kept on Temporal's time when the machine's clock is far off.

Rows a worker stamps (stage times, logs, annotations, and the time part of their ids) sort a
run's history, next to rows stamped elsewhere: by the API process, and by the workflow's
local activities, which use Temporal's clock (``workflow.now()``). A worker whose clock is
minutes off would sort its annotations before or after those. Every stage activity reports
the time the server stamped on its start (:func:`observe`); when this process's clock is
further off than :data:`TOLERANCE`, its timestamps take the server's offset from then on.
(:func:`engine.core.ids.new_id` keeps ids increasing within a process unless the clock goes back
by more than 10 s, as a correction does: then its ids follow the corrected clock.)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta

__all__ = ["TOLERANCE", "now", "observe", "offset", "time_ns"]

TOLERANCE = timedelta(seconds=10)
"""A smaller difference is left alone: it cannot be told apart from the time an activity task
takes from the server to the stage code on a loaded machine (its start time is stamped when
the server hands the task out), and correcting by a delay would shift good clocks."""

RECENT = 32
"""Observations the offset is taken from. Each one falls short of the true offset by the time
its task took to arrive, so the largest of the recent ones is the closest; recent, so that a
clock that drifts is followed. One that differs from the offset by more than
:data:`TOLERANCE` (a clock stepped, another server) starts afresh."""

_offset_ns = 0
_recent: deque[int] = deque(maxlen=RECENT)
_lock = threading.Lock()


def observe(server_time: datetime) -> None:
    """Adopt Temporal's clock if this process's is off by more than :data:`TOLERANCE`.

    Args:
        server_time: A time the server stamped just now (an activity attempt's start time).
    """
    global _offset_ns
    measured = round(server_time.timestamp() * 1e9) - time.time_ns()
    with _lock:
        if _recent and abs(measured - max(_recent)) > TOLERANCE.total_seconds() * 1e9:
            _recent.clear()
        _recent.append(measured)
        best = max(_recent)
        _offset_ns = best if abs(best) > TOLERANCE.total_seconds() * 1e9 else 0


def offset() -> timedelta:
    """What :func:`now` adds to the machine's clock."""
    return timedelta(microseconds=_offset_ns // 1000)


def time_ns() -> int:
    """Nanoseconds since the epoch, on the corrected clock."""
    return time.time_ns() + _offset_ns


def now() -> datetime:
    """The corrected wall-clock time, in UTC."""
    return datetime.now(UTC) + timedelta(microseconds=_offset_ns // 1000)
