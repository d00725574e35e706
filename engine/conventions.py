"""Typed well-known annotation keys (``Trigger``, ``Decision``, ``Approval``, ``Revision``)."""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar, Union, get_args, get_origin, overload

__all__ = [
    "CATALOG",
    "Approval",
    "Decision",
    "Revision",
    "Stability",
    "Trigger",
    "TypedKey",
    "annotation_value",
    "typed_key",
]

T = TypeVar("T")

Stability = Literal["stable", "experimental"]
"""``stable`` keys never change meaning or value type; ``experimental`` ones may."""


def _type_name(form: Any) -> str:
    if form is Any:
        return "Any"
    if isinstance(form, type) and get_origin(form) is None:
        return form.__name__
    # Generic aliases and unions print as written (``list[str]``, ``int | None``).
    return str(form).replace("typing.", "")


def _describe(value: object) -> str:
    if isinstance(value, list | tuple | set | frozenset) and value:
        element_types = " | ".join(sorted({type(item).__name__ for item in value}))
        return f"{type(value).__name__}[{element_types}]"
    return type(value).__name__


def _matches(value: object, form: Any) -> bool:
    """Return whether ``value`` fits the type expression ``form``."""
    if form is Any or form is object:
        return True
    origin = get_origin(form)
    if origin is Union or origin is types.UnionType:
        return any(_matches(value, member) for member in get_args(form))
    if origin is Literal:
        return value in get_args(form)
    if origin is not None:
        if not isinstance(origin, type) or not isinstance(value, origin):
            return False
        args = get_args(form)
        if not args:
            return True
        if isinstance(value, dict):
            key_type, value_type = args
            return all(_matches(k, key_type) and _matches(v, value_type) for k, v in value.items())
        if isinstance(value, tuple) and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(
                _matches(item, arg) for item, arg in zip(value, args, strict=True)
            )
        if isinstance(value, list | tuple | set | frozenset):
            return all(_matches(item, args[0]) for item in value)
        return True
    if form is type(None) or form is None:
        return value is None
    # bool subclasses int, yet True is not a confidence or a count.
    if isinstance(value, bool):
        return form is bool
    if form is float:
        return isinstance(value, int | float)
    return isinstance(form, type) and isinstance(value, form)


@dataclass(frozen=True)
class TypedKey(Generic[T]):
    """An annotation key bound to the type of its value.

    Passing a ``TypedKey[T]`` to ``ctx.annotate`` lets mypy check the value against ``T``; at run
    time :meth:`check` enforces the same rule.
    """

    key: str
    """The attribute key as stored, e.g. ``decision.confidence``."""
    value_type: Any
    """The value's type expression (``float``, ``list[str]``, ``Any``...)."""
    stability: Stability = "experimental"
    """Whether the key's meaning and type are frozen (``stable``) or may still change."""
    description: str | None = None
    """What the value means."""

    def check(self, value: object) -> None:
        """Raise unless ``value`` fits :attr:`value_type`.

        ``None`` always passes: the annotation layer drops ``None`` values instead of storing
        them. ``int`` passes for ``float`` keys; ``bool`` passes only for ``bool`` keys.

        Raises:
            TypeError: e.g. ``annotation key 'decision.confidence' expects float, got str``.
        """
        if value is None or _matches(value, self.value_type):
            return
        raise TypeError(
            f"annotation key {self.key!r} expects {_type_name(self.value_type)}, "
            f"got {_describe(value)}"
        )


@overload
def typed_key(
    key: str,
    value_type: type[T],
    *,
    stability: Stability = "experimental",
    description: str | None = None,
) -> TypedKey[T]: ...


@overload
def typed_key(
    key: str,
    value_type: object,
    *,
    stability: Stability = "experimental",
    description: str | None = None,
) -> TypedKey[Any]: ...


