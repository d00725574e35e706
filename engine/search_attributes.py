"""The Temporal search attributes the engine registers and upserts."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

__all__ = [
    "DEFAULT_PROJECTED_KEYS",
    "ENGINE_SEARCH_ATTRIBUTES",
    "RUN_STATUS_ATTRIBUTE",
    "WORKFLOW_ID_ATTRIBUTE",
]

RUN_STATUS_ATTRIBUTE = SearchAttributeKey.for_keyword("WfeRunStatus")
"""The run's side-store status, so the Temporal UI's list can filter by it."""

WORKFLOW_ID_ATTRIBUTE = SearchAttributeKey.for_keyword("WfeWorkflowId")
"""The engine workflow id (e.g. ``ticket-triage``) of the run."""

DEFAULT_PROJECTED_KEYS = {"decision.outcome": "DecisionOutcome"}
"""Annotation keys copied into Keyword search attributes (SQL stays the source of truth)."""

ENGINE_SEARCH_ATTRIBUTES = ("WfeRunStatus", "WfeWorkflowId", *DEFAULT_PROJECTED_KEYS.values())
"""Every custom search attribute the engine uses by default (``wfe dev`` registers them)."""
