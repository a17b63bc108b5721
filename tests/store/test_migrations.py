"""Migrations: idempotent on every start, safe when replicas start together, reversible,
and the migrated schema is exactly what the models declare (``alembic check``)."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, ForeignKeyConstraint, inspect, select, text
from sqlalchemy.exc import IntegrityError
from support.waiting import scaled

from controller.queue import Queue
from controller.store.db import HEAD_REVISION, Database, alembic_config
from controller.store.tables import Base, Installation, Job

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def versions(database: Database) -> list[str]:
    with database.engine.connect() as conn:
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def schema(database: Database) -> dict[str, Any]:
    """Tables with their columns, indexes, unique constraints and foreign keys."""
    with database.engine.connect() as conn:
        inspector = inspect(conn)
        return {
            table: (
                [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
                sorted(i["name"] or "" for i in inspector.get_indexes(table)),
                sorted(u["name"] or "" for u in inspector.get_unique_constraints(table)),
                sorted(f["name"] or "" for f in inspector.get_foreign_keys(table)),
            )
            for table in sorted(inspector.get_table_names())
        }


def model_differences(conn: Connection) -> list[Any]:
    return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def is_sqlite_skipped_fk(diff: Any) -> bool:
    """The one edge 0001 leaves out on SQLite: environments.current_version_id → versions
    (the tables point at each other, and SQLite cannot add a foreign key afterwards)."""
    if not (isinstance(diff, tuple) and len(diff) == 2 and diff[0] == "add_fk"):
        return False
    fk = diff[1]
    return (
        isinstance(fk, ForeignKeyConstraint)
        and fk.name == "fk_environments_current_version"
        and fk.parent.name == "environments"
        and fk.referred_table.name == "versions"
        and [c.name for c in fk.columns] == ["current_version_id"]
    )


def assert_schema_matches_models(database: Database) -> None:
    with database.engine.connect() as conn:
        differences = model_differences(conn)
    if database.is_sqlite:
        skipped = [d for d in differences if is_sqlite_skipped_fk(d)]
        assert len(skipped) <= 1
        differences = [d for d in differences if not is_sqlite_skipped_fk(d)]
    assert differences == []


def test_migrating_twice_is_a_no_op(database: Database) -> None:
    assert HEAD is not None
    assert versions(database) == [HEAD]
    before = schema(database)
    assert "jobs" in before and "deployments" in before
    with database.transaction() as session:
        session.add(Installation(id=4242, account="octo-org"))

    database.migrate()

    assert versions(database) == [HEAD]
    assert schema(database) == before
    with database.read() as session:
        assert session.execute(select(Installation.account)).scalars().all() == ["octo-org"]


def test_a_database_at_the_head_revision_is_not_handed_to_alembic(database: Database) -> None:
    """The shortcut in ``Database.migrate`` knows the head by name; a new migration that
    forgets to move HEAD_REVISION fails here, not as a skipped upgrade in production."""
    assert HEAD_REVISION == HEAD
    probe = (
        "import sys\n"
        "from controller.store.db import Database\n"
        "Database(sys.argv[1]).migrate()\n"
        "assert 'alembic' not in sys.modules, 'alembic imported for an up-to-date database'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, database.url],
        capture_output=True,
        text=True,
        timeout=scaled(120),
    )
    assert done.returncode == 0, done.stderr


def test_a_server_process_migrates_in_a_child_and_never_imports_alembic(
    database_url: str,
) -> None:
    """``slipway serve`` on a fresh database: the upgrade runs in a short-lived child, so
    the long-lived process does not keep alembic and Mako (~10 MB) for its lifetime."""
    probe = (
        "import sys\n"
        "from controller.store.db import Database\n"
        "db = Database(sys.argv[1])\n"
        "assert not db._at_head()\n"
        "db.migrate(in_child=True)\n"
        "assert db._at_head()\n"
        "assert 'alembic' not in sys.modules, 'alembic imported by the parent'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, database_url],
        capture_output=True,
        text=True,
        timeout=scaled(180),
    )
    assert done.returncode == 0, done.stderr
    migrated = Database(database_url)
    try:
        assert versions(migrated) == [HEAD]
        assert_schema_matches_models(migrated)
    finally:
        migrated.dispose()


def test_a_migration_that_fails_in_the_child_says_why(database: Database) -> None:
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(RuntimeError, match=r"the database migration failed: .*9999"):
        database.migrate(in_child=True)


def test_the_migrated_schema_matches_the_models(database: Database) -> None:
    assert_schema_matches_models(database)

    # The check can fail: without a column it reports exactly that column.
    with database.engine.begin() as conn:
        conn.execute(text("ALTER TABLE deliveries DROP COLUMN outcome"))
    with database.engine.connect() as conn:
        differences = model_differences(conn)
    assert [(d[0], d[2], d[3].name) for d in differences if d[0] == "add_column"] == [
        ("add_column", "deliveries", "outcome")
    ]


def test_downgrade_to_base_then_replicas_migrate_together(database: Database) -> None:
    config = alembic_config()
    with database.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    with database.engine.connect() as conn:
        assert inspect(conn).get_table_names() == ["alembic_version"]
    assert versions(database) == []

    replicas = [Database(database.url) for _ in range(3)]
    errors: list[BaseException] = []

    def start(replica: Database) -> None:
        try:
            replica.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(r,)) for r in replicas]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=scaled(60))
    finally:
        for replica in replicas:
            replica.dispose()

    assert errors == []
    assert versions(database) == [HEAD]
    assert_schema_matches_models(database)


def test_at_most_one_running_job_per_key_is_enforced_by_the_schema(database: Database) -> None:
    with database.transaction() as session:
        for _ in range(2):
            Queue.add(session, kind="deploy", key="env:1")  # queued twice: fine
        session.add(Job(kind="deploy", key="env:1", status="running"))
        session.add(Job(kind="deploy", key="env:2", status="running"))

    with pytest.raises(IntegrityError), database.transaction() as session:
        session.add(Job(kind="deploy", key="env:1", status="running"))
    with database.read() as session:
        assert len(session.execute(select(Job.id)).all()) == 4
