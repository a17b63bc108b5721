"""Webhook deliveries: durable intake with group commit (DeliveryWriter), the SQLite inbox
and its move into the main database, and turning a stored delivery into work exactly once
(process_delivery).

Over 400 lines: it covers the one durable path from a 202 to routed work, step by step.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from support.payloads import body_of, push
from support.statements import statements
from support.waiting import scaled

from controller.domain.environments import env_key
from controller.errors import InvalidInput, TemporaryError
from controller.routing import process_delivery
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.deliveries import (
    MAX_BATCH,
    DeliveryWriter,
    Incoming,
    insert_deliveries,
    move_from_inbox,
    prune_deliveries,
)
from controller.store.inbox import Entry, Inbox
from controller.store.tables import Delivery, Deployment, Environment, Event, Job, utcnow

BEFORE = "1" * 40
AFTER = "a1b2c3d" + "4" * 33


@pytest.fixture(scope="module")
def push_body() -> bytes:
    """A real push of ``octo-org/demo``'s default branch ``main`` (built once: it is
    validated against GitHub's schema)."""
    return body_of(push(repo="octo-org/demo", before=BEFORE, after=AFTER))


class Writer:
    """A DeliveryWriter set up as ``slipway serve`` sets it up (on SQLite, with the inbox),
    started only once every pending ``record`` has queued its item, so a burst lands in as
    few batches as the writer allows. ``record`` then moves the inbox into the main
    database, as the router does, unless ``move=False``."""

    def __init__(self, database: Database, *, inbox: bool = True) -> None:
        self.database = database
        self.commits = 0
        self.inbox = Inbox.beside(database.url) if inbox else None
        self.writer = DeliveryWriter(database, inbox=self.inbox, on_commit=self._committed)

    def _committed(self) -> None:
        self.commits += 1

    def record(self, items: Sequence[Incoming], *, move: bool = True) -> list[bool | BaseException]:
        async def burst() -> list[bool | BaseException]:
            tasks = [asyncio.create_task(self.writer.record(item)) for item in items]
            await asyncio.sleep(0)  # every task has put its item in the writer's queue
            self.writer.start()
            return await asyncio.gather(*tasks, return_exceptions=True)

        results = asyncio.run(asyncio.wait_for(burst(), timeout=scaled(60)))
        self.writer.stop()
        if move:
            self.move()
        return results

    def move(self) -> None:
        """Move everything, then let intake delete what moved (its checkpoint thread's job)."""
        while self.inbox is not None and move_from_inbox(self.database, self.inbox):
            pass
        if self.inbox is not None:
            self.inbox.forget_moved()

    def close(self) -> None:
        self.writer.stop()
        if self.inbox is not None:
            self.inbox.close()


def _writer(database: Database) -> Iterator[Writer]:
    w = Writer(database)
    try:
        yield w
    finally:
        w.close()
    assert w.writer._thread is None


@pytest.fixture
def writer(database: Database) -> Iterator[Writer]:
    yield from _writer(database)


def incoming(body: bytes, *, repo: str | None = "octo-org/demo", delivery_id: str = "") -> Incoming:
    return Incoming(
        delivery_id=delivery_id or str(uuid.uuid4()),
        event="push",
        action=None,
        repo_lower=repo,
        body=body,
    )


def count(database: Database, model: type) -> int:
    with database.read() as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


# -- recording ---------------------------------------------------------------------------


def test_a_new_delivery_is_recorded_with_its_route_job(
    database: Database, writer: Writer, push_body: bytes
) -> None:
    item = incoming(push_body)

    assert writer.record([item]) == [True]

    with database.read() as session:
        delivery = session.execute(select(Delivery)).scalar_one()
        job = session.execute(select(Job)).scalar_one()
    assert (delivery.delivery_id, delivery.event, delivery.repo_lower) == (
        item.delivery_id,
        "push",
        "octo-org/demo",
    )
    assert delivery.body == push_body
    assert delivery.processed_at is None
    assert (job.kind, job.key, job.status) == ("route", "repo:octo-org/demo", "queued")
    assert job.payload == {"delivery": delivery.id}
    assert writer.commits == 1


