"""The Temporal search attributes the engine registers and upserts, and the projection's rules.

What Temporal's visibility shows of a run (the side-store stays the source of truth):

- ``WfeRunId`` (Keyword), ``WfeWorkflowId`` (Keyword) and ``WfeAttempt`` (Int) are set when an
  execution starts: the run, its engine workflow and the attempt (rerun generation) the
  execution runs. Every execution of a run (first, reruns, restarts, continuations) carries
  the same ``WfeRunId``; ``WfeAttempt`` tells the attempts apart.
- ``WfeRunStatus`` (Keyword) follows the run's status while the execution is open.
- Projected annotation keys (``decision.outcome`` → ``DecisionOutcome`` by default; a
  workflow declares its own with ``define_workflow(search_attributes=...)``) are set when a
  stage of **that execution** commits the annotation: each execution shows the decisions
  made in it, the latest one winning.
- A closed execution is never updated: Temporal does not change a closed workflow. A value
  attached after the execution closed (``wfe annotations attach RUN decision.outcome=...``)
  is in the side-store only, and a rerun's decisions are on the rerun's execution only.

Temporal counts executions. ``RUNS_QUERY`` keeps one per run and attempt 0 (a continued
execution counts once: the ``ContinuedAsNew`` ones are left out), so
``temporal workflow count --query "DecisionOutcome = 'high' AND <RUNS_QUERY>"`` counts runs
whose first attempt decided ``high`` (an execution that was lost and restarted by
``RunClaimPending``, ``…-restart-n``, is a second attempt-0 execution and may count again).
The exact count of runs by their latest annotation is a side-store query:
``kernel.annotations.count_runs``.
"""

from __future__ import annotations

from collections.abc import Mapping

from temporalio.common import SearchAttributeKey

__all__ = [
    "ATTEMPT_ATTRIBUTE",
    "DEFAULT_PROJECTED_KEYS",
    "ENGINE_SEARCH_ATTRIBUTES",
    "ENGINE_SEARCH_ATTRIBUTE_TYPES",
    "RUNS_QUERY",
    "RUN_ID_ATTRIBUTE",
    "RUN_STATUS_ATTRIBUTE",
    "TEMPORAL_LIMITS",
    "WORKFLOW_ID_ATTRIBUTE",
    "projection_problems",
]

RUN_STATUS_ATTRIBUTE = SearchAttributeKey.for_keyword("WfeRunStatus")
"""The run's side-store status, so the Temporal UI's list can filter by it."""

WORKFLOW_ID_ATTRIBUTE = SearchAttributeKey.for_keyword("WfeWorkflowId")
"""The engine workflow id (e.g. ``ticket-triage``) of the run."""

RUN_ID_ATTRIBUTE = SearchAttributeKey.for_keyword("WfeRunId")
"""The engine run id: the same on every execution of the run."""

ATTEMPT_ATTRIBUTE = SearchAttributeKey.for_int("WfeAttempt")
"""The attempt (rerun generation) the execution runs: 0 first, n for the n-th rerun."""

DEFAULT_PROJECTED_KEYS = {"decision.outcome": "DecisionOutcome"}
"""Annotation keys copied into Keyword search attributes (SQL stays the source of truth)."""

ENGINE_SEARCH_ATTRIBUTE_TYPES: Mapping[str, str] = {
    "WfeRunStatus": "Keyword",
    "WfeWorkflowId": "Keyword",
    "WfeRunId": "Keyword",
    "WfeAttempt": "Int",
    **{attribute: "Keyword" for attribute in DEFAULT_PROJECTED_KEYS.values()},
}
"""Every custom search attribute the engine uses by default, with its type (``wfe dev``
registers them)."""

ENGINE_SEARCH_ATTRIBUTES = tuple(ENGINE_SEARCH_ATTRIBUTE_TYPES)
"""Their names."""

RUNS_QUERY = "WfeAttempt = 0 AND ExecutionStatus != 'ContinuedAsNew'"
"""A visibility filter keeping one execution per run (see the module docstring)."""

TEMPORAL_LIMITS: Mapping[str, int] = {
    "Keyword": 10,
    "Int": 3,
    "Double": 3,
    "Bool": 3,
    "Datetime": 3,
    "Text": 3,
    "KeywordList": 3,
}
"""Custom search attributes per type and namespace on Temporal's SQL visibility stores (the
dev server, PostgreSQL, MySQL, SQLite); Elasticsearch allows more."""


def projection_problems(
    wanted: Mapping[str, str], registered: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """What stands between ``wanted`` and the server's ``registered`` custom attributes.

    Both map attribute → type. Returns (missing attributes, other problems).
    """
    missing = sorted(name for name in wanted if name not in registered)
    problems = [
        f"{name} is registered as {registered[name]}, the engine needs {kind}"
        for name, kind in sorted(wanted.items())
        if name in registered and registered[name] != kind
    ]
    for kind, limit in TEMPORAL_LIMITS.items():
        count = sum(1 for k in wanted.values() if k == kind)
        if count > limit:
            problems.append(
                f"{count} {kind} attributes wanted, Temporal's SQL visibility allows {limit} "
                "per namespace"
            )
    return missing, problems
