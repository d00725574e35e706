"""The SQL side-store: what users query beside the Temporal UI."""

from engine.store.ai_call_logger import SqlAICallLogger
from engine.store.sql_store import SqlStore

__all__ = ["SqlAICallLogger", "SqlStore"]
