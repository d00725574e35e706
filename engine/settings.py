"""Settings read from ``WFE_*`` environment variables, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEFAULT_DATABASE_URL", "Settings"]

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
    temporal_ui_url: str = field(
        default_factory=lambda: _env("WFE_TEMPORAL_UI_URL", "http://localhost:8233")
    )
    """Base URL of the Temporal Web UI, for links to a run's workflow."""


def ensure_sqlite_parent(url: str) -> None:
    """Create the folder of a file-backed SQLite URL, so the default works on a fresh checkout."""
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and not url.endswith(":memory:"):
        Path(url[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)
