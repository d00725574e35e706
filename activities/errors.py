"""Turning exceptions into the one-line messages stored on failed stages."""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["describe_validation", "error_message"]


def describe_validation(error: ValidationError) -> str:
    """``field.path: message; …`` for each problem pydantic found."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(root)"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)


def error_message(error: BaseException) -> str:
    """The message a failed stage stores: the exception's text, or its type if it has none."""
    text = str(error)
    return text if text else type(error).__name__
