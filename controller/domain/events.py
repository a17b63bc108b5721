"""Project events: why deliveries did what they did (skipped, archived, access)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from controller.store.tables import Event


def record_event(
    session: Session, project_id: int, kind: str, message: str, delivery_id: str | None = None
) -> None:
    session.add(Event(project_id=project_id, kind=kind, message=message, delivery_id=delivery_id))
