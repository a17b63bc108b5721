"""The database: one engine, write and read transactions, and migrations on start.

SQLite is the embedded default and PostgreSQL the choice for several replicas; the
differences are handled here and nowhere else:

* SQLite runs in WAL mode with ``synchronous=FULL`` (a commit survives power loss) and
  every write transaction starts with ``BEGIN IMMEDIATE``, so read-then-write transactions
  (claiming a job, numbering a version) serialise instead of failing on lock upgrade.
  Reads use a plain deferred ``BEGIN`` and never block on writers. A write that may be
  lost with the machine (not with the process) asks ``transaction(durable=False)``:
  ``synchronous=NORMAL`` for that commit, which then skips the fsync. The WAL reaches the
  disk at the next durable commit or checkpoint (:meth:`Database.start_checkpointer`,
  every 0.5 s), so what such a commit risks is bounded: the last half second of it, on a
  power loss or kernel crash. PostgreSQL gets the same promise from
  ``synchronous_commit = off`` for that transaction. Runs use it (their outcome is in the
  trigger's response; a fsync would be a third of a warm run); deployments, versions,
  variables and deliveries never do.
* SQLite has one writer at a time. Waiting on its busy handler means sleeping in steps of
  up to 100 ms, so within the process write transactions queue on :class:`WriteLock`
  instead, which hands the lock over at once and lets the webhook writer go first.
* PostgreSQL uses ``READ COMMITTED`` with row locks (``FOR UPDATE SKIP LOCKED``) in the
  queue; see :mod:`controller.queue`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, inspect, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

# PostgreSQL's asynchronous commit, for this transaction only (SQLite's is a PRAGMA).
_ASYNC_COMMIT = text("SET LOCAL synchronous_commit = off")

CACHE_KIB = 512  # SQLite's page cache per connection (its default: 2 MB)

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest migration's revision (tests/store/test_migrations.py checks it is alembic's
# head). A database already there is not handed to alembic, which is then never imported:
# it and Mako cost each long-lived process ~10 MB for nothing.
HEAD_REVISION = "0011"


class WriteLock:
    """A reentrant lock whose urgent waiters (the webhook writer) go before the others.

    With ``path``, the outermost holder also takes an exclusive ``flock`` on that file, so
    write transactions of several processes on one SQLite file (``slipway serve`` and its
    controller process) queue in the kernel, which wakes the next one at once, instead of
    sleep-polling in SQLite's busy handler.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600) if path is not None else None
        self._cond = threading.Condition()
        self._owner: int | None = None
        self._depth = 0
        self._urgent = 0

    @contextmanager
    def hold(self, *, urgent: bool = False) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                outermost = False
            else:
                if urgent:
                    self._urgent += 1
                try:
                    while self._owner is not None or (not urgent and self._urgent):
                        self._cond.wait()
                finally:
                    if urgent:
                        self._urgent -= 1
                self._owner, self._depth = me, 1
                outermost = True
        if outermost and self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._release()
                raise
        try:
            yield
        finally:
            if outermost and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._release()

    def _release(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            kwargs["pool_size"] = 16
            kwargs["max_overflow"] = 16
            kwargs["pool_use_lifo"] = True
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 20
        if self.is_sqlite:
            _create_private(url)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = sessionmaker(
            self.engine.execution_options(sqlite_deferred=True), expire_on_commit=False
        )
        self._relaxed = sessionmaker(
            self.engine.execution_options(sqlite_synchronous="NORMAL"), expire_on_commit=False
        )
        self._migrated = threading.Lock()
        self._write_lock = WriteLock(_sqlite_lock_path(url) if self.is_sqlite else None)
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def writing(self, *, urgent: bool = False) -> Iterator[None]:
        """Hold this process's turn to write (SQLite only; PostgreSQL locks rows)."""
        if not self.is_sqlite:
            yield
            return
        with self._write_lock.hold(urgent=urgent):
            yield

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on any exception.
        ``durable=False``: the commit survives a crash of the process; one of the
        machine or database server may lose its last half second (no fsync, no wait for
        the WAL flush)."""
        sessions = self._writer if durable else self._relaxed
        with self.writing(), sessions() as session, session.begin():
            if not durable and not self.is_sqlite:
                session.execute(_ASYNC_COMMIT)
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (never takes SQLite's write lock)."""
        with self._reader() as session, session.begin():
            yield session

    def migrate(self, *, in_child: bool = False) -> None:
        """Bring the schema to the newest revision (idempotent, safe on every start).

        ``in_child`` (the long-lived server processes): a database that is not at the
        head revision (a fresh install, an upgrade) is migrated by a short-lived child
        process, so this one never imports alembic and Mako (~10 MB it would keep for
        its lifetime). The child takes the same locks; an error it reports is raised
        here. An in-memory database can only be migrated in this process."""
        with self._migrated:
            if self._at_head():
                return
            if in_child and not _in_memory(self.url):
                _upgrade_in_child(self.url)
            else:
                self._upgrade()

    def _at_head(self) -> bool:
        with self.read() as session:
            return _revisions(session.connection()) == [HEAD_REVISION]

    def _upgrade(self) -> None:
        with self.writing(), self.engine.begin() as connection:
            if not self.is_sqlite:
                # Several replicas may start at once: one migrates, the others wait.
                connection.execute(text("SELECT pg_advisory_xact_lock(7432001)"))
            if _revisions(connection) == [HEAD_REVISION]:
                return
            from alembic import command

            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def start_checkpointer(
        self, interval: float = 0.5, *, also: Sequence[Callable[[], object]] = ()
    ) -> None:
        """SQLite: copy the write-ahead log back into the database in the background
        (PASSIVE: it never blocks a writer), so no commit pays for a checkpoint. ``also``:
        more checkpoints to run in the same thread (the webhook inbox)."""
        if not self.is_sqlite or self._checkpointer is not None:
            return
        self._stop_checkpoints.clear()

        def main() -> None:
            self._checkpoint("PASSIVE")

        def loop() -> None:
            while not self._stop_checkpoints.wait(interval):
                for checkpoint in (main, *also):
                    try:
                        checkpoint()
                    except Exception as exc:  # a busy database: try again next time
                        log.debug("checkpoint skipped: %s", exc)

        self._checkpointer = threading.Thread(target=loop, name="sqlite-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoint(self, mode: str) -> None:
        # On the DB-API connection, outside any transaction: SQLAlchemy's autobegin would
        # issue our BEGIN IMMEDIATE first, and SQLite refuses a checkpoint inside it.
        raw = self.engine.raw_connection()
        try:
            raw.driver_connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()  # type: ignore[union-attr]
        finally:
            raw.close()

    def dispose(self) -> None:
        if self._checkpointer is not None:
            self._stop_checkpoints.set()
            self._checkpointer.join(5)
            self._checkpointer = None
        if self.is_sqlite:
            with contextlib.suppress(Exception):  # best effort on the way out
                self._checkpoint("TRUNCATE")
        self.engine.dispose()
        self._write_lock.close()


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (SQLite creates its
    ``-wal`` and ``-shm`` files with the database file's permissions)."""
    # A missing directory is left to SQLite to report, as it always has.
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _create_private(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        create_private_file(Path(database))


def _sqlite_lock_path(url: str) -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database + ".writelock")


def _in_memory(url: str) -> bool:
    return url.startswith("sqlite") and make_url(url).database in (None, "", ":memory:")


MIGRATION_TIMEOUT = 600.0


def _upgrade_in_child(url: str) -> None:
    """Run :meth:`Database._upgrade` in ``python -m controller.store.db``; the URL goes
    over stdin (a password in it must not show in the process list)."""
    root = str(Path(__file__).resolve().parents[2])  # the directory holding `controller`
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "controller.store.db"],
            input=url,
            capture_output=True,
            text=True,
            env=env,
            timeout=MIGRATION_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"the database migration did not finish within {MIGRATION_TIMEOUT:g} s"
        ) from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(
            "the database migration failed: " + (lines[-1] if lines else f"exit {done.returncode}")
        )


def _revisions(connection: Any) -> list[str]:
    if not inspect(connection).has_table("alembic_version"):
        return []
    return list(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so BEGIN is ours to issue.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        # Checkpoints run in Database's own thread, not inside some request's commit.
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        synchronous = options.get("sqlite_synchronous", "FULL")
        info = connection.connection.info
        if info.get("synchronous", "FULL") != synchronous:  # may not change in a transaction
            connection.exec_driver_sql(f"PRAGMA synchronous={synchronous}")
            info["synchronous"] = synchronous
        deferred = options.get("sqlite_deferred", False)
        connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


if __name__ == "__main__":  # the child of Database.migrate(in_child=True)
    database = Database(sys.stdin.read().strip())
    try:
        database._upgrade()
    finally:
        database.dispose()
