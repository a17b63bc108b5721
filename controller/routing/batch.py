"""Turn a recorded delivery into work: load → route (pure) → apply, in one transaction.

The delivery row carries ``processed_at``; it is set in the same transaction that applies
the intents, so a routing job that runs twice (its worker died after committing, before
acking) finds the delivery processed and does nothing the second time.

One delivery never holds back its neighbours:

* A payload routing cannot read (a wrong-typed field, see :mod:`webhooks.events`) is
  recorded ``rejected`` with the reason, at once; so is one whose pure routing raises
  anything else (retrying a pure function on the same input cannot help) — that one is
  also logged with its traceback, as it is a bug.
* If applying a batch fails (the database refused a write), the batch is rolled back and
  its deliveries are routed one by one, each in its own transaction: only the failing one
  waits for a retry with backoff, and once its attempts run out it is recorded
  ``failed``, so every delivery ends with an outcome.

Memory: a batch is bounded by bytes of body as well as by count (``MAX_BATCH_BYTES``),
delivery rows are loaded without their bodies, and each body is read, parsed and dropped
one at a time, so a backlog of 24 MiB pushes holds one of them in memory, not 128.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from sqlalchemy.orm import Session, defer

from controller.domain.deployments import Applied
from controller.queue import Backoff
from controller.routing.apply import IntentBatch
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.routejobs import (
    deliveries_without_body,
    delivery_sizes,
    due_route_jobs,
    due_route_keys,
    try_lock_key,
)
from controller.store.tables import Delivery, Job, utcnow

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 16 * 1024 * 1024


def process_delivery(db: Database, cipher: Cipher, delivery_pk: int) -> Applied | None:
    """Apply one delivery exactly once. Returns None if it was already processed."""
    with db.transaction() as session:
        return _process(session, cipher, delivery_pk)


class Routed(list[Applied]):
    """The outcomes of one routing batch; ``backlog`` says more deliveries are waiting."""

    backlog: bool = False


def route_pending(
    db: Database,
    cipher: Cipher,
    *,
    limit: int = 128,
    budget: float = 0.05,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Routed | None:
    """Route the oldest queued deliveries of one repository in one transaction, and mark
    their routing jobs done in it: no lease, no separate claim or ack, so a crash simply
    rolls the batch back. Returns None when nothing is queued.

    On PostgreSQL several replicas may drain at once; a transaction-scoped advisory lock
    per repository keeps each repository's deliveries in order.
    """
    with db.read() as session:
        keys = due_route_keys(session)
    if not keys:
        return None
    try:
        return _route_key(db, cipher, keys, limit=limit, budget=budget, max_bytes=max_bytes)
    except Exception as exc:
        log.warning(
            "routing a batch of %s failed (%s); routing its deliveries one by one",
            keys[0],
            type(exc).__name__,
        )
        routed = Routed(_route_one_by_one(db, cipher, keys[0], limit=limit, budget=budget))
        routed.backlog = True
        return routed


def _within_bytes(session: Session, pks: list[int], max_bytes: int) -> int:
    """How many of ``pks`` (in order) fit in ``max_bytes`` of body; at least one."""
    if len(pks) <= 1:
        return len(pks)
    sizes = delivery_sizes(session, pks)
    total = 0
    for n, pk in enumerate(pks):
        total += sizes.get(pk) or 0
        if n and total > max_bytes:
            return n
    return len(pks)


def _route_key(
    db: Database, cipher: Cipher, keys: list[str], *, limit: int, budget: float, max_bytes: int
) -> Routed:
    started = time.monotonic()
    with db.transaction() as session:
        key = keys[0]
        if db.dialect == "postgresql":
            for candidate in keys:
                if try_lock_key(session, candidate):
                    key = candidate
                    break
            else:
                return Routed()
        jobs = due_route_jobs(session, key, limit=limit, lock=db.dialect == "postgresql")
        pks = [int(job.payload["delivery"]) for job in jobs]
        fit = _within_bytes(session, pks, max_bytes)
        deliveries = deliveries_without_body(session, pks[:fit])
        batch = IntentBatch(session, cipher)
        done = 0
        for pk in pks[:fit]:
            if done and time.monotonic() - started > budget:
                break
            delivery = deliveries.get(pk)
            if delivery is not None:
                batch.process(delivery)
            done += 1
        batch.flush_deploys()
        now = utcnow()
        for job in jobs[:done]:
            job.status, job.updated_at, job.attempts = "done", now, job.attempts + 1
        routed = Routed(batch.results)
        routed.backlog = done < len(jobs) or len(jobs) == limit or len(keys) > 1
        return routed


def _route_one_by_one(
    db: Database, cipher: Cipher, key: str, *, limit: int, budget: float
) -> list[Applied]:
    """Route the queued deliveries of ``key`` one transaction each (after their batch
    failed), so that only the one that fails waits for a retry."""
    started = time.monotonic()
    with db.read() as session:
        jobs = due_route_jobs(session, key, limit=limit)
    results: list[Applied] = []
    for job in jobs:
        if results and time.monotonic() - started > budget:
            break
        results += _route_alone(db, cipher, job)
    return results


def _route_alone(db: Database, cipher: Cipher, job: Job) -> list[Applied]:
    """Route one delivery alone, or record the failure and retry it later with backoff;
    once its job's attempts run out the delivery is recorded ``failed``."""
    try:
        with db.transaction() as session:
            applied = _process(session, cipher, int(job.payload["delivery"]))
            row = session.get(Job, job.id)
            assert row is not None
            row.status, row.updated_at = "done", utcnow()
            return [applied] if applied is not None else []
    except Exception as exc:
        log.exception("routing delivery %s failed", job.payload.get("delivery"))
        with db.transaction() as session:
            row = session.get(Job, job.id)
            assert row is not None
            row.attempts += 1
            row.last_error = f"{type(exc).__name__}: {exc}"[:4000]
            if row.attempts >= row.max_attempts:
                row.status = "failed"
                delivery = session.get(
                    Delivery, int(job.payload["delivery"]), options=[defer(Delivery.body)]
                )
                if delivery is not None and delivery.processed_at is None:
                    delivery.processed_at = utcnow()
                    delivery.outcome = (
                        f"failed: routing gave up after {row.attempts} attempts "
                        f"({type(exc).__name__})"
                    )
            else:
                delay = Backoff(limit=row.max_attempts, min_timeout=1, max_timeout=60).delay(
                    row.attempts
                )
                row.run_after = utcnow() + timedelta(seconds=delay)
        return []


def _process(session: Session, cipher: Cipher, delivery_pk: int) -> Applied | None:
    delivery = session.get(Delivery, delivery_pk, options=[defer(Delivery.body)])
    if delivery is None or delivery.processed_at is not None:
        return None
    batch = IntentBatch(session, cipher)
    batch.process(delivery)
    batch.flush_deploys()
    return batch.results[0] if batch.results else None
