"""``Database.transaction(durable=False)``: one commit without waiting for the disk.

A run's rows (its "running" row, then its outcome, which the caller has in the trigger's
response anyway) skip the fsync: a crash of the process keeps them, one of the machine
may lose the last checkpoint interval of them. Every other transaction, on the same
pooled connection, is durable again. On PostgreSQL the same promise is
``synchronous_commit = off`` for that transaction only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
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
    """On both databases, the write is there after."""
    with database.transaction(durable=False) as session:
        session.execute(text("CREATE TABLE relaxed_probe (id INTEGER PRIMARY KEY)"))
        session.execute(text("INSERT INTO relaxed_probe (id) VALUES (1)"))
    with database.read() as session:
        assert session.execute(text("SELECT count(*) FROM relaxed_probe")).scalar_one() == 1
    with database.transaction() as session:
        session.execute(text("DROP TABLE relaxed_probe"))


def test_on_postgresql_only_the_relaxed_transaction_commits_asynchronously(
    database: Database,
) -> None:
    if database.is_sqlite:
        pytest.skip("SQLite: the PRAGMA test above covers it")

    def setting(*, durable: bool) -> str:
        with database.transaction(durable=durable) as session:
            return str(session.execute(text("SHOW synchronous_commit")).scalar_one())

    assert setting(durable=False) == "off"
    assert setting(durable=True) == "on"  # SET LOCAL ended with the transaction
    with database.read() as session:
        assert session.execute(text("SHOW synchronous_commit")).scalar_one() == "on"
