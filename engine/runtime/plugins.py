"""Plugins: async handlers of outbox events, and the runner that is their event sink.

A plugin subscribes to event types (``on=["stage:completed", ...]``) and sees only those.
:class:`PluginRunner` hands each event to the subscribed plugins in registration order and
records each plugin's success on its own (in ``plugin_deliveries`` when it has a store), so a
retried event goes only to the plugins that have not handled it yet. Delivery is at least once:
a plugin may see an event again if the process dies between its handler returning and the
record being written, so handlers should be idempotent (``event.id`` is stable).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from engine.core.records import OutboxEventRecord
from engine.errors import EngineError
from engine.runtime.outbox import DEFAULT_MAX_RETRIES
from engine.store import SqlStore

__all__ = ["Plugin", "PluginDeliveryError", "PluginHandler", "PluginRunner", "define_plugin"]

log = logging.getLogger(__name__)

PluginHandler = Callable[[OutboxEventRecord], Awaitable[None]]
"""``async def handle(event: OutboxEventRecord) -> None``; raise to have the event retried."""

_MAX_ID_LENGTH = 255


@dataclass(frozen=True)
class Plugin:
    """A handler of the outbox events it subscribes to (build one with :func:`define_plugin`)."""

    id: str
    """Stable identifier; deliveries are recorded under it, so renaming it redelivers."""
    name: str
    """Human-readable name."""
    on: frozenset[str]
    """The event types it is given (``workflow:completed``, ``stage:failed``, …)."""
    handle: PluginHandler
    """The handler."""

    def subscribes_to(self, event_type: str) -> bool:
        """Whether events of ``event_type`` go to this plugin."""
        return event_type in self.on


def define_plugin(*, id: str, name: str, on: Iterable[str], handle: PluginHandler) -> Plugin:
    """Define a plugin.

    Args:
        id: Stable identifier (at most 255 characters), unique among a runner's plugins.
        name: Human-readable name.
        on: Event types to receive; others never reach ``handle``.
        handle: ``async def handle(event: OutboxEventRecord) -> None``.

    Raises:
        ValueError: empty or over-long ``id``, or no event type.
        TypeError: ``handle`` is not callable.
    """
    if not id or len(id) > _MAX_ID_LENGTH:
        raise ValueError(f"plugin id must be 1 to {_MAX_ID_LENGTH} characters, got {id!r}")
    if isinstance(on, str):
        raise TypeError(f"plugin {id!r}: on= takes a list of event types, got the string {on!r}")
    types = frozenset(on)
    if not types or not all(isinstance(t, str) and t for t in types):
        raise ValueError(f"plugin {id!r} must subscribe to at least one event type")
    if not callable(handle):
        raise TypeError(f"plugin {id!r}: handle must be an async function")
    return Plugin(id=id, name=name, on=types, handle=handle)


class PluginDeliveryError(EngineError):
    """One or more plugins raised on an event (the relay retries it for those plugins only)."""

    def __init__(self, event: OutboxEventRecord, failures: Mapping[str, Exception]) -> None:
        detail = "; ".join(f"{plugin_id}: {exc!r}" for plugin_id, exc in failures.items())
        super().__init__(
            f"plugins failed on event {event.id} ({event.event_type}, #{event.sequence}): {detail}",
            workflow_run_id=event.workflow_run_id,
        )
        self.event_id = event.id
        """The event that failed."""
        self.failures = dict(failures)
        """Plugin id → the exception its handler raised."""


class PluginRunner:
    """An :class:`~engine.runtime.outbox.EventSink` that hands events to plugins.

    Each subscribed plugin that has not handled the event yet is called, in registration
    order; one plugin raising does not keep the others from the event. If any raised, the
    runner raises :class:`PluginDeliveryError`, so the relay retries the event (and holds back
    the later events of its run); the retry goes only to the plugins that failed.

    Args:
        plugins: The plugins, with distinct ids.
        max_retries: Failed deliveries of an event before the relay dead-letters it.
        store: Where deliveries are recorded (``plugin_deliveries``), so that they survive a
            restart. Without one they are remembered in this process only. ``Kernel(plugins=
            [...])`` passes its store.

    Raises:
        ValueError: two plugins share an id, or ``max_retries`` is below 1.
    """

    def __init__(
        self,
        plugins: Iterable[Plugin],
        max_retries: int = DEFAULT_MAX_RETRIES,
        *,
        store: SqlStore | None = None,
    ) -> None:
        self.plugins: tuple[Plugin, ...] = tuple(plugins)
        """The plugins, in registration (calling) order."""
        seen: set[str] = set()
        for plugin in self.plugins:
            if plugin.id in seen:
                raise ValueError(f"plugin id {plugin.id!r} is registered twice")
            seen.add(plugin.id)
        if max_retries < 1:
            raise ValueError(f"max_retries must be at least 1, got {max_retries}")
        self.max_retries = max_retries
        """Failed deliveries of an event before the relay dead-letters it."""
        self.store = store
        """Where deliveries are recorded (``None``: in memory)."""
        self._delivered_in_memory: dict[str, set[str]] = {}

    async def publish(self, event: OutboxEventRecord) -> None:
        """Give the event to each subscribed plugin that has not handled it yet.

        Raises:
            PluginDeliveryError: one or more plugins raised.
        """
        subscribed = [p for p in self.plugins if p.subscribes_to(event.event_type)]
        if not subscribed:
            return
        delivered = await self._delivered(event.id)
        failures: dict[str, Exception] = {}
        for plugin in subscribed:
            if plugin.id in delivered:
                continue
            try:
                await plugin.handle(event)
            except Exception as exc:
                log.warning("plugin %s failed on event %s: %r", plugin.id, event.id, exc)
                failures[plugin.id] = exc
                continue
            await self._record(event.id, plugin.id)
        if failures:
            raise PluginDeliveryError(event, failures) from next(iter(failures.values()))
        self._delivered_in_memory.pop(event.id, None)

    async def _delivered(self, event_id: str) -> set[str]:
        if self.store is None:
            return set(self._delivered_in_memory.get(event_id, ()))
        return await self.store.delivered_plugins(event_id)

    async def _record(self, event_id: str, plugin_id: str) -> None:
        if self.store is None:
            self._delivered_in_memory.setdefault(event_id, set()).add(plugin_id)
            return
        # Its own short transaction, so a success is kept even if this event's relay
        # transaction later rolls back.
        await self.store.record_delivery(event_id, plugin_id)
