"""Aggregate queries for the metrics scrape (:mod:`controller.metrics`): counts and
duration histograms derived from the tables at scrape time, so every process and replica
reports the same truth. Histograms come back as rows of
``(label, count, total_ms, bucket_1, ..., bucket_n)``, a bucket counting the values at or
under its bound (in seconds)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from controller.store.tables import Delivery, Deployment, DeploymentStep, Job, Run


def pending_deliveries(session: Session) -> tuple[int, datetime | None]:
    """How many stored deliveries wait to be routed, and when the oldest arrived."""
    count, oldest = session.execute(
        select(func.count(Delivery.id), func.min(Delivery.received_at)).where(
            Delivery.processed_at.is_(None)
        )
    ).one()
    return count, oldest


def queued_jobs_by_kind(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(Job.kind, func.count(Job.id)).where(Job.status == "queued").group_by(Job.kind)
    ).all()
    return {kind: count for kind, count in rows}


def deployments_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(Deployment.status, func.count(Deployment.id)).group_by(Deployment.status)
    ).all()
    return {status: count for status, count in rows}


def step_durations(session: Session, buckets: tuple[float, ...]) -> Sequence[Any]:
    """Per step name, of the finished steps."""
    column = DeploymentStep.duration_ms
    return session.execute(
        select(
            DeploymentStep.name,
            func.count(column),
            func.coalesce(func.sum(column), 0.0),
            *_bucket_columns(column, buckets),
        )
        .where(column.is_not(None))
        .group_by(DeploymentStep.name)
    ).all()


def run_durations(session: Session, buckets: tuple[float, ...]) -> Sequence[Any]:
    """Per run status: ``(status, runs, count, total_ms, buckets...)`` (``runs`` counts
    runs without a duration too)."""
    column = Run.duration_ms
    return session.execute(
        select(
            Run.status,
            func.count(Run.id),
            func.count(column),
            func.coalesce(func.sum(column), 0.0),
            *_bucket_columns(column, buckets),
        ).group_by(Run.status)
    ).all()


def _bucket_columns(column: Any, buckets: tuple[float, ...]) -> list[Any]:
    return [func.sum(case((column <= b * 1000.0, 1), else_=0)) for b in buckets]
