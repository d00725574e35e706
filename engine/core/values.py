"""What a stored value may hold: one rule for SQLite and PostgreSQL, checked before any write.

PostgreSQL refuses some values that SQLite stores without a word: a NUL character in text or
``jsonb``, NaN and ±Infinity in ``jsonb`` (SQLAlchemy's JSON serializer writes the non-standard
``NaN`` token, which ``jsonb`` rejects), lone surrogates (neither driver encodes them). Left to
the database, such a value fails its commit with ``DataError`` on every retry and the run hangs
RUNNING; stored on SQLite, it reads back as something other JSON tools refuse. Temporal's
payload converter (pydantic-core) stops at 255 levels of nesting. So every value the engine
stores (run input and config, stage outputs, metrics, suspended state, logs, progress,
annotations) is checked here first, against the same rule on both backends.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = [
    "MAX_JSON_DEPTH",
    "clean_text",
    "deeper_than",
    "encode_json",
    "json_problem",
    "locate_problem",
    "text_problem",
]

MAX_JSON_DEPTH = 200
"""Deepest nesting of lists and objects accepted in a value. Temporal's payload converter
(pydantic-core) stops at 255 levels, and the engine carries values a few levels down in its
own payloads (a run's input inside the workflow's plan, outputs inside a stage's context)."""

# An escaped NUL in JSON text: ``\u0000`` preceded by an even number of backslashes (else the
# backslash is itself escaped, as in the harmless string ``"\\u0000"``).
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def text_problem(text: str) -> str | None:
    """Why a string cannot be stored in (or compared with) a text column on every backend.

    ``None`` when it can. PostgreSQL refuses NUL characters, and neither driver encodes lone
    surrogates.
    """
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode text)"
    return None


def clean_text(text: str) -> str:
    r"""``text`` with what no backend stores spelled out.

    NUL becomes ``\x00``, a lone surrogate ``\udc80``: for text the engine itself writes from an
    exception, where refusing would lose the message of a failure.
    """
    if text_problem(text) is None:
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()


def encode_json(value: Any) -> tuple[bytes, str | None]:
    """``value`` as UTF-8 JSON and ``None``, or ``b""`` and why it cannot be stored.

    The nesting depth aside: see :func:`json_problem`. Runs at C speed: the walk that names the
    place of a problem (:func:`locate_problem`) only runs once one is found.
    """
    try:
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return b"", f"is not JSON-serializable: {exc}"
    # The substring test first: the regex alone cost 114 µs on a 2 KB outcome, the test 1 µs.
    if "\\u0000" in encoded and _JSON_NUL.search(encoded):
        return b"", "contains a NUL character"
    try:
        return encoded.encode(), None
    except UnicodeEncodeError:
        return b"", "contains a lone surrogate (not valid Unicode text)"


def deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than ``limit`` levels in ``value``.

    Iterative, one level of containers at a time.
    """
    level = [value] if isinstance(value, dict | list | tuple) else []
    depth = 0
    while level:
        if depth >= limit:
            return True
        deeper: list[Any] = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item
            deeper.extend(child for child in children if isinstance(child, dict | list | tuple))
        level = deeper
        depth += 1
    return False


def json_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored as JSON alike on SQLite and PostgreSQL, or ``None``.

    Refused: what ``json.dumps`` cannot encode (other types, NaN and infinities, nesting too
    deep, integers too long to print), text PostgreSQL's ``jsonb`` cannot hold (NUL, lone
    surrogates) — SQLite would store those, so both backends refuse them — and nesting deeper
    than :data:`MAX_JSON_DEPTH`, which the side-store would keep but Temporal could not carry.
    """
    encoded, problem = encode_json(value)
    if problem is None and _may_nest_deeper(encoded) and deeper_than(value, MAX_JSON_DEPTH):
        return f"is nested more than {MAX_JSON_DEPTH} levels deep"
    return problem


def _may_nest_deeper(encoded: bytes) -> bool:
    """Whether JSON text has enough brackets to nest past the limit at all.

    Counting them runs at C speed, so the walk (87 µs on a 2 KB stage outcome) is left to values
    that could be too deep.
    """
    return encoded.count(b"[") + encoded.count(b"{") > MAX_JSON_DEPTH


def _scalar_problem(item: Any) -> str | None:
    if isinstance(item, str):
        return text_problem(item)
    if isinstance(item, float) and not math.isfinite(item):
        return "is NaN" if math.isnan(item) else f"is {'' if item > 0 else '-'}Infinity"
    if item is None or isinstance(item, bool | int | float):
        return None
    return f"is not JSON-serializable (a {type(item).__name__})"


def locate_problem(value: Any, where: str) -> str | None:
    """``None`` when ``value`` can be stored, else the first problem with its place.

    Named as a stage failure names it: ``output.score is NaN``, ``metrics.notes[2] contains a NUL
    character``, ``output is nested more than 200 levels deep``.
    """
    if json_problem(value) is None:
        return None
    if deeper_than(value, MAX_JSON_DEPTH):
        return f"{where} is nested more than {MAX_JSON_DEPTH} levels deep"
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            children = []
            for key, child in item.items():
                if not isinstance(key, str):
                    if key is None or isinstance(key, bool | int | float):
                        key = str(key)  # JSON turns scalar keys into strings, as stored
                    else:
                        return f"{path} has a key that is not a string ({type(key).__name__})"
                problem = text_problem(key)
                if problem is not None:
                    return f"{path} has a key that {problem}: {clean_text(key)!r}"
                children.append((child, f"{path}.{key}"))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            stack.extend(reversed([(c, f"{path}[{i}]") for i, c in enumerate(item)]))
        else:
            problem = _scalar_problem(item)
            if problem is not None:
                return f"{path} {problem}"
    # json.dumps refused something the walk accepts (an integer too long to print, say).
    return f"{where} {json_problem(value)}"
