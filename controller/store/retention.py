"""Retention: what the controller stops keeping, and when.

Three kinds of rows grow with use and are only useful for a while:

* **Finished jobs** (``done``, ``failed``, ``superseded``, ``canceled``) older than
  ``jobs``: deleted. The deployment a job served keeps its status and error; a job whose
  deployment is still active is kept (the resync reads the last job of an active
  deployment to tell "lost" from "gave up").
* **Deployment logs** of deployments finished more than ``deployment_logs`` ago: deleted,
  except the logs of deployments whose version is some environment's current version
  (how what runs now was built stays readable). Deployments, their steps and versions
  stay.
* **Run logs** of runs finished more than ``run_logs`` ago: emptied (``logs`` becomes
  NULL); the run's status, output and error stay.

Webhook deliveries have their own retention (:func:`controller.store.deliveries.prune_deliveries`).

Every prune runs in short transactions of ``batch`` rows and at most ``max_batches`` per
call, so the resync never holds the write lock for long; what is left waits for the next
resync. Each query is served by an index (``migrations/versions/0003``), so a pass costs
what it removes, not the size of the history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, delete, exists, or_, select, update

from controller.models import ACTIVE_STATUSES
from controller.store.db import Database
from controller.store.sql import one_of
from controller.store.tables import Deployment, DeploymentLog, Environment, Job, Run, utcnow

FINISHED_JOB_STATUSES = ("done", "failed", "superseded", "canceled")


@dataclass(frozen=True)
class RetentionPolicy:
    jobs: timedelta
    deployment_logs: timedelta
    run_logs: timedelta


@dataclass(frozen=True)
class Pruned:
    jobs: int = 0
    deployment_logs: int = 0
    run_logs: int = 0

    def __bool__(self) -> bool:
        return bool(self.jobs or self.deployment_logs or self.run_logs)


def prune_storage(
    db: Database, policy: RetentionPolicy, *, batch: int = 500, max_batches: int = 20
) -> Pruned:
    """Apply every retention rule of ``policy`` once (see the module docstring)."""
    limits = {"batch": batch, "max_batches": max_batches}
    return Pruned(
        jobs=prune_jobs(db, older_than=policy.jobs, **limits),
        deployment_logs=prune_deployment_logs(db, older_than=policy.deployment_logs, **limits),
        run_logs=prune_run_logs(db, older_than=policy.run_logs, **limits),
    )


def prune_jobs(
    db: Database, *, older_than: timedelta, batch: int = 500, max_batches: int = 20
) -> int:
    """Delete finished jobs older than ``older_than``; return how many went."""
    cutoff = utcnow() - older_than
    active = select(Deployment.id).where(Deployment.status.in_(ACTIVE_STATUSES))

    def one(conn: Connection) -> tuple[int, bool]:
        ids = (
            conn.execute(
                select(Job.id)
                .where(
                    Job.status.in_(FINISHED_JOB_STATUSES),
                    Job.updated_at < cutoff,
                    or_(Job.deployment_id.is_(None), Job.deployment_id.not_in(active)),
                )
                .limit(batch)
            )
            .scalars()
            .all()
        )
        if ids:
            conn.execute(delete(Job).where(one_of(Job.id, ids)))
        return len(ids), len(ids) == batch

    return _in_batches(db, one, max_batches=max_batches)


def prune_deployment_logs(
    db: Database, *, older_than: timedelta, batch: int = 500, max_batches: int = 20
) -> int:
    """Delete the log lines of deployments finished before the cutoff (not the current
    versions'); return how many lines went."""
    cutoff = utcnow() - older_than
    current = select(Environment.current_version_id).where(
        Environment.current_version_id.is_not(None)
    )
    deployments = max(1, batch // 50)  # a deployment has tens to hundreds of lines

    def one(conn: Connection) -> tuple[int, bool]:
        deployment_ids = (
            conn.execute(
                select(Deployment.id)
                .where(
                    Deployment.finished_at < cutoff,
                    or_(Deployment.version_id.is_(None), Deployment.version_id.not_in(current)),
                    exists().where(DeploymentLog.deployment_id == Deployment.id),
                )
                .limit(deployments)
            )
            .scalars()
            .all()
        )
        if not deployment_ids:
            return 0, False
        ids = (
            conn.execute(
                select(DeploymentLog.id)
                .where(one_of(DeploymentLog.deployment_id, deployment_ids))
                .limit(batch)
            )
            .scalars()
            .all()
        )
        conn.execute(delete(DeploymentLog).where(one_of(DeploymentLog.id, ids)))
        return len(ids), len(ids) == batch or len(deployment_ids) == deployments

    return _in_batches(db, one, max_batches=max_batches)


def prune_run_logs(
    db: Database, *, older_than: timedelta, batch: int = 500, max_batches: int = 20
) -> int:
    """Empty the logs of runs finished before the cutoff; return how many runs."""
    cutoff = utcnow() - older_than

    def one(conn: Connection) -> tuple[int, bool]:
        ids = (
            conn.execute(
                select(Run.id).where(Run.finished_at < cutoff, Run.logs.is_not(None)).limit(batch)
            )
            .scalars()
            .all()
        )
        if ids:
            conn.execute(update(Run).where(one_of(Run.id, ids)).values(logs=None))
        return len(ids), len(ids) == batch

    return _in_batches(db, one, max_batches=max_batches)


def _in_batches(
    db: Database, one: Callable[[Connection], tuple[int, bool]], *, max_batches: int
) -> int:
    """Run ``one`` (returns rows changed, and whether more may be waiting) in its own
    short write transaction, until it catches up or ``max_batches`` ran."""
    total = 0
    for _ in range(max_batches):
        with db.writing(), db.engine.begin() as conn:
            done, more = one(conn)
        total += done
        if not more:
            break
    return total