def test_a_repeated_delivery_id_adds_nothing(
    database: Database, writer: Writer, push_body: bytes
) -> None:
    first = incoming(push_body)
    assert writer.record([first]) == [True]

    again = incoming(b'{"different":true}', delivery_id=first.delivery_id)
    assert writer.record([again]) == [False]

    assert count(database, Delivery) == 1
    assert count(database, Job) == 1
    with database.read() as session:
        assert session.execute(select(Delivery.body)).scalar_one() == push_body
    assert writer.commits == 1, "nothing new, nobody to wake"


def test_a_delivery_id_repeated_within_one_batch_is_recorded_once(
    database: Database, writer: Writer, push_body: bytes
) -> None:
    item = incoming(push_body)

    assert writer.record([item, item, incoming(push_body)]) == [True, False, True]

    assert count(database, Delivery) == 2
    assert count(database, Job) == 2


def test_batches_of_every_size_insert_with_one_statement(
    database: Database, push_body: bytes
) -> None:
    """The driver keeps every distinct SQL text prepared: a multi-row INSERT per batch
    size held ~1.5 MB per pooled connection after a burst of 1,000."""
    with statements(database, starting="INSERT INTO deliveries") as seen:
        for size in (1, 3, 17, 40):
            entries = [
                Entry(
                    seq=i,
                    delivery_id=str(uuid.uuid4()),
                    event="push",
                    action=None,
                    repo_lower="octo-org/demo",
                    body=push_body,
                    received_at=utcnow(),
                )
                for i in range(size)
            ]
            with database.writing(), database.engine.begin() as conn:
                assert insert_deliveries(conn, entries) == {e.delivery_id for e in entries}
    # One text for every batch size (on PostgreSQL a single row's parameters are named
    # apart from a batch's, so two there).
    assert len(set(seen)) <= 2, set(seen)
    assert count(database, Delivery) == 61 and count(database, Job) == 61


