"""Which workflows a command knows: ``--workflows module:attribute``, imported."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from typing import Annotated, Any

import typer

from engine.cli.errors import fail
from engine.core.workflows import Workflow

__all__ = ["DEFAULT_WORKFLOWS", "WorkflowsOption", "load_workflows", "registry"]

DEFAULT_WORKFLOWS = "wfe_demo:WORKFLOWS"
"""The workflows ``run create``, ``worker`` and ``dev`` register unless told otherwise."""

WorkflowsOption = Annotated[
    str,
    typer.Option(
        "--workflows",
        envvar="WFE_WORKFLOWS",
        help="module:attribute of a Workflow, a list of them, or a function returning either.",
    ),
]


def load_workflows(spec: str) -> list[Workflow]:
    """The workflows named by ``module:attribute`` (a Workflow, a list, or a factory of them).

    The current directory is importable, as for ``python -m``, so project modules resolve.
    """
    module_name, separator, attribute = spec.partition(":")
    if not separator or not module_name or not attribute:
        fail(f"--workflows must be module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        fail(f"cannot import workflows module {module_name!r}: {exc}")
    for part in attribute.split("."):
        if not hasattr(target, part):
            fail(f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if callable(target) and not isinstance(target, Workflow):
        target = target()
    if isinstance(target, Workflow):
        return [target]
    if isinstance(target, list | tuple) and target and all(isinstance(w, Workflow) for w in target):
        return list(target)
    fail(f"{spec} is not a Workflow or a non-empty list of them (got {type(target).__name__})")


def registry(workflows: Iterable[Workflow]) -> dict[str, Workflow]:
    """Workflows by id."""
    return {workflow.id: workflow for workflow in workflows}
