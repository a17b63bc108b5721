"""Durable intake of webhook deliveries, with group commit.

``POST /webhooks/github`` must answer 202 only once the delivery *and* its routing job
are committed, and must do so in milliseconds under bursts. One transaction (and one
fsync) per request would cap throughput at the disk's sync rate, so a single writer
thread takes every delivery waiting at that moment and commits them together: each
request still waits for its own commit, but a burst of 200 shares one fsync.

A delivery id seen before inserts nothing (``ON CONFLICT DO NOTHING``) and reports
``duplicate``; the first recording stays the one that is processed. If the commit fails,
every waiting request gets the error and answers 503, so GitHub redelivers: nothing that
was acknowledged is ever lost.
"""

from __future__ import annotations

import asyncio
import logging
import queue as stdqueue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import insert
from sqlalchemy.dialects import postgresql, sqlite

from controller.store.db import Database
from controller.store.tables import Delivery, Job, utcnow

log = logging.getLogger(__name__)

MAX_BATCH = 256


@dataclass(frozen=True)
class Incoming:
    delivery_id: str
    event: str
    action: str | None
    repo_lower: str | None
    body: bytes


def route_key(repo_lower: str | None, delivery_id: str) -> str:
    """Deliveries of one repository are routed in arrival order, one at a time."""
    return f"repo:{repo_lower}" if repo_lower else f"delivery:{delivery_id}"


class DeliveryWriter:
    def __init__(self, db: Database, *, on_commit: Callable[[], None] | None = None) -> None:
        self.db = db
        self.on_commit = on_commit
        self._inbox: stdqueue.SimpleQueue[
            tuple[Incoming, asyncio.AbstractEventLoop, asyncio.Future[bool]] | None
        ] = stdqueue.SimpleQueue()
        self._thread: threading.Thread | None = None
        insert_fn = postgresql.insert if db.dialect == "postgresql" else sqlite.insert
        self._insert_delivery = (
            insert_fn(Delivery)
            .on_conflict_do_nothing(index_elements=["delivery_id"])
            .returning(Delivery.id, Delivery.delivery_id)
        )

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="delivery-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    async def record(self, item: Incoming) -> bool:
        """Durably record ``item``; True if new, False for a repeated delivery id."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._inbox.put((item, loop, future))
        return await future

    def _loop(self) -> None:
        while True:
            first = self._inbox.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._inbox.get_nowait()
                except stdqueue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._write(batch)
            if stop:
                return

    def _write(
        self, batch: list[tuple[Incoming, asyncio.AbstractEventLoop, asyncio.Future[bool]]]
    ) -> None:
        """One multi-row insert for the deliveries, one for their routing jobs."""
        created: set[str] = set()
        try:
            now = utcnow()
            fresh: dict[str, Incoming] = {}
            for item, _loop, _future in batch:
                fresh.setdefault(item.delivery_id, item)  # first of a repeated id wins
            with self.db.writing(urgent=True), self.db.engine.begin() as conn:
                # executemany of one cached statement: SQLAlchemy sends it as batched
                # multi-row INSERTs with RETURNING, without compiling SQL per batch size.
                rows = conn.execute(
                    self._insert_delivery,
                    [
                        {
                            "delivery_id": item.delivery_id,
                            "event": item.event,
                            "action": item.action,
                            "repo_lower": item.repo_lower,
                            "body": item.body,
                            "received_at": now,
                        }
                        for item in fresh.values()
                    ],
                ).all()
                ids = {delivery_id: pk for pk, delivery_id in rows}
                if ids:
                    conn.execute(
                        insert(Job),
                        [
                            {
                                "kind": "route",
                                "key": route_key(item.repo_lower, item.delivery_id),
                                "status": "queued",
                                "payload": {"delivery": ids[item.delivery_id]},
                                "attempts": 0,
                                "max_attempts": 10,
                                "run_after": now,
                                "created_at": now,
                                "updated_at": now,
                            }
                            # in arrival order, so a repository's deliveries route in order
                            for item in fresh.values()
                            if item.delivery_id in ids
                        ],
                    )
                created = set(ids)
        except Exception as exc:  # every waiter learns of it; GitHub will redeliver
            log.exception("could not record %d webhook deliveries", len(batch))
            for _item, loop, future in batch:
                loop.call_soon_threadsafe(_set_exception, future, exc)
            return
        answered: set[str] = set()
        for item, loop, future in batch:
            new = item.delivery_id in created and item.delivery_id not in answered
            answered.add(item.delivery_id)
            loop.call_soon_threadsafe(_set_result, future, new)
        if self.on_commit and created:
            self.on_commit()


def _set_result(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[bool], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
