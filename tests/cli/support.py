"""Helpers for driving ``wfe`` in tests: in-process (CliRunner) or as a subprocess."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from engine.cli import app

Wfe = Callable[..., Awaitable[Result]]

WFE_BINARY = str(Path(sys.executable).parent / "wfe")
"""The console script installed into this virtualenv."""


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    """One in-process CLI invocation (blocking: call it in a thread from async tests)."""
    return CliRunner().invoke(app, args, env=env)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """Exit code 2, nothing on stdout, a single ``error: ...`` line, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.exception is None or isinstance(result.exception, SystemExit)


def free_port_pair() -> int:
    """A free port P with P + 1000 and P + 1001 free too (``wfe dev`` puts the UI and the
    viewer there)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port + 1001 > 65535:
            continue
        taken = False
        for other in (port + 1000, port + 1001):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", other))
                except OSError:
                    taken = True
        if not taken:
            return port
    raise RuntimeError("no free port pair")


def servers_on_port(port: int) -> list[str]:
    """Command lines of ``temporal server start-dev`` processes listening on ``port``."""
    found = subprocess.run(
        ["pgrep", "-af", f"temporal server start-dev --ip 127.0.0.1 --port {port} "],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.splitlines()


def clean_env(**overrides: str) -> dict[str, str]:
    """The environment without ``WFE_*`` settings, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFE_")}
    env.update(overrides)
    return env


class Background:
    """A ``wfe`` subprocess whose stdout is read line by line as it comes."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [WFE_BINARY, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []

    async def wait_for_line(self, fragment: str, timeout: float = 60.0) -> str:
        """Read stdout until a line contains ``fragment``."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(
                asyncio.to_thread(self.process.stdout.readline), deadline - time.monotonic()
            )
            if not line:
                break
            self.lines.append(line)
            if fragment in line:
                return line
        raise AssertionError(
            f"no line with {fragment!r}; stdout so far:\n{''.join(self.lines)}\n"
            f"exit code {self.process.poll()}"
        )

    def interrupt(self, timeout: float = 30.0) -> tuple[int, str, str]:
        """Ctrl-C, then (exit code, rest of stdout, stderr)."""
        self.process.send_signal(2)
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, "".join(self.lines) + out, err

    def kill(self) -> None:
        """Make sure the process is gone (test teardown)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def temporal_address(env: Any) -> str:
    """``host:port`` of a temporalio test environment's server."""
    return str(env.client.service_client.config.target_host)


async def approve_waiting_review(wfe: Wfe, opts: list[str], *, timeout: float = 60.0) -> str:
    """Play the support lead: find the demo run's review in ``wfe approvals list`` and approve
    it with ``wfe approvals approve``; returns the run id."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = await wfe("approvals", "list", "--workflow", "ticket-triage", "--json", *opts)
        assert listed.exit_code == 0, listed.stderr
        items = json.loads(listed.stdout)
        if items:
            run_id = str(items[0]["workflow_run_id"])
            approved = await wfe(
                "approvals", "approve", run_id, "human-review", "--comment", "looks right", *opts,
                env=clean_env(WFE_PRINCIPAL="user:lead@acme.example"),
            )  # fmt: skip
            assert approved.exit_code == 0, approved.stderr
            return run_id
        await asyncio.sleep(0.1)
    raise AssertionError("no review waited for a decision")


async def wfe_process(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``wfe`` as a subprocess, for a command that must run beside in-process invocations
    (CliRunner swaps the process-wide stdout, so two at once would mix their output)."""
    process = await asyncio.create_subprocess_exec(
        WFE_BINARY,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env if env is not None else clean_env(),
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
