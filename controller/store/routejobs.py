"""Queries for routing: due routing jobs, and recorded deliveries read without their
bodies (a body is read on its own, one at a time; see :mod:`controller.routing`)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from controller.store.sql import one_of
from controller.store.tables import Delivery, Job, utcnow


def due_route_keys(session: Session, *, limit: int = 16) -> list[str]:
    """The keys (repositories) of the oldest due routing jobs, oldest first, distinct."""
    rows = session.execute(
        select(Job.key)
        .where(Job.kind == "route", Job.status == "queued", Job.run_after <= utcnow())
        .order_by(Job.id)
        .limit(limit)
    ).scalars()
    return list(dict.fromkeys(rows))


def due_route_jobs(session: Session, key: str, *, limit: int, lock: bool = False) -> list[Job]:
    """The due routing jobs of ``key``, oldest first; ``lock`` (PostgreSQL) locks them,
    skipping those another replica holds."""
    query = (
        select(Job)
        .where(
            Job.kind == "route",
            Job.key == key,
            Job.status == "queued",
            Job.run_after <= utcnow(),
        )
        .order_by(Job.id)
        .limit(limit)
    )
    if lock:
        query = query.with_for_update(skip_locked=True)
    return list(session.execute(query).scalars())


def try_lock_key(session: Session, key: str) -> bool:
    """PostgreSQL: a transaction-scoped advisory lock on ``key``, if free."""
    return bool(
        session.execute(select(func.pg_try_advisory_xact_lock(func.hashtext(key)))).scalar()
    )


def delivery_sizes(session: Session, pks: list[int]) -> dict[int, int | None]:
    return {
        pk: size
        for pk, size in session.execute(
            select(Delivery.id, func.length(Delivery.body)).where(one_of(Delivery.id, pks))
        )
    }


def deliveries_without_body(session: Session, pks: list[int]) -> dict[int, Delivery]:
    return {
        d.id: d
        for d in session.execute(
            select(Delivery).options(defer(Delivery.body)).where(one_of(Delivery.id, pks))
        ).scalars()
    }


def delivery_body(session: Session, pk: int) -> bytes:
    return bytes(session.execute(select(Delivery.body).where(Delivery.id == pk)).scalar_one())
