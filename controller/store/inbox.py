"""SQLite only: the webhook inbox, a database file of its own that only intake writes to.

SQLite has one writer per database file. When intake shared the file with the controller,
a 202 waited for whatever routing or deploy transaction held the lock at that moment — up
to tens of milliseconds under load, which was the whole p99 of the intake benchmark. So
on SQLite, intake appends deliveries to ``<database>.inbox.db`` beside the main file (WAL,
``synchronous=FULL``: a committed row survives a crash or power loss like the main
database does), and the controller's router *moves* them: into ``deliveries`` plus a
route job in the main database, in one transaction there.

* Only intake writes this file. The router used to delete what it had moved, and so
  took the file's write lock from the controller process, which runs at ``nice`` +10:
  descheduled while holding it behind its own builds, it kept a 202 waiting (priority
  inversion; the ack p99 of a 1,000-preview burst was 1.6x an idle server's). Now the
  router remembers in memory how far it has moved, and intake's checkpoint thread
  deletes the entries the main database holds (:meth:`Inbox.forget_moved`).

* Moving is idempotent. ``deliveries.delivery_id`` is unique, so rows moved again by a
  restarted controller (its memory of how far it got is gone; intake may not have
  deleted them yet) insert nothing the second time: every delivery is routed once.
* A delivery id is always in at least one of the two files (intake deletes only what
  the main database holds). Intake therefore tells a repeated id by its insert conflicting here,
  or else by finding it in the main database — a read, which never waits for a writer.
* The inbox is a buffer, not a record: once moved, a delivery lives in the main database
  only, so backups and every reader need nothing but the main file.

PostgreSQL has row-level concurrency and no such lock, so there intake writes
``deliveries`` and jobs directly (see :mod:`controller.store.deliveries`).

The stdlib ``sqlite3`` module is used directly: this is one append-only table on the
hot path of every 202, owned by this module alone, and has no migrations to manage —
the schema is created if missing and versioned with ``PRAGMA user_version``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import make_url

from controller.store.db import WriteLock, create_private_file

SCHEMA_VERSION = 1
CACHE_KIB = 256  # per connection

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL UNIQUE,
    event TEXT NOT NULL,
    action TEXT,
    repo_lower TEXT,
    body BLOB NOT NULL,
    received_at TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class Entry:
    """One delivery waiting in the inbox, oldest first by ``seq``."""

    seq: int
    delivery_id: str
    event: str
    action: str | None
    repo_lower: str | None
    body: bytes
    received_at: datetime


class Inbox:
    """Appends and forgets what was moved (intake: its writer and checkpoint threads), and
    reads (the controller's router, which only remembers how far it has moved).

    Each process opens its own :class:`Inbox`. Write transactions queue on a ``flock``
    beside the file (:class:`~controller.store.db.WriteLock`) instead of sleep-polling in
    SQLite's busy handler; after creating the schema, only intake's process writes.
    """

    def __init__(self, path: Path, *, main: Path | None = None) -> None:
        self.path = path
        self.main = main
        self._lock = WriteLock(path.with_name(path.name + ".writelock"))
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._moved_through = 0  # the router's side: the highest seq it moved (this process)
        create_private_file(path)  # webhook payloads: for the server's user only
        with self._writing() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{path} was written by a newer Slipway (inbox schema {version}); "
                    "upgrade Slipway or move the file away once it is empty"
                )
            conn.execute(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @classmethod
    def beside(cls, database_url: str) -> Inbox | None:
        """The inbox for a SQLite database file; None for PostgreSQL or ``:memory:``."""
        url = make_url(database_url)
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        main = Path(url.database)
        return cls(main.with_name(main.stem + ".inbox.db"), main=main)

    # -- connections ----------------------------------------------------------------------

    def _opened(self, name: str, target: str, *, uri: bool = False) -> sqlite3.Connection:
        """This thread's connection ``name`` to ``target`` (autocommit mode: transactions
        are begun explicitly), opened on first use and closed by :meth:`close`."""
        conn: sqlite3.Connection | None = getattr(self._local, name, None)
        if conn is None:
            conn = sqlite3.connect(
                target, uri=uri, isolation_level=None, timeout=30, check_same_thread=False
            )
            setattr(self._local, name, conn)
            with self._guard:
                self._connections.append(conn)
        return conn

    def _connection(self) -> sqlite3.Connection:
        fresh = getattr(self._local, "inbox", None) is None
        conn = self._opened("inbox", str(self.path))
        if fresh:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            # Checkpoints run in the server's checkpoint thread, never inside a commit.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            # Rows are written once, read once and deleted: a page cache of SQLite's
            # default 2 MB per connection held ~2 MB of bodies in each of intake's
            # threads after a burst, for nothing (the kernel caches the file anyway).
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        return conn

    @contextmanager
    def _writing(self, *, urgent: bool = True) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        with self._lock.hold(urgent=urgent):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- intake ---------------------------------------------------------------------------

    def append(self, entries: Iterable[Entry]) -> set[str]:
        """Add entries in one transaction; returns the delivery ids that were new here."""
        rows = [
            (e.delivery_id, e.event, e.action, e.repo_lower, e.body, e.received_at.isoformat())
            for e in entries
        ]
        with self._writing() as conn:
            before = conn.total_changes
            new: set[str] = set()
            for row in rows:
                conn.execute(
                    "INSERT INTO inbox (delivery_id, event, action, repo_lower, body, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (delivery_id) DO NOTHING",
                    row,
                )
                if conn.total_changes != before:
                    new.add(row[0])
                    before = conn.total_changes
        return new

    def recorded(self, delivery_ids: set[str]) -> set[str]:
        """Which of ``delivery_ids`` the main database has already (moved out of here).

        A plain read on a read-only connection: in WAL mode it never waits for the
        controller's writes, and costs microseconds where a pooled SQLAlchemy connection
        costs half a millisecond on every commit."""
        if self.main is None or not delivery_ids:
            return set()
        conn = self._opened("main", f"{self.main.resolve().as_uri()}?mode=ro", uri=True)
        # One JSON parameter, not one placeholder per id: one prepared statement for every
        # batch size (see controller.store.sql).
        query = "SELECT delivery_id FROM deliveries WHERE delivery_id IN (SELECT value FROM json_each(?))"
        return {row[0] for row in conn.execute(query, (json.dumps(sorted(delivery_ids)),))}

    # -- the router -----------------------------------------------------------------------

    def oldest(self, limit: int, *, max_bytes: int | None = None) -> list[Entry]:
        """Up to ``limit`` entries not yet moved by this process, in arrival order (a read:
        never blocks).

        With ``max_bytes``, no more entries than fit in that many bytes of body (but
        always the first one): the sizes are read first (``length()`` of a blob reads no
        blob), then only the bodies that fit."""
        conn = self._connection()
        after = self._moved_through
        if max_bytes is not None:
            total, through = 0, None
            for n, (seq, size) in enumerate(
                conn.execute(
                    "SELECT seq, length(body) FROM inbox WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, limit),
                ).fetchall()
            ):
                total += size or 0
                if n and total > max_bytes:
                    break
                through = seq
            if through is None:
                return []
            query = (
                "SELECT seq, delivery_id, event, action, repo_lower, body, received_at"
                " FROM inbox WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
            )
            rows = conn.execute(query, (after, through, limit)).fetchall()
        else:
            rows = conn.execute(
                "SELECT seq, delivery_id, event, action, repo_lower, body, received_at"
                " FROM inbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [
            Entry(
                seq=seq,
                delivery_id=delivery_id,
                event=event,
                action=action,
                repo_lower=repo_lower,
                body=bytes(body),
                received_at=datetime.fromisoformat(received_at),
            )
            for seq, delivery_id, event, action, repo_lower, body, received_at in rows
        ]

    def moved(self, *, through: int) -> None:
        """The router committed the entries up to ``seq`` ``through`` to the main database:
        :meth:`oldest` skips them from now on. Nothing is written here (see the module's
        docstring); intake deletes them."""
        self._moved_through = max(self._moved_through, through)

    def forget_moved(self, limit: int = 1000) -> int:
        """Intake's side: delete the oldest entries the main database holds already (at
        most ``limit``, and only a leading run of them: the router moves in arrival
        order); returns how many went.

        ``seq`` is never reused (AUTOINCREMENT) and an entry is deleted only once its id
        is in the main database, so nothing that arrived meanwhile, or that a failed move
        left behind, is lost. A delete lost to a crash only means deleting those entries
        later (or a restarted router moving them again, which inserts nothing), so this
        commit need not wait for the disk (``synchronous=NORMAL``); the next intake commit
        syncs it along.
        """
        if self.main is None:
            return 0
        conn = self._connection()
        rows = conn.execute(
            "SELECT seq, delivery_id FROM inbox ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        if not rows:
            return 0
        recorded = self.recorded({delivery_id for _, delivery_id in rows})
        through, gone = None, 0
        for seq, delivery_id in rows:
            if delivery_id not in recorded:
                break
            through, gone = seq, gone + 1
        if through is None:
            return 0
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._writing(urgent=False) as tx:
                tx.execute("DELETE FROM inbox WHERE seq <= ?", (through,))
        finally:
            conn.execute("PRAGMA synchronous=FULL")
        return gone

    def waiting(self) -> bool:
        """Whether any entry waits to be moved by this process (a read: never blocks)."""
        query = "SELECT 1 FROM inbox WHERE seq > ? LIMIT 1"
        return self._connection().execute(query, (self._moved_through,)).fetchone() is not None

    def count(self) -> int:
        return int(self._connection().execute("SELECT count(*) FROM inbox").fetchone()[0])

    # -- housekeeping ---------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Copy the write-ahead log back into the file (PASSIVE: never blocks a writer)."""
        self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        with self._guard:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):  # best effort on the way out
                conn.close()
        self._local = threading.local()
        self._lock.close()
