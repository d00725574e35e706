"""Fixtures of the reliability tests: a dev server whose lost workflow tasks retry quickly."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from engine.cli.devserver import DevServer
from tests.reliability.support import FastEnv


@pytest_asyncio.fixture(scope="session")
async def fast_env() -> AsyncIterator[FastEnv]:
    """A dev server of the reliability tests' own, with a 2 s default workflow-task timeout.

    A workflow task lost with a killed worker (or held by a worker that got stuck) is retried
    after 2 s instead of 10 s: the behaviour under test is the same, the tests are faster.
    Worker processes connect to it by ``address``.
    """
    server = DevServer(ui=False, dynamic_config={"history.defaultWorkflowTaskTimeout": "2s"})
    await server.start()
    try:
        client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        yield FastEnv(client=client, address=server.address)
    finally:
        await server.stop()
