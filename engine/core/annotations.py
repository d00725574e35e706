"""Annotation values: the actor envelope, attribute rules, and the per-stage write buffer.

Key naming rules (lowercase, dot-delimited segments such as ``decision.outcome``) are
documented and checked only in strict mode, as in the original engine: any non-empty key up to
255 characters is accepted by default. ``None`` values are dropped (as OpenTelemetry does);
``""``, ``0``, ``False`` and ``[]`` are kept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from engine.conventions import TypedKey
from engine.core.values import (
    MAX_JSON_DEPTH,
    deeper_than,
    encode_json,
    json_problem,
    text_problem,
)
from engine.errors import AnnotationError

__all__ = [
    "Actor",
    "AnnotationBuffer",
    "AnnotationDraft",
    "AnnotationLimits",
    "RunCreateAnnotation",
    "build_drafts",
    "check_text",
    "json_problem",
    "text_problem",
    "typed_columns",
]

T = TypeVar("T")

_STRICT_KEY = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
TEXT_INDEX_LIMIT = 1024
"""Strings up to this length are copied into the indexed ``value_text`` column."""


class Actor(BaseModel):
    """Who or what made an annotation."""

    model_config = ConfigDict(frozen=True)

    kind: str
    """E.g. ``"user"``, ``"agent"``, ``"system"``."""
    id: str
    version: str | None = None


class RunCreateAnnotation(BaseModel):
    """An annotation envelope given at run creation (``RunCreate.annotations``)."""

    # Like the commands: dict input may use the original camelCase (``idempotencyKey``,
    # ``emitEvent``), and a misspelt field is an error rather than silently dropped.
    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid"
    )

    attributes: dict[str, Any]
    actor: Actor | None = None
    on_behalf_of: Actor | None = None
    """Whom ``actor`` acted for (the HTTP API puts the caller's own actor here)."""
    payload: Any = None
    idempotency_key: str | None = None
    emit_event: bool = False


class AnnotationDraft(BaseModel):
    """One validated attribute waiting to be written (one row)."""

    key: str
    value: Any
    actor: Actor | None = None
    on_behalf_of: Actor | None = None
    payload: Any = None
    idempotency_key: str | None = None
    emit_event: bool = False


@dataclass(frozen=True)
class AnnotationLimits:
    """Size and naming limits checked before anything is written."""

    max_key_length: int = 255
    max_value_bytes: int = 64 * 1024
    max_payload_bytes: int = 1024 * 1024
    strict_keys: bool = False
    """Enforce lowercase dot-delimited keys (off by default, as in the original)."""
    max_buffer_bytes: int = 1536 * 1024
    """Budget of everything one stage execution (or one poll) buffers: the buffer crosses
    Temporal inside the activity result, which Temporal refuses past 2 MB (a run would hang
    retrying). A batch's payload counts once per attribute, as each row carries it."""


DEFAULT_LIMITS = AnnotationLimits()


def _json_size(what: str, key: str, value: Any) -> int:
    encoded, problem = encode_json(value)
    if problem is None and deeper_than(value, MAX_JSON_DEPTH):
        # Checked here too: stored, a value this deep could not be read back through Temporal
        # or rendered (the viewer's and the CLI's JSON answered 500 and crashed on one).
        problem = f"is nested more than {MAX_JSON_DEPTH} levels deep"
    if problem is not None:
        raise AnnotationError(f"annotation {what} for key {key!r} {problem}", key=key)
    return len(encoded)


def _check_key(key: Any, limits: AnnotationLimits) -> str:
    if not isinstance(key, str) or not key:
        raise AnnotationError(f"annotation key must be a non-empty string, got {key!r}", key=None)
    if len(key) > limits.max_key_length:
        raise AnnotationError(
            f"annotation key {key[:40]!r}… is {len(key)} characters (max {limits.max_key_length})",
            key=key,
        )
    problem = text_problem(key)
    if problem is not None:
        raise AnnotationError(f"annotation key {key[:40]!r} {problem}", key=key)
    if limits.strict_keys and not _STRICT_KEY.match(key):
        raise AnnotationError(
            f"annotation key {key!r} is not lowercase dot-delimited (strict mode)", key=key
        )
    return key


def check_text(what: str, text: str | None, max_length: int) -> None:
    """Refuse a string column value the side-store cannot hold on every backend.

    Raises:
        AnnotationError: ``text`` is longer than ``max_length`` characters, or contains NUL or
            a lone surrogate.
    """
    if text is None:
        return
    if len(text) > max_length:
        raise AnnotationError(f"annotation {what} is {len(text)} characters (max {max_length})")
    problem = text_problem(text)
    if problem is not None:
        raise AnnotationError(f"annotation {what} {problem}")


def build_drafts(
    attributes: Mapping[str, Any],
    *,
    actor: Actor | None = None,
    payload: Any = None,
    idempotency_key: str | None = None,
    emit_event: bool = False,
    limits: AnnotationLimits = DEFAULT_LIMITS,
    on_behalf_of: Actor | None = None,
) -> list[AnnotationDraft]:
    """Validate an envelope and return one draft per attribute whose value is not ``None``.

    Raises:
        AnnotationError: a bad key, a non-JSON value or payload, or a size over the limits.
    """
    if not isinstance(attributes, Mapping):
        raise AnnotationError(f"attributes must be a mapping, got {type(attributes).__name__}")
    if payload is not None:
        size = _json_size("payload", "<payload>", payload)
        if size > limits.max_payload_bytes:
            raise AnnotationError(
                f"annotation payload is {size} bytes (max {limits.max_payload_bytes})"
            )
    if idempotency_key is not None and (not idempotency_key or len(idempotency_key) > 255):
        raise AnnotationError("idempotency_key must be 1 to 255 characters")
    check_text("idempotency_key", idempotency_key, 255)
    if actor is not None:
        # Checked here, not left to the database: on PostgreSQL an over-long or NUL-bearing
        # column fails the commit (retried forever on the stage path); SQLite would store it.
        check_text("actor.kind", actor.kind, 64)
        check_text("actor.id", actor.id, 255)
        check_text("actor.version", actor.version, 255)
    if on_behalf_of is not None:
        check_text("on_behalf_of.kind", on_behalf_of.kind, 64)
        check_text("on_behalf_of.id", on_behalf_of.id, 255)
        check_text("on_behalf_of.version", on_behalf_of.version, 255)
    drafts = []
    for raw_key, value in attributes.items():
        key = _check_key(raw_key, limits)
        if value is None:
            continue
        size = _json_size("value", key, value)
        if size > limits.max_value_bytes:
            raise AnnotationError(
                f"annotation value for key {key!r} is {size} bytes (max {limits.max_value_bytes})",
                key=key,
            )
        drafts.append(
            AnnotationDraft(
                key=key,
                value=value,
                actor=actor,
                on_behalf_of=on_behalf_of,
                payload=payload,
                idempotency_key=idempotency_key,
                emit_event=emit_event,
            )
        )
    return drafts


def typed_columns(value: Any) -> tuple[str | None, float | None, bool | None]:
    """The (text, number, boolean) copies of a JSON value that cross-run queries index."""
    if isinstance(value, bool):
        return None, None, value
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range: stored, just not number-indexed
            return None, None, None
        return None, (number if math.isfinite(number) else None), None
    if isinstance(value, str) and len(value) <= TEXT_INDEX_LIMIT:
        return value, None, None
    return None, None, None


class AnnotationBuffer:
    """Collects a stage's annotations; they are written with its outcome in one transaction."""

    def __init__(self, limits: AnnotationLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.drafts: list[AnnotationDraft] = []
        self.buffered_bytes = 0
        """Approximate size of ``drafts`` as they cross Temporal (see ``max_buffer_bytes``)."""

    @overload
    def annotate(
        self,
        key: TypedKey[T],
        value: T,
        *,
        actor: Actor | None = None,
        payload: Any = None,
        idempotency_key: str | None = None,
        emit_event: bool = False,
    ) -> None: ...

    @overload
    def annotate(
        self,
        key: str,
        value: Any,
        *,
        actor: Actor | None = None,
        payload: Any = None,
        idempotency_key: str | None = None,
        emit_event: bool = False,
    ) -> None: ...

    @overload
    def annotate(
        self,
        *,
        attributes: Mapping[str, Any],
        actor: Actor | None = None,
        payload: Any = None,
        idempotency_key: str | None = None,
        emit_event: bool = False,
    ) -> None: ...

    def annotate(
        self,
        key: TypedKey[Any] | str | None = None,
        value: Any = None,
        *,
        attributes: Mapping[str, Any] | None = None,
        actor: Actor | None = None,
        payload: Any = None,
        idempotency_key: str | None = None,
        emit_event: bool = False,
    ) -> None:
        """Buffer annotations in one of three forms: typed key, string key, or a batch.

        Raises:
            TypeError: a typed key was given a value of the wrong type.
            AnnotationError: a bad key or value (nothing of the call is buffered).
        """
        if attributes is not None:
            if key is not None:
                raise AnnotationError("pass either a key and value or attributes=, not both")
            batch: Mapping[str, Any] = attributes
        elif isinstance(key, TypedKey):
            if value is not None:
                key.check(value)
            batch = {key.key: value}
        elif isinstance(key, str):
            batch = {key: value}
        else:
            raise AnnotationError(f"annotation key must be a string or TypedKey, got {key!r}")
        drafts = build_drafts(
            batch,
            actor=actor,
            payload=payload,
            idempotency_key=idempotency_key,
            emit_event=emit_event,
            limits=self.limits,
        )
        if not drafts:
            return
        payload_bytes = 0 if payload is None else _json_size("payload", "<payload>", payload)
        added = sum(
            len(d.key) + _json_size("value", d.key, d.value) + payload_bytes for d in drafts
        )
        if self.buffered_bytes + added > self.limits.max_buffer_bytes:
            raise AnnotationError(
                f"annotations buffered by this stage would reach {self.buffered_bytes + added} "
                f"bytes (max {self.limits.max_buffer_bytes} per execution or poll; a batch's "
                f"payload counts once per attribute): first key {drafts[0].key!r}",
                key=drafts[0].key,
            )
        self.buffered_bytes += added
        self.drafts.extend(drafts)
