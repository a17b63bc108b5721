"""Queries on events (why a delivery did what it did)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.store.tables import Event


def recent_events(session: Session, project_id: int, *, limit: int) -> list[Event]:
    """Newest first."""
    return list(
        session.execute(
            select(Event)
            .where(Event.project_id == project_id)
            .order_by(Event.id.desc())
            .limit(limit)
        ).scalars()
    )
