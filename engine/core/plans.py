"""A workflow's groups as the stage specs a run carries (each with its slice of the config).

The kernel plans a run with it when it starts one, and the ``wfe.start_run`` activity when a
run's execution begins; both must agree, so it lives once, below both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.core.payloads import RetrySpec, StageSpec
from engine.core.workflows import Workflow

__all__ = ["plan_of"]


def plan_of(workflow: Workflow, config: Mapping[str, Any]) -> list[list[StageSpec]]:
    """The workflow's groups as stage specs, each carrying its slice of the run config."""
    groups = []
    number = 0
    for index, group in enumerate(workflow.groups, start=1):
        specs = []
        for stage in group:
            number += 1
            policy = stage.retry_policy
            retry = None
            if policy is not None:
                retry = RetrySpec(
                    initial_interval=policy.initial_interval,
                    backoff_coefficient=policy.backoff_coefficient,
                    maximum_interval=policy.maximum_interval,
                    maximum_attempts=policy.maximum_attempts,
                    non_retryable_error_types=list(policy.non_retryable_error_types or []),
                )
            specs.append(
                StageSpec(
                    stage_id=stage.id,
                    name=stage.name,
                    number=number,
                    group=index,
                    kind=stage.kind,
                    config=dict(config.get(stage.id) or {}),
                    start_to_close_timeout=stage.start_to_close_timeout,
                    heartbeat_timeout=stage.heartbeat_timeout,
                    retry=retry,
                )
            )
        groups.append(specs)
    return groups
