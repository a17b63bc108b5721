"""``Database.transaction(durable=False)``: one commit without the fsync, on SQLite only.

A run's "running" row is committed before the run starts so that a crash mid-run leaves
a run the recovery marks failed; a crash of the process keeps a commit without fsync, so
only that row may skip it. Every other transaction, on the same pooled connection, is
durable again.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from controller.store.db import Database


def synchronous(database: Database, *, durable: bool) -> int:
    with database.transaction(durable=durable) as session:
        return int(session.execute(text("PRAGMA synchronous")).scalar_one())


def test_a_relaxed_commit_skips_the_fsync_and_the_next_one_does_not(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'slipway.db'}")
    try:
        database.migrate()
        full, normal = 2, 1
        assert synchronous(database, durable=True) == full
        assert synchronous(database, durable=False) == normal
        assert synchronous(database, durable=True) == full
        with database.read() as session:
            assert session.execute(text("PRAGMA synchronous")).scalar_one() in (full, normal)
        assert synchronous(database, durable=True) == full
    finally:
        database.dispose()


def test_a_relaxed_transaction_commits(database: Database) -> None:
    """On PostgreSQL the option changes nothing; on both, the write is there after."""
    with database.transaction(durable=False) as session:
        session.execute(text("CREATE TABLE relaxed_probe (id INTEGER PRIMARY KEY)"))
        session.execute(text("INSERT INTO relaxed_probe (id) VALUES (1)"))
    with database.read() as session:
        assert session.execute(text("SELECT count(*) FROM relaxed_probe")).scalar_one() == 1
    with database.transaction() as session:
        session.execute(text("DROP TABLE relaxed_probe"))
