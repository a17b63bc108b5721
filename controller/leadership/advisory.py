"""Leadership outside Kubernetes: a PostgreSQL session advisory lock.

``pg_try_advisory_lock`` on a connection of its own, opened outside the pool (a pooled
connection could be recycled, which would drop the lock behind our back). The lock is
PostgreSQL's to keep: it is held exactly as long as the session, so a leader that is
SIGKILLed, or whose machine or network goes away, loses it as soon as the server notices
the connection closed (TCP keepalives bound that). Holding is checked with a query on that
connection under a short statement timeout: an error means the session, and so the lock,
may be gone, and the leader stops building.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# The other advisory keys: 7432001 (migrations), 7432002 (queue claims).
LEADER_KEY = 7432010


class AdvisoryLock:
    description = "the PostgreSQL advisory lock"

    def __init__(self, database_url: str, *, key: int = LEADER_KEY) -> None:
        self.key = key
        self._engine = create_engine(
            database_url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={
                "connect_timeout": 10,
                "keepalives": 1,
                "keepalives_idle": 5,
                "keepalives_interval": 2,
                "keepalives_count": 3,
                "application_name": "slipway-leader",
                "options": "-c statement_timeout=5000",
            },
        )
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        try:
            if self._conn is None:
                self._conn = self._engine.connect()
            got = self._conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key})
            return bool(got.scalar())
        except Exception:
            self._close()
            raise

    def keep(self) -> bool:
        if self._conn is None:
            return False
        held = self._conn.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = pg_backend_pid() AND objid = :key"
            ),
            {"key": self.key},
        )
        return bool(held.scalar())

    def release(self) -> None:
        """Closing the session releases the lock (an explicit unlock would need the same
        connection to be healthy, which is exactly what may not hold here)."""
        self._close()
        self._engine.dispose()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:
                log.debug("closing the leader connection: %s", exc)
