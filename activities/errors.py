"""Turning exceptions into the one-line messages stored on failed stages."""

from __future__ import annotations

__all__ = ["error_message"]


def error_message(error: BaseException) -> str:
    """The message a failed stage stores: the exception's text, or its type if it has none."""
    text = str(error)
    return text if text else type(error).__name__
