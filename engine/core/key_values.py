"""Reading ``key=value`` items as people type them (``wfe --annotation``, ``?annotation=``).

The CLI and the HTTP API read them the same way, so that a filter or attribute typed in
one means the same in the other; each reports a bad item in its own form.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["parse_key_value", "parse_value"]


def parse_value(raw: str) -> Any:
    """JSON when the text parses as JSON (``true``, ``4``, ``"4"``, ``{...}``), else the text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_key_value(item: str) -> tuple[str, Any]:
    """``key=value`` as the stripped key and :func:`parse_value` of the rest.

    Raises:
        ValueError: the item has no ``=`` or an empty key.
    """
    key, separator, raw = item.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ValueError(f"not key=value: {item!r}")
    return key, parse_value(raw)
