"""Settings read from ``WFE_*`` environment variables, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["DEFAULT_DATABASE_URL", "VIEWER_PORT_OFFSET", "Settings", "local_port_of"]

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.wfe/engine.db"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value else default


@dataclass(frozen=True)
class Settings:
    """Where the engine finds Temporal and its side-store.

    Each field defaults to its ``WFE_*`` environment variable, then to the embedded default
    (a local Temporal dev server and a SQLite file under ``.wfe/``).
    """

    temporal_address: str = field(
        default_factory=lambda: _env("WFE_TEMPORAL_ADDRESS", "localhost:7233")
    )
    """``host:port`` of the Temporal frontend."""
    namespace: str = field(default_factory=lambda: _env("WFE_NAMESPACE", "default"))
    """Temporal namespace the runs execute in."""
    task_queue: str = field(default_factory=lambda: _env("WFE_TASK_QUEUE", "workflow-engine"))
    """Task queue the engine's worker polls."""
    database_url: str = field(
        default_factory=lambda: _env("WFE_DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    """SQLAlchemy URL of the side-store (``sqlite+aiosqlite://`` or ``postgresql+psycopg://``)."""
    temporal_ui_url: str = field(default_factory=lambda: _env("WFE_TEMPORAL_UI_URL", ""))
    """Base URL of the Temporal Web UI, for links to a run's workflow. Default: where a local
    dev server at ``temporal_address`` serves it (its port + 1000: ``localhost:7233`` →
    ``http://localhost:8233``), else ``http://localhost:8233``."""
    viewer_url: str = field(default_factory=lambda: _env("WFE_VIEWER_URL", ""))
    """Base URL of the provenance viewer, linked from every run's Temporal workflow (its
    static details), whoever starts the run. Default: where ``wfe dev`` serves it for a local
    ``temporal_address`` (its port + 1001: ``localhost:7233`` → ``http://localhost:8234``);
    empty for a remote server unless ``WFE_VIEWER_URL`` says where the viewer runs."""

    def __post_init__(self) -> None:
        port = local_port_of(self.temporal_address)
        if not self.temporal_ui_url:
            ui = f"http://localhost:{port + 1000}" if port else "http://localhost:8233"
            object.__setattr__(self, "temporal_ui_url", ui)
        if not self.viewer_url and port:
            object.__setattr__(self, "viewer_url", f"http://localhost:{port + VIEWER_PORT_OFFSET}")
        object.__setattr__(self, "viewer_url", self.viewer_url.rstrip("/"))


VIEWER_PORT_OFFSET = 1001
"""``wfe dev`` serves the viewer at its Temporal port + this (7233 → 8234, beside the UI)."""


def local_port_of(address: str) -> int | None:
    """The port of a ``localhost:PORT`` / ``127.0.0.1:PORT`` address, else ``None``."""
    host, _, port = address.rpartition(":")
    if host in ("localhost", "127.0.0.1") and port.isdigit() and 0 < int(port) < 64535:
        return int(port)
    return None
