"""Durable jobs: enqueue, claim with a lease, ack, retry, supersede.

The queue is a table (:class:`controller.store.tables.Job`), so a job survives any crash
that happens after the transaction that enqueued it. Rules:

* **One key, one worker** (kopf's ``queueing.py``): every job has a ``key`` (an
  environment for deployments, a repository for routing). A partial unique index allows at
  most one ``running`` job per key, so two replicas cannot both run the same environment.
  Jobs of one key are taken oldest first.
* **Leases**: a claimed job carries ``lease_owner`` and ``lease_expires_at``; the owner
  renews it while working (:meth:`Queue.renew`). A job whose lease ran out — its worker
  crashed or was SIGKILLed — is queued again by the next claim. On start, a controller
  also frees leases that a dead process on the same host held, so a restart does not wait
  for the lease to run out.
* **Newest wins**: :meth:`Queue.supersede` marks older *queued* jobs of a key
  ``superseded`` (the caller does the same to their deployments in the same transaction).
* **Bounded builds**: at most ``limits[kind]`` jobs of a kind run at once, across replicas.
  On PostgreSQL, claims take a transaction-scoped advisory lock so the count is exact; on
  SQLite, ``BEGIN IMMEDIATE`` already serialises them.

Enqueuing wakes local workers at once through a condition variable; other replicas find
the job on their next poll.

Its queries stay here rather than in :mod:`controller.store`: the job table's state
machine (claim, lease, ack, supersede) is the queue itself, each step one transaction of
SQL that only this module may run.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.owners import make_owner, owner_alive
from controller.store.db import Database
from controller.store.sql import one_of
from controller.store.tables import Job, utcnow

LEASE_SECONDS = 30.0


@dataclass(frozen=True)
class Claimed:
    id: int
    kind: str
    key: str
    payload: dict[str, Any]
    deployment_id: str | None
    attempts: int
    max_attempts: int


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter, as ``io.runTask``'s retry options."""

    limit: int = 5
    min_timeout: float = 1.0
    max_timeout: float = 60.0
    factor: float = 2.0
    randomize: bool = True

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        base = min(self.max_timeout, self.min_timeout * self.factor ** max(0, attempt - 1))
        if not self.randomize:
            return base
        return min(self.max_timeout, base * random.uniform(1.0, 2.0))


