"""What ``wfe dev`` tells a newcomer at start-up: a command that works, and how writes work."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from engine.core.workflows import Workflow

__all__ = ["example_input", "try_command", "writes_hint"]


def example_input(workflow: Workflow) -> dict[str, Any]:
    """A placeholder input with the input model's fields (an empty object without a model)."""
    model = workflow.input_model
    if model is None:
        return {}
    placeholders: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = str(info.annotation)
        if not info.is_required():
            continue
        if "int" in annotation or "float" in annotation:
            placeholders[name] = 0
        elif "bool" in annotation:
            placeholders[name] = False
        elif "list" in annotation:
            placeholders[name] = []
        elif "str" in annotation:
            placeholders[name] = "..."
        else:
            placeholders[name] = None
    return placeholders


def try_command(workflows: Iterable[Workflow]) -> str | None:
    """``wfe run create`` for the first registered workflow, or ``None`` if none is."""
    for workflow in workflows:
        payload = json.dumps(example_input(workflow))
        return f"wfe run create {workflow.id} --input '{payload}' --wait"
    return None


def writes_hint() -> str:
    """How to turn on the HTTP API's writes, which answer 403 without a token."""
    return (
        "POST answers 403 writes_disabled until you start wfe dev with WFE_API_TOKEN=<secret> "
        "(or WFE_API_TOKENS) set, then send 'Authorization: Bearer <secret>' (the CLI writes "
        "without it)"
    )
