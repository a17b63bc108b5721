"""Durable intake of webhook deliveries, with group commit.

``POST /webhooks/github`` must answer 202 only once the delivery is committed, and must do
so in milliseconds under bursts. One transaction (and one fsync) per request would cap
throughput at the disk's sync rate, so a single writer thread takes every delivery
waiting at that moment and commits them together: each request still waits for its own
commit, but a burst of 200 shares one fsync.

Where it is committed depends on the database:

* PostgreSQL: the delivery rows and their routing jobs, in one transaction.
* SQLite: the delivery rows, in the inbox file beside the database
  (:mod:`controller.store.inbox`), so a 202 never waits for the controller's write lock;
  the router moves them into ``deliveries`` plus routing jobs (:func:`move_from_inbox`).
  Each row in the inbox stands for "record this delivery and route it", so the delivery
  and its routing are still made durable by one commit.

A delivery id seen before inserts nothing (``ON CONFLICT DO NOTHING``) and reports
``duplicate``; the first recording stays the one that is processed.

If a group commit fails, its deliveries are committed again one by one, so one delivery
that cannot be stored (the receiver validates bodies, but the next unforeseen bad value
must not matter either) fails alone and never its neighbours. Each failure reaches its
waiter classified: :class:`~controller.errors.InvalidInput` when the value could not be
stored at all (the receiver answers 400: redelivering cannot help), else
:class:`~controller.errors.TemporaryError` (503, so GitHub redelivers): nothing that was
acknowledged is ever lost. Database errors are logged by type only, as their messages
carry the bound parameters (the body).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue as stdqueue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, StatementError

from controller.errors import InvalidInput, SlipwayError, TemporaryError
from controller.store.db import Database
from controller.store.inbox import Entry, Inbox
from controller.store.sql import one_of
from controller.store.tables import Delivery, Job, utcnow

log = logging.getLogger(__name__)

MAX_BATCH = 256
MAX_BATCH_BYTES = 16 * 1024 * 1024  # a move reads this much body at most (but one entry)


class Moved(int):
    """How many inbox entries one move took; ``backlog`` says more are waiting."""

    backlog: bool = False


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


@functools.cache
def _insert_delivery(dialect: str) -> Any:
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # One row per statement: SQLAlchemy batches an executemany with RETURNING into
    # multi-row INSERTs, one SQL text per batch size, and the driver keeps each prepared
    # (~2 KB a row; a burst of 1,000 deliveries left ~1.5 MB per pooled connection).
    return (
        insert_fn(Delivery)
        .on_conflict_do_nothing(index_elements=["delivery_id"])
        .returning(Delivery.id, Delivery.delivery_id)
        .execution_options(insertmanyvalues_page_size=1)
    )


def insert_deliveries(conn: Connection, entries: Sequence[Entry]) -> set[str]:
    """Insert deliveries not seen before, each with its routing job, in arrival order;
    returns the delivery ids that were new. Runs inside the caller's transaction."""
    if not entries:
        return set()
    # executemany of one cached statement, sent one row at a time (see _insert_delivery).
    rows = conn.execute(
        _insert_delivery(conn.dialect.name),
        [
            {
                "delivery_id": e.delivery_id,
                "event": e.event,
                "action": e.action,
                "repo_lower": e.repo_lower,
                "body": e.body,
                "received_at": e.received_at,
            }
            for e in entries
        ],
    ).all()
    ids = {delivery_id: pk for pk, delivery_id in rows}
    if ids:
        now = utcnow()
        conn.execute(
            insert(Job),
            [
                {
                    "kind": "route",
                    "key": route_key(e.repo_lower, e.delivery_id),
                    "status": "queued",
                    "payload": {"delivery": ids[e.delivery_id]},
                    "attempts": 0,
                    "max_attempts": 10,
                    "run_after": now,
                    "created_at": now,
                    "updated_at": now,
                }
                # in arrival order, so a repository's deliveries route in order
                for e in entries
                if e.delivery_id in ids
            ],
        )
    return set(ids)


def move_from_inbox(
    db: Database, inbox: Inbox, *, limit: int = MAX_BATCH, max_bytes: int = MAX_BATCH_BYTES
) -> Moved:
    """Move the oldest waiting inbox entries (at most ``limit``, and ``max_bytes`` of body
    but always one) into ``deliveries`` and routing jobs (one main-database transaction).
    Returns how many were taken. The inbox is not written: intake deletes what the main
    database holds (:meth:`Inbox.forget_moved`); a restarted router that moves them again
    inserts nothing."""
    entries = inbox.oldest(limit, max_bytes=max_bytes)
    if not entries:
        return Moved(0)
    with db.writing(), db.engine.begin() as conn:
        insert_deliveries(conn, entries)
    inbox.moved(through=entries[-1].seq)
    moved = Moved(len(entries))
    moved.backlog = inbox.waiting()
    return moved


