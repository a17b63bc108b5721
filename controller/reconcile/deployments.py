"""Resync passes over recorded work: deployments that lost their job get one again, and
webhook deliveries past their retention go."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from controller.queue import Queue
from controller.store.db import Database
from controller.store.deliveries import prune_deliveries
from controller.store.deployments import last_job_of, orphaned_queued_deployments
from controller.store.tables import utcnow

log = logging.getLogger(__name__)


def requeue_lost_deployments(db: Database, *, notify: Callable[[], None]) -> None:
    """Active deployments without a live job get one (their job was lost); one whose last
    job gave up is recorded failed."""
    with db.transaction() as session:
        for dep in orphaned_queued_deployments(session):
            last = last_job_of(session, dep.id)
            if last is not None and last.status == "failed":
                dep.status = "failed"
                dep.error = dep.error or f"gave up: {last.last_error}"
                dep.finished_at = utcnow()
                continue
            log.info("resync: re-queueing deployment %s", dep.id)
            Queue.add(session, kind="deploy", key=f"env:{dep.environment_id}", deployment_id=dep.id)
    notify()


def prune_old_deliveries(db: Database, *, days: float) -> None:
    """Delivery bodies and finished routing jobs older than the retention go."""
    emptied, removed = prune_deliveries(db, older_than=timedelta(days=days))
    if emptied or removed:
        log.info(
            "retention (%g days): dropped %d delivery bodies, %d routing jobs",
            days,
            emptied,
            removed,
        )