class Queue:
    def __init__(
        self,
        db: Database,
        *,
        owner: str | None = None,
        limits: dict[str, int] | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.db = db
        self.owner = owner or make_owner()
        self.limits = dict(limits or {})
        self.lease_seconds = lease_seconds
        self._wakeup = threading.Condition()
        self._generations: dict[str | None, int] = {}
        # Called on notify() too: wakes workers in other processes (the controller child).
        self.listeners: list[Callable[[str | None], None]] = []

    # -- producing -----------------------------------------------------------------------

    @staticmethod
    def add(
        session: Session,
        *,
        kind: str,
        key: str,
        payload: dict[str, Any] | None = None,
        deployment_id: str | None = None,
        run_after: datetime | None = None,
        max_attempts: int = 20,
    ) -> Job:
        """Add a job inside the caller's transaction (commit makes it durable)."""
        job = Job(
            kind=kind,
            key=key,
            payload=payload or {},
            deployment_id=deployment_id,
            run_after=run_after or utcnow(),
            max_attempts=max_attempts,
        )
        session.add(job)
        return job

    @staticmethod
    def supersede(session: Session, *, key: str, kind: str) -> list[str]:
        """Mark queued jobs of ``key`` superseded; return their deployment ids."""
        rows = session.execute(
            select(Job.id, Job.deployment_id).where(
                Job.key == key, Job.kind == kind, Job.status == "queued"
            )
        ).all()
        if rows:
            session.execute(
                update(Job)
                .where(one_of(Job.id, [r.id for r in rows]))
                .values(status="superseded", updated_at=utcnow())
            )
        return [r.deployment_id for r in rows if r.deployment_id]

    @staticmethod
    def cancel(session: Session, *, key: str) -> list[str]:
        """Cancel every queued job of ``key``; return their deployment ids."""
        rows = session.execute(
            select(Job.id, Job.deployment_id).where(Job.key == key, Job.status == "queued")
        ).all()
        if rows:
            session.execute(
                update(Job)
                .where(one_of(Job.id, [r.id for r in rows]))
                .values(status="canceled", updated_at=utcnow())
            )
        return [r.deployment_id for r in rows if r.deployment_id]

    def notify(self, kind: str | None = None) -> None:
        """Wake local workers of ``kind`` (all when None) once the enqueuing transaction
        committed. Webhook intake wakes only the routers, not the deploy threads."""
        with self._wakeup:
            self._generations[kind] = self._generations.get(kind, 0) + 1
            self._wakeup.notify_all()
        for listener in self.listeners:
            listener(kind)

    def generation(self, kinds: Iterable[str]) -> int:
        """Read before :meth:`claim`; pass to :meth:`wait` so no notify is lost in between."""
        g = self._generations
        return g.get(None, 0) + sum(g.get(kind, 0) for kind in kinds)

    def wait(self, timeout: float, since: int | None = None, kinds: Iterable[str] = ()) -> None:
        kinds = tuple(kinds)
        with self._wakeup:
            if since is None:
                self._wakeup.wait(timeout)
            else:
                self._wakeup.wait_for(lambda: self.generation(kinds) != since, timeout)

    # -- consuming -----------------------------------------------------------------------

    def claim(self, kinds: Iterable[str]) -> Claimed | None:
        """Take the oldest runnable job of ``kinds`` whose key is free, or None."""
        kinds = list(kinds)
        if not self._claimable(kinds):
            return None
        try:
            with self.db.transaction() as session:
                return self._claim(session, kinds)
        except IntegrityError:
            # Another replica claimed a job of the same key between our read and write.
            return None

    def _claimable(self, kinds: list[str]) -> bool:
        """A read-only probe, so idle workers never take the database's write lock (on
        SQLite that lock is shared with the webhook writer)."""
        now = utcnow()
        with self.db.read() as session:
            expired = session.execute(
                select(Job.id).where(Job.status == "running", Job.lease_expires_at < now).limit(1)
            ).first()
            if expired is not None:
                return True
            query = self._next_query(session, kinds, now)
            return query is not None and session.execute(query).first() is not None

    def _next_query(self, session: Session, kinds: list[str], now: datetime) -> Select[Any] | None:
        """The oldest runnable job of ``kinds``: queued, due, its key not running, its kind
        under its limit. None when every kind is at its limit."""
        running = session.execute(
            select(Job.kind, func.count()).where(Job.status == "running").group_by(Job.kind)
        ).all()
        busy = {kind: count for kind, count in running}
        allowed = [k for k in kinds if busy.get(k, 0) < self.limits.get(k, 1_000_000)]
        if not allowed:
            return None
        running_keys = select(Job.key).where(Job.status == "running").scalar_subquery()
        return (
            select(Job)
            .where(
                Job.status == "queued",
                Job.kind.in_(allowed),
                Job.run_after <= now,
                Job.key.not_in(running_keys),
            )
            .order_by(Job.id)
            .limit(1)
        )

    def _claim(self, session: Session, kinds: list[str]) -> Claimed | None:
        now = utcnow()
        if self.db.dialect == "postgresql":
            session.execute(select(func.pg_advisory_xact_lock(7432002)))
        # Expired leases: the worker that held them is gone; queue them again.
        session.execute(
            update(Job)
            .where(Job.status == "running", Job.lease_expires_at < now)
            .values(status="queued", lease_owner=None, lease_expires_at=None)
        )
        query = self._next_query(session, kinds, now)
        if query is None:
            return None
        if self.db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        job = session.execute(query).scalar_one_or_none()
        if job is None:
            return None
        job.status = "running"
        job.lease_owner = self.owner
        job.lease_expires_at = now + timedelta(seconds=self.lease_seconds)
        job.attempts += 1
        session.flush()
        return Claimed(
            id=job.id,
            kind=job.kind,
            key=job.key,
            payload=dict(job.payload or {}),
            deployment_id=job.deployment_id,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
        )

    def renew(self) -> int:
        """Extend every lease this owner holds; returns how many."""
        with self.db.transaction() as session:
            result = session.execute(
                update(Job)
                .where(Job.status == "running", Job.lease_owner == self.owner)
                .values(lease_expires_at=utcnow() + timedelta(seconds=self.lease_seconds))
            )
            return result.rowcount or 0  # type: ignore[attr-defined]

    def _finish(self, job_id: int, **values: Any) -> bool:
        with self.db.transaction() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "running", Job.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None, updated_at=utcnow(), **values)
            )
            done = bool(result.rowcount)  # type: ignore[attr-defined]
        self.notify()
        return done

    def ack(self, job_id: int) -> bool:
        return self._finish(job_id, status="done", last_error=None)

    def fail(self, job_id: int, error: str) -> bool:
        return self._finish(job_id, status="failed", last_error=error[:4000])

    def retry(self, job_id: int, *, delay: float, error: str) -> bool:
        return self._finish(
            job_id,
            status="queued",
            run_after=utcnow() + timedelta(seconds=max(0.0, delay)),
            last_error=error[:4000],
        )

    def release_dead_leases(self) -> int:
        """Queue again the jobs that a dead process on this host still holds."""
        host = socket.gethostname()
        with self.db.transaction() as session:
            held = session.execute(
                select(Job.id, Job.lease_owner).where(
                    Job.status == "running", Job.lease_owner.like(f"{host}:%")
                )
            ).all()
            dead = [job_id for job_id, owner in held if not owner_alive(owner, self.owner)]
            if dead:
                session.execute(
                    update(Job)
                    .where(one_of(Job.id, dead))
                    .values(status="queued", lease_owner=None, lease_expires_at=None)
                )
        return len(dead)

    def counts(self) -> dict[str, int]:
        """Jobs per status (for tests and diagnostics)."""
        with self.db.read() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        return {status: count for status, count in rows}
