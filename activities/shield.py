"""Letting a side-store transaction finish even when its activity is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["finish_transaction"]

T = TypeVar("T")


async def finish_transaction(transaction: Coroutine[Any, Any, T]) -> T:
    """Run ``transaction`` to its commit or rollback, whatever happens to the caller.

    Temporal cancels in-flight (local) activities when their workflow is cancelled. Cancelling
    a task in the middle of a database call abandons the driver call: with SQLite, a
    ``BEGIN IMMEDIATE`` still waiting in aiosqlite's thread then takes the write lock for a
    connection nobody will commit, and every other writer waits until it times out. Shielded,
    the transaction ends normally (its run-status guard makes a late commit harmless) and the
    caller still sees the cancellation.
    """
    return await asyncio.shield(transaction)
