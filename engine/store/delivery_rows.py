"""Rows of ``plugin_deliveries``: which plugin already handled which outbox event."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.store.models import PluginDelivery, utcnow
from engine.store.sql import insert_ignore

__all__ = ["delivered_plugins", "record_delivery"]


def delivered_plugins(session: Session, event_id: str) -> set[str]:
    """Ids of the plugins that handled ``event_id``."""
    rows = session.scalars(
        select(PluginDelivery.plugin_id).where(PluginDelivery.event_id == event_id)
    )
    return set(rows.all())


def record_delivery(session: Session, event_id: str, plugin_id: str) -> None:
    """Note that ``plugin_id`` handled ``event_id`` (a repeat is a no-op)."""
    session.execute(
        insert_ignore(session, PluginDelivery.__table__).values(
            event_id=event_id, plugin_id=plugin_id, delivered_at=utcnow()
        )
    )
