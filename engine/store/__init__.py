"""The SQL side-store: what users query beside the Temporal UI.

:class:`SqlStore` is the facade; :mod:`engine.store.contract` holds its argument and result
types. Everything else in this package (row builders, statements, migrations) is behind it.
"""

from engine.store.ai_call_logger import SqlAICallLogger
from engine.store.contract import (
    AnnotationFilters,
    CrossRunFilters,
    NewRun,
    NewStage,
    Rerun,
    RowContext,
    StageStart,
    StartedRun,
)
from engine.store.sql_store import SqlStore

__all__ = [
    "AnnotationFilters",
    "CrossRunFilters",
    "NewRun",
    "NewStage",
    "Rerun",
    "RowContext",
    "SqlAICallLogger",
    "SqlStore",
    "StageStart",
    "StartedRun",
]
