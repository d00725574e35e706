"""A private PostgreSQL cluster that a test may stop, restart and break at will.

Built from the server binaries installed on the machine (``/usr/lib/postgresql/<v>/bin``, or
``pg_config --bindir``): ``initdb`` in a temporary folder, ``pg_ctl`` to start and stop it on a
port of its own. The shared server on 5432 is never touched. PostgreSQL refuses to run as
root, so as root every command runs as the ``postgres`` system user (``runuser``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

__all__ = ["PrivateCluster", "find_bindir"]


def find_bindir() -> Path | None:
    """Directory of ``initdb``/``pg_ctl`` (newest installed version), else ``None``."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for bindir in reversed(candidates):
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateCluster:
    """One ``initdb``-made cluster in a temporary folder, listening on 127.0.0.1:``port``."""

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            pytest.fail(
                "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin "
                "or from pg_config --bindir: install the postgresql server package",
                pytrace=False,
            )
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="wfe-pgcluster-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        if self.as_root:
            shutil.chown(self.root, user="postgres", group="postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        argv = [str(self.bindir / tool), *args]
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=self.root)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{tool} failed ({result.returncode}): {result.stdout}{result.stderr}\n{log}"
            )

    def start(self) -> None:
        # fsync off: the tests restart or kill the server, they never pull the power (the OS
        # keeps what the server wrote), so nothing committed is lost; the socket goes
        # in the data folder so that nothing in /var/run is needed.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: abort open transactions, disconnect every client (``AdminShutdown``);
        ``immediate``: quit without a clean shutdown (crash recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    async def restart(self, *, down_seconds: float = 0.0, mode: str = "fast") -> None:
        await asyncio.to_thread(self.stop, mode)
        await asyncio.sleep(down_seconds)
        await asyncio.to_thread(self.start)

    def destroy(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except RuntimeError:
            pass  # not running
        shutil.rmtree(self.root, ignore_errors=True)