def typed_key(
    key: str,
    value_type: object,
    *,
    stability: Stability = "experimental",
    description: str | None = None,
) -> TypedKey[Any]:
    """Declare a typed annotation key.

    mypy infers ``T`` from classes and generic aliases (``float`` → ``TypedKey[float]``,
    ``list[str]`` → ``TypedKey[list[str]]``); other type expressions such as ``Any`` or unions
    give ``TypedKey[Any]``, which an explicit annotation can narrow.

    Args:
        key: The attribute key, e.g. ``acme.review.score``.
        value_type: The type values must have.
        stability: ``stable`` for keys whose meaning is frozen; ``experimental`` by default.
        description: What the value means.

    Returns:
        The :class:`TypedKey`.

    Raises:
        ValueError: An empty key or an unknown stability.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"annotation key must be a non-empty string, got {key!r}")
    if stability not in ("stable", "experimental"):
        raise ValueError(f"stability must be 'stable' or 'experimental', got {stability!r}")
    return TypedKey(key=key, value_type=value_type, stability=stability, description=description)


def annotation_value(key: TypedKey[T], value: T) -> T:
    """Check a value against a typed key, for mypy and at run time.

    Args:
        key: The typed key; its ``T`` must accept ``value`` (mypy reports a mismatch).
        value: The value to annotate.

    Returns:
        ``value`` unchanged.

    Raises:
        TypeError: The value does not fit the key's type.
    """
    key.check(value)
    return value


class Trigger:
    """Why and by whom a run was started."""

    source: Final[TypedKey[str]] = typed_key(
        "trigger.source",
        str,
        stability="stable",
        description="What started the run, e.g. 'webhook:zendesk', 'schedule:nightly', 'cli'.",
    )
    parent_run_id: Final[TypedKey[str]] = typed_key(
        "trigger.parent_run_id",
        str,
        stability="stable",
        description="Id of the run that started this one, for runs spawned by other runs.",
    )
    reason: Final[TypedKey[str]] = typed_key(
        "trigger.reason",
        str,
        stability="stable",
        description="Free-text reason the run was started.",
    )
    actor_kind: Final[TypedKey[str]] = typed_key(
        "trigger.actor.kind",
        str,
        stability="stable",
        description="Kind of actor that started the run, e.g. 'user', 'system', 'agent'.",
    )
    actor_id: Final[TypedKey[str]] = typed_key(
        "trigger.actor.id",
        str,
        stability="stable",
        description="Id of the actor that started the run, e.g. an email or a service name.",
    )


class Decision:
    """A decision a stage took, with its rationale and confidence."""

    outcome: Final[TypedKey[Any]] = typed_key(
        "decision.outcome",
        Any,
        stability="stable",
        description="The decision taken; any JSON value, a scalar by convention.",
    )
    rationale: Final[TypedKey[str]] = typed_key(
        "decision.rationale",
        str,
        stability="stable",
        description="Why the decision was taken, in prose.",
    )
    confidence: Final[TypedKey[float]] = typed_key(
        "decision.confidence",
        float,
        stability="stable",
        description="Confidence in the decision, a number (by convention between 0 and 1).",
    )
    alternatives: Final[TypedKey[list[Any]]] = typed_key(
        "decision.alternatives",
        list,
        stability="stable",
        description="Other outcomes that were considered, as a list.",
    )
    used_fallback: Final[TypedKey[bool]] = typed_key(
        "decision.used_fallback",
        bool,
        stability="experimental",
        description="Whether the decision came from a fallback path rather than the main one.",
    )


class Approval:
    """Who approved something, when, and under which policy."""

    approvers: Final[TypedKey[list[str]]] = typed_key(
        "approval.approvers",
        list[str],
        stability="stable",
        description="Ids of the approvers; always a list, even for one approver.",
    )
    timestamp: Final[TypedKey[str]] = typed_key(
        "approval.timestamp",
        str,
        stability="stable",
        description="When the approval was given, as an ISO 8601 string.",
    )
    policy_version: Final[TypedKey[str]] = typed_key(
        "approval.policy.version",
        str,
        stability="experimental",
        description="Version of the approval policy that applied.",
    )
    outcome: Final[TypedKey[str]] = typed_key(
        "approval.outcome",
        str,
        stability="experimental",
        description="What the approver decided: 'approved' or 'rejected'.",
    )
    comment: Final[TypedKey[str]] = typed_key(
        "approval.comment",
        str,
        stability="experimental",
        description="The approver's comment, e.g. why a request was rejected.",
    )


class Revision:
    """Links a run to the run it revises."""

    previous_run_id: Final[TypedKey[str]] = typed_key(
        "revision.previous_run_id",
        str,
        stability="stable",
        description="Id of the run this run revises.",
    )
    reason: Final[TypedKey[str]] = typed_key(
        "revision.reason",
        str,
        stability="stable",
        description="Why the earlier run was revised.",
    )


CATALOG: Final[tuple[TypedKey[Any], ...]] = tuple(
    value
    for namespace in (Trigger, Decision, Approval, Revision)
    for value in vars(namespace).values()
    if isinstance(value, TypedKey)
)
"""Every well-known key, namespace by namespace, in declaration order."""
