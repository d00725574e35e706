"""Fixtures for the ``wfe`` tests: in-process invocations and background subprocesses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import Result

from tests.cli.support import Background, Wfe, invoke


@pytest.fixture
def wfe() -> Wfe:
    """``await wfe("run", "show", run_id, ...)``: one CLI invocation, in a worker thread.

    The thread gives the command its own event loop (it calls ``asyncio.run``) while the
    test's loop stays free.
    """

    async def run(*args: str, env: dict[str, str] | None = None) -> Result:
        return await asyncio.to_thread(invoke, list(args), env)

    return run


@pytest.fixture
def background() -> Iterator[Callable[..., Background]]:
    """Start ``wfe`` subprocesses that are killed at teardown whatever happens."""
    started: list[Background] = []

    def start(*args: str, cwd: Path, env: dict[str, str]) -> Background:
        process = Background(list(args), cwd=cwd, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