def test_a_burst_of_300_deliveries_is_group_committed(
    database: Database, writer: Writer, push_body: bytes
) -> None:
    repos = ["octo-org/demo", "octo-org/api", None]
    items = [incoming(push_body, repo=repos[n % 3]) for n in range(300)]

    results = writer.record(items)

    assert results == [True] * 300
    assert count(database, Delivery) == 300
    with database.read() as session:
        jobs = session.execute(select(Job)).scalars().all()
        delivery_pks = set(session.execute(select(Delivery.id)).scalars())
    assert len(jobs) == 300
    assert {job.payload["delivery"] for job in jobs} == delivery_pks
    keys = Counter(job.key for job in jobs)
    assert keys["repo:octo-org/demo"] == 100
    assert keys["repo:octo-org/api"] == 100
    # Without a repository, each delivery is routed on its own.
    assert {key for key in keys if key.startswith("delivery:")} == {
        f"delivery:{item.delivery_id}" for item in items if item.repo_lower is None
    }
    assert writer.commits == -(-300 // MAX_BATCH), "one commit per batch, not per delivery"


def test_a_failed_write_reaches_every_waiter_and_leaves_nothing_behind(
    database: Database, push_body: bytes
) -> None:
    """Writing deliveries and jobs directly (PostgreSQL's way; SQLite's is below)."""
    writer = Writer(database, inbox=False)
    items = [incoming(push_body) for _ in range(20)]
    # The delivery insert succeeds and the job insert fails: the transaction must undo both.
    with database.engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs RENAME TO jobs_away"))

    results = writer.record(items)

    assert len(results) == 20
    assert all(isinstance(result, TemporaryError) for result in results), results
    assert all(isinstance(result.__cause__, DBAPIError) for result in results), results
    assert "jobs" in str(results[0].__cause__)
    assert "jobs" not in str(results[0]), "the message names the error type, not its SQL"
    with database.engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs_away RENAME TO jobs"))
    assert count(database, Delivery) == 0
    assert count(database, Job) == 0
    assert writer.commits == 0

    # GitHub redelivers after the 503: the same ids are accepted now.
    assert writer.record(items) == [True] * 20
    assert count(database, Delivery) == 20
    assert count(database, Job) == 20


def test_a_delivery_that_cannot_be_stored_fails_alone_not_its_batch(
    database: Database, writer: Writer, push_body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 12: one value the database refuses (a lone surrogate cannot be encoded)
    used to fail the whole group commit, and every delivery in it answered 503."""
    good = [incoming(push_body) for _ in range(10)]
    bad = incoming(push_body, repo="octo-org/\ud800")
    items = [*good[:5], bad, *good[5:]]

    results = writer.record(items)

    assert results[:5] + results[6:] == [True] * 10, results
    assert isinstance(results[5], InvalidInput), results[5]
    assert "\ud800" not in str(results[5])
    assert count(database, Delivery) == 10
    assert count(database, Job) == 10
    assert all("\ud800" not in r.getMessage() for r in caplog.records)


# -- retention ---------------------------------------------------------------------------


def test_retention_drops_old_bodies_and_routing_jobs_and_keeps_what_is_needed(
    database: Database, writer: Writer, push_body: bytes
) -> None:
    old, recent, waiting = (incoming(push_body) for _ in range(3))
    assert writer.record([old, recent, waiting]) == [True] * 3
    long_ago, now = utcnow() - timedelta(days=30), utcnow()
    processed_at = {old.delivery_id: long_ago, recent.delivery_id: now, waiting.delivery_id: None}
    with database.transaction() as session:
        pks = {}
        for delivery in session.execute(select(Delivery)).scalars():
            delivery.processed_at = processed_at[delivery.delivery_id]
            pks[delivery.id] = delivery.delivery_id
        for job in session.execute(select(Job)).scalars():
            done = processed_at[pks[job.payload["delivery"]]]
            job.status = "queued" if done is None else "done"
            job.updated_at = long_ago if done is None else done  # a queued job is never pruned

    assert prune_deliveries(database, older_than=timedelta(days=14), batch=1) == (1, 1)
    assert prune_deliveries(database, older_than=timedelta(days=14)) == (0, 0), "once"

    with database.read() as session:
        bodies = {d.delivery_id: d.body for d in session.execute(select(Delivery)).scalars()}
        left = {pks[job.payload["delivery"]] for job in session.execute(select(Job)).scalars()}
    assert bodies == {
        old.delivery_id: b"",
        recent.delivery_id: push_body,
        waiting.delivery_id: push_body,
    }
    assert left == {recent.delivery_id, waiting.delivery_id}
    # The row stays, so a redelivery of the old id is still a repeat, not new work.
    assert writer.record([old]) == [False]


# -- the SQLite inbox --------------------------------------------------------------------


@pytest.fixture
def sqlite_writer(sqlite_database: Database) -> Iterator[Writer]:
    yield from _writer(sqlite_database)


def waiting_in_inbox(writer: Writer, body: bytes, n: int) -> tuple[list[Incoming], Inbox]:
    """Record ``n`` deliveries and leave them in the inbox (not moved yet)."""
    items = [incoming(body) for _ in range(n)]
    assert writer.record(items, move=False) == [True] * n
    assert writer.inbox is not None
    return items, writer.inbox


def inbox_ids(inbox: Inbox) -> list[str]:
    return [entry.delivery_id for entry in inbox.oldest(10_000)]


def test_sqlite_acknowledges_once_the_delivery_is_in_the_inbox_file(
    sqlite_database: Database, sqlite_writer: Writer, push_body: bytes, tmp_path: Path
) -> None:
    items = [incoming(push_body) for _ in range(3)]

    assert sqlite_writer.record(items, move=False) == [True] * 3

    assert sqlite_writer.inbox is not None
    assert sqlite_writer.inbox.path == tmp_path / "slipway.inbox.db"
    # Committed: another connection (another process, after a crash) sees the rows.
    other = sqlite3.connect(sqlite_writer.inbox.path)
    try:
        stored = other.execute("SELECT delivery_id, body FROM inbox ORDER BY seq").fetchall()
    finally:
        other.close()
    assert stored == [(item.delivery_id, push_body) for item in items]
    assert count(sqlite_database, Delivery) == 0, "the main database is the router's to write"


def test_moving_the_inbox_keeps_arrival_order_and_empties_it(
    sqlite_database: Database, sqlite_writer: Writer, push_body: bytes
) -> None:
    items, inbox = waiting_in_inbox(sqlite_writer, push_body, MAX_BATCH + 10)

    assert move_from_inbox(sqlite_database, inbox) == MAX_BATCH, "one bounded batch at a time"
    assert move_from_inbox(sqlite_database, inbox) == 10
    assert move_from_inbox(sqlite_database, inbox) == 0

    assert inbox.count() == MAX_BATCH + 10, "the router never writes the inbox"
    assert inbox.forget_moved() == MAX_BATCH + 10, "intake deletes what moved"
    assert inbox.count() == 0
    with sqlite_database.read() as session:
        moved = session.execute(select(Delivery.delivery_id).order_by(Delivery.id)).scalars()
        jobs = session.execute(select(Job).order_by(Job.id)).scalars().all()
        pks = {d: pk for d, pk in session.execute(select(Delivery.delivery_id, Delivery.id))}
        assert list(moved) == [item.delivery_id for item in items]
    assert [job.payload["delivery"] for job in jobs] == [pks[i.delivery_id] for i in items]
    assert {job.status for job in jobs} == {"queued"}


def test_a_move_is_bounded_by_bytes_as_well_as_count(
    sqlite_database: Database, sqlite_writer: Writer, push_body: bytes
) -> None:
    """Issue 15: a backlog of large deliveries is moved a few at a time, not 256 bodies
    at once; the first entry always goes, however large."""
    large = push_body[:-1] + b',"padding":"' + b"x" * 100_000 + b'"}'
    items, inbox = waiting_in_inbox(sqlite_writer, large, 10)

    first = move_from_inbox(sqlite_database, inbox, max_bytes=250_000)
    assert (first, first.backlog) == (2, True)
    assert inbox.oldest(100, max_bytes=1) == inbox.oldest(1)
    assert move_from_inbox(sqlite_database, inbox, max_bytes=1) == 1
    rest = move_from_inbox(sqlite_database, inbox)
    assert (rest, rest.backlog) == (7, False)
    with sqlite_database.read() as session:
        moved = session.execute(select(Delivery.delivery_id).order_by(Delivery.id)).scalars()
        assert list(moved) == [item.delivery_id for item in items]


def test_a_restarted_router_moves_again_and_routes_nothing_twice(
    sqlite_database: Database, sqlite_writer: Writer, push_body: bytes
) -> None:
    """The router's progress is in memory only: after a restart it reads what intake has
    not deleted yet, and moving it again inserts nothing."""
    _items, inbox = waiting_in_inbox(sqlite_writer, push_body, 5)
    assert move_from_inbox(sqlite_database, inbox) == 5
    assert inbox.count() == 5

    restarted = Inbox(inbox.path, main=inbox.main)
    try:
        assert move_from_inbox(sqlite_database, restarted) == 5, "moved again..."
        assert count(sqlite_database, Delivery) == 5, "...inserting nothing the second time"
        assert count(sqlite_database, Job) == 5
        assert not restarted.waiting()
    finally:
        restarted.close()
    assert inbox.forget_moved() == 5
    assert inbox.count() == 0


def test_the_router_takes_no_lock_that_intake_waits_on(
    sqlite_database: Database, sqlite_writer: Writer, push_body: bytes
) -> None:
    """While intake holds the inbox's write lock, a move still completes: the router
    (niced, in the controller process) never writes the inbox file."""
    _items, inbox = waiting_in_inbox(sqlite_writer, push_body, 4)
    held = Inbox(inbox.path, main=inbox.main)
    try:
        with held._writing():
            assert move_from_inbox(sqlite_database, inbox) == 4
    finally:
        held.close()
    assert count(sqlite_database, Delivery) == 4


def test_a_failed_move_keeps_every_delivery_in_the_inbox(
    sqlite_database: Database, sqlite_writer: Writer, push_body: bytes
) -> None:
    items, inbox = waiting_in_inbox(sqlite_writer, push_body, 20)
    # The delivery insert succeeds and the job insert fails: the main transaction undoes both.
    with sqlite_database.engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs RENAME TO jobs_away"))

    with pytest.raises(DBAPIError, match="jobs"):
        move_from_inbox(sqlite_database, inbox)

    with sqlite_database.engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs_away RENAME TO jobs"))
    assert count(sqlite_database, Delivery) == 0
    assert inbox_ids(inbox) == [item.delivery_id for item in items]
    assert move_from_inbox(sqlite_database, inbox) == 20
    assert count(sqlite_database, Delivery) == 20
    assert count(sqlite_database, Job) == 20


def test_a_failed_inbox_write_reaches_every_waiter_and_records_nothing(
    sqlite_database: Database, sqlite_writer: Writer, push_body: bytes
) -> None:
    items = [incoming(push_body) for _ in range(20)]
    inbox = sqlite_writer.inbox
    assert inbox is not None
    other = sqlite3.connect(inbox.path, isolation_level=None)
    other.execute("ALTER TABLE inbox RENAME TO inbox_away")

    results = sqlite_writer.record(items, move=False)

    assert len(results) == 20
    assert all(isinstance(result, TemporaryError) for result in results), results
    assert all(isinstance(r.__cause__, sqlite3.OperationalError) for r in results), results
    assert sqlite_writer.commits == 0
    other.execute("ALTER TABLE inbox_away RENAME TO inbox")
    other.close()
    assert inbox.count() == 0

    # GitHub redelivers after the 503: the same ids are accepted now.
    assert sqlite_writer.record(items) == [True] * 20
    assert count(sqlite_database, Delivery) == 20


def test_an_id_repeated_while_its_first_delivery_is_still_in_the_inbox_is_a_duplicate(
    sqlite_database: Database, sqlite_writer: Writer, push_body: bytes
) -> None:
    item = incoming(push_body)
    assert sqlite_writer.record([item], move=False) == [True]
    assert sqlite_writer.record([item], move=False) == [False]
    sqlite_writer.move()
    assert sqlite_writer.record([item]) == [False], "and once it has moved on"
    assert count(sqlite_database, Delivery) == 1
    assert count(sqlite_database, Job) == 1


def test_intake_forgets_only_what_the_main_database_holds(
    sqlite_database: Database, sqlite_writer: Writer, push_body: bytes
) -> None:
    """Three moved, then a delivery arrived: intake deletes the three and keeps the
    newcomer, and a leading entry that has not moved keeps everything after it too."""
    first, inbox = waiting_in_inbox(sqlite_writer, push_body, 3)
    assert move_from_inbox(sqlite_database, inbox) == 3
    (late,), _ = waiting_in_inbox(sqlite_writer, push_body, 1)

    assert inbox.forget_moved() == 3
    assert inbox_ids(inbox) == [late.delivery_id]
    assert inbox.forget_moved() == 0, "not moved yet: kept"
    sqlite_writer.move()
    with sqlite_database.read() as session:
        moved = session.execute(select(Delivery.delivery_id).order_by(Delivery.id)).scalars()
        assert list(moved) == [item.delivery_id for item in [*first, late]]


def test_a_newer_inbox_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "slipway.inbox.db"
    Inbox(path).close()
    other = sqlite3.connect(path)
    other.execute("PRAGMA user_version = 99")
    other.close()

    with pytest.raises(RuntimeError, match="newer Slipway"):
        Inbox(path)


@pytest.mark.parametrize(
    "url", ["postgresql://slipway@127.0.0.1/slipway", "sqlite://", "sqlite:///:memory:"]
)
def test_only_a_sqlite_file_gets_an_inbox(url: str) -> None:
    assert Inbox.beside(url) is None


# -- processing --------------------------------------------------------------------------


def store(database: Database, body: bytes, *, event: str = "push") -> int:
    with database.transaction() as session:
        delivery = Delivery(
            delivery_id=str(uuid.uuid4()),
            event=event,
            action=None,
            repo_lower="octo-org/demo",
            body=body,
        )
        session.add(delivery)
        session.flush()
        return delivery.id


def processed(database: Database, pk: int) -> datetime | None:
    with database.read() as session:
        delivery = session.get(Delivery, pk)
        assert delivery is not None
        return delivery.processed_at


def test_a_push_to_the_default_branch_deploys_to_production(
    database: Database, cipher: Cipher, project_id: int, push_body: bytes
) -> None:
    pk = store(database, push_body)

    applied = process_delivery(database, cipher, pk)

    assert applied is not None and len(applied.deployments) == 1
    with database.read() as session:
        deployment = session.execute(select(Deployment)).scalar_one()
        environment = session.get(Environment, deployment.environment_id)
        delivery = session.get(Delivery, pk)
        job = session.execute(select(Job)).scalar_one()
    assert deployment.id == applied.deployments[0]
    assert environment is not None
    assert (environment.name, environment.branch, environment.project_id) == (
        "production",
        None,
        project_id,
    )
    assert (deployment.sha, deployment.ref, deployment.source, deployment.status) == (
        AFTER,
        "refs/heads/main",
        "push",
        "queued",
    )
    assert delivery is not None and deployment.delivery_id == delivery.delivery_id
    assert (job.kind, job.key, job.deployment_id) == (
        "deploy",
        env_key(environment.id),
        deployment.id,
    )
    assert delivery.processed_at is not None
    assert delivery.outcome == applied.outcome
    assert "production" in applied.outcome and AFTER[:7] in applied.outcome


def test_processing_a_delivery_twice_does_nothing_the_second_time(
    database: Database, cipher: Cipher, project_id: int, writer: Writer, push_body: bytes
) -> None:
    assert writer.record([incoming(push_body)]) == [True]
    with database.read() as session:
        route_job = session.execute(select(Job).where(Job.kind == "route")).scalar_one()
    pk = route_job.payload["delivery"]

    first = process_delivery(database, cipher, pk)
    processed_at = processed(database, pk)
    second = process_delivery(database, cipher, pk)

    assert first is not None and len(first.deployments) == 1
    assert second is None
    assert process_delivery(database, cipher, pk + 1000) is None, "unknown delivery"
    assert count(database, Deployment) == 1
    with database.read() as session:
        assert session.execute(select(func.count()).where(Job.kind == "deploy")).scalar_one() == 1
    assert processed_at is not None and processed(database, pk) == processed_at


def _without_ref(body: bytes) -> bytes:
    payload = json.loads(body)
    del payload["ref"]
    return json.dumps(payload).encode()


def test_invalid_payloads_are_marked_processed_as_rejected(
    database: Database, cipher: Cipher, project_id: int, push_body: bytes
) -> None:
    bodies = {
        "not json": b"this is not json",
        "not utf-8": b'{"ref": "\xff"}',
        "not an object": b"[]",
        "push without ref": _without_ref(push_body),
    }
    for name, body in bodies.items():
        pk = store(database, body)

        applied = process_delivery(database, cipher, pk)

        assert applied is not None, name
        assert applied.outcome.startswith("rejected: "), (name, applied.outcome)
        assert applied.deployments == []
        with database.read() as session:
            delivery = session.get(Delivery, pk)
            assert delivery is not None
            assert delivery.processed_at is not None, name
            assert delivery.outcome == applied.outcome
        assert process_delivery(database, cipher, pk) is None, f"{name}: rejected once, not retried"
    assert count(database, Deployment) == 0
    assert count(database, Job) == 0
    assert count(database, Event) == 0