def prune_deliveries(
    db: Database, *, older_than: timedelta, batch: int = 500, max_batches: int = 20
) -> tuple[int, int]:
    """Retention: a delivery processed more than ``older_than`` ago keeps its row (its id
    still tells a redelivery apart; deployments and events still name it; its outcome
    stays readable) but drops its body, and its finished routing job goes. Short
    transactions of ``batch`` rows; what is left waits for the next resync. Returns
    (bodies dropped, jobs deleted)."""
    cutoff = utcnow() - older_than
    emptied = removed = 0
    for _ in range(max_batches):
        with db.writing(), db.engine.begin() as conn:
            ids = (
                conn.execute(
                    select(Delivery.id)
                    .where(Delivery.processed_at < cutoff, func.length(Delivery.body) > 0)
                    .limit(batch)
                )
                .scalars()
                .all()
            )
            if ids:
                conn.execute(update(Delivery).where(one_of(Delivery.id, ids)).values(body=b""))
            jobs = (
                conn.execute(
                    select(Job.id)
                    .where(Job.kind == "route", Job.status == "done", Job.updated_at < cutoff)
                    .limit(batch)
                )
                .scalars()
                .all()
            )
            if jobs:
                conn.execute(delete(Job).where(one_of(Job.id, jobs)))
        emptied, removed = emptied + len(ids), removed + len(jobs)
        if len(ids) < batch and len(jobs) < batch:
            break
    return emptied, removed


class DeliveryWriter:
    def __init__(
        self,
        db: Database,
        *,
        inbox: Inbox | None = None,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.inbox = inbox
        self.on_commit = on_commit
        self._queue: stdqueue.SimpleQueue[
            tuple[Incoming, asyncio.AbstractEventLoop, asyncio.Future[bool]] | None
        ] = stdqueue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="delivery-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    async def record(self, item: Incoming) -> bool:
        """Durably record ``item``; True if new, False for a repeated delivery id."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._queue.put((item, loop, future))
        return await future

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except stdqueue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._write(batch)
            if stop:
                return

    def _commit(self, entries: list[Entry]) -> set[str]:
        """Commit ``entries``; returns the delivery ids never recorded before."""
        if self.inbox is None:
            with self.db.writing(urgent=True), self.db.engine.begin() as conn:
                return insert_deliveries(conn, entries)
        new = self.inbox.append(entries)
        if not new:
            return new
        # New to the inbox, but maybe moved out of it already: then it is a repeat.
        return new - self.inbox.recorded(new)

    def _write(
        self, batch: list[tuple[Incoming, asyncio.AbstractEventLoop, asyncio.Future[bool]]]
    ) -> None:
        now = utcnow()
        fresh: dict[str, Entry] = {}
        for item, _loop, _future in batch:
            if item.delivery_id not in fresh:  # first of a repeated id wins
                fresh[item.delivery_id] = Entry(
                    seq=0,
                    delivery_id=item.delivery_id,
                    event=item.event,
                    action=item.action,
                    repo_lower=item.repo_lower,
                    body=item.body,
                    received_at=now,
                )
        created, failed = self._commit_isolated(list(fresh.values()))
        answered: set[str] = set()
        for item, loop, future in batch:
            error = failed.get(item.delivery_id)
            if error is not None:
                loop.call_soon_threadsafe(_set_exception, future, error)
                continue
            new = item.delivery_id in created and item.delivery_id not in answered
            answered.add(item.delivery_id)
            loop.call_soon_threadsafe(_set_result, future, new)
        if self.on_commit and created:
            self.on_commit()

    def _commit_isolated(self, entries: list[Entry]) -> tuple[set[str], dict[str, SlipwayError]]:
        """Commit ``entries`` together, or else one by one: returns the new delivery ids
        and, per delivery id, why it could not be recorded."""
        try:
            return self._commit(entries), {}
        except Exception as exc:
            if len(entries) == 1:
                return set(), {entries[0].delivery_id: _classified(exc)}
            log.warning(
                "a group commit of %d webhook deliveries failed (%s); committing them one by one",
                len(entries),
                _kind(exc),
            )
        created: set[str] = set()
        failed: dict[str, SlipwayError] = {}
        for entry in entries:
            try:
                created |= self._commit([entry])
            except Exception as exc:
                failed[entry.delivery_id] = _classified(exc)
        return created, failed


_UNSTORABLE = (
    UnicodeError,
    ValueError,
    OverflowError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    DataError,
)


def _kind(exc: BaseException) -> str:
    """The exception's type, and its driver's error type: never its message."""
    orig = getattr(exc, "orig", None)
    return f"{type(exc).__name__}/{type(orig).__name__}" if orig is not None else type(exc).__name__


def _classified(exc: BaseException) -> SlipwayError:
    orig = exc.orig if isinstance(exc, StatementError) else None
    if isinstance(exc, _UNSTORABLE) or isinstance(orig, _UNSTORABLE):
        error: SlipwayError = InvalidInput(
            f"the delivery cannot be stored ({_kind(exc)}); it is not valid UTF-8 JSON"
        )
    else:
        error = TemporaryError(f"the database could not record the delivery ({_kind(exc)})")
    error.__cause__ = exc
    return error


def _set_result(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[bool], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
