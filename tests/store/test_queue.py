"""The durable queue on both engines: order, one key one worker, kind limits, leases,
finishing, newest-wins and a multi-threaded stress run.

Time passing (a lease running out, a retry's delay) is moved into the past in the
database rather than slept through: a 0.3 s sleep against a 0.2 s lease proves nothing on
a machine where the assertion before it can itself take longer than the lease.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
from sqlalchemy import update
from support.waiting import scaled

from controller.queue import Backoff, Queue
from controller.store.db import Database
from controller.store.tables import Job, utcnow


def add(
    database: Database,
    *specs: tuple[str, str],
    deployment_ids: list[str | None] | None = None,
) -> list[int]:
    """Enqueue ``(kind, key)`` jobs in one transaction, oldest first; return their ids."""
    ids: list[int] = []
    with database.transaction() as session:
        for index, (kind, key) in enumerate(specs):
            dep = deployment_ids[index] if deployment_ids else None
            job = Queue.add(session, kind=kind, key=key, payload={"n": index}, deployment_id=dep)
            session.flush()
            ids.append(job.id)
    return ids


def job(database: Database, job_id: int) -> Job:
    with database.read() as session:
        row = session.get(Job, job_id)
        assert row is not None
        return row


def set_running(database: Database, job_id: int, owner: str) -> None:
    """Make ``job_id`` look claimed by ``owner`` with a lease far in the future."""
    with database.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status="running",
                lease_owner=owner,
                lease_expires_at=utcnow() + timedelta(hours=1),
                attempts=1,
            )
        )


def move_back(database: Database, job_id: int, *, field: str, seconds: float) -> None:
    """Let ``seconds`` pass for one of ``job_id``'s times (``lease_expires_at``, ``run_after``)."""
    row = job(database, job_id)
    moved = getattr(row, field) - timedelta(seconds=seconds)
    with database.transaction() as session:
        session.execute(update(Job).where(Job.id == job_id).values({field: moved}))


# -- claiming ----------------------------------------------------------------------------


def test_claim_takes_the_oldest_job_of_the_requested_kinds_first(database: Database) -> None:
    ids = add(database, ("route", "repo:a"), ("route", "repo:b"), ("route", "repo:c"))
    (deploy_id,) = add(database, ("deploy", "env:1"))
    queue = Queue(database)

    claimed = [queue.claim(["route"]) for _ in ids]

    assert [c.id for c in claimed if c] == ids
    first = claimed[0]
    assert first is not None
    assert (first.kind, first.key, first.payload, first.attempts) == (
        "route",
        "repo:a",
        {"n": 0},
        1,
    )
    assert queue.claim(["route"]) is None
    row = job(database, ids[0])
    assert row.status == "running"
    assert row.lease_owner == queue.owner
    assert row.lease_expires_at is not None and row.lease_expires_at > utcnow()
    assert job(database, deploy_id).status == "queued", "not a requested kind"
    other = queue.claim(["route", "deploy"])
    assert other is not None and other.id == deploy_id


def test_a_running_job_blocks_its_key_but_not_other_keys(database: Database) -> None:
    a1, a2, b1 = add(database, ("deploy", "env:a"), ("deploy", "env:a"), ("deploy", "env:b"))
    worker_1, worker_2 = Queue(database), Queue(database)

    first = worker_1.claim(["deploy"])
    second = worker_2.claim(["deploy"])
    assert first is not None and first.id == a1
    assert second is not None and second.id == b1, "env:b must not wait for env:a"
    assert worker_2.claim(["deploy"]) is None, "env:a already has a running job"
    assert job(database, a2).status == "queued"

    assert worker_1.ack(a1)
    third = worker_2.claim(["deploy"])
    assert third is not None and third.id == a2


def test_kind_limit_caps_running_jobs_across_owners(database: Database) -> None:
    d1, d2, d3, r1 = add(
        database, ("deploy", "env:1"), ("deploy", "env:2"), ("deploy", "env:3"), ("route", "repo:x")
    )
    one = Queue(database, limits={"deploy": 2})
    other = Queue(database, limits={"deploy": 2})

    assert (c := one.claim(["deploy"])) is not None and c.id == d1
    assert (c := other.claim(["deploy"])) is not None and c.id == d2
    assert one.claim(["deploy"]) is None, "two deploy jobs already run"
    assert other.claim(["deploy"]) is None
    assert job(database, d3).status == "queued"

    routed = one.claim(["deploy", "route"])
    assert routed is not None and routed.id == r1, "other kinds are not held back"

    assert other.ack(d2)
    assert (c := one.claim(["deploy"])) is not None and c.id == d3


# -- leases ------------------------------------------------------------------------------


def test_an_expired_lease_queues_the_job_again(database: Database) -> None:
    (job_id,) = add(database, ("deploy", "env:1"))
    crashed = Queue(database, lease_seconds=60)
    survivor = Queue(database)

    assert (c := crashed.claim(["deploy"])) is not None and c.id == job_id
    assert survivor.claim(["deploy"]) is None, "the lease is still valid"

    move_back(database, job_id, field="lease_expires_at", seconds=61)  # crashed never renewed
    taken = survivor.claim(["deploy"])

    assert taken is not None and taken.id == job_id
    assert taken.attempts == 2
    assert job(database, job_id).lease_owner == survivor.owner
    assert not crashed.ack(job_id), "the old owner lost the job with its lease"
    assert job(database, job_id).status == "running"
    assert survivor.ack(job_id)
    assert job(database, job_id).status == "done"


def test_renew_extends_only_the_owners_leases(database: Database) -> None:
    mine, theirs = add(database, ("deploy", "env:1"), ("deploy", "env:2"))
    owner, other = Queue(database), Queue(database)
    assert (c := owner.claim(["deploy"])) is not None and c.id == mine
    assert (c := other.claim(["deploy"])) is not None and c.id == theirs
    past = utcnow() - timedelta(seconds=5)
    with database.transaction() as session:
        session.execute(update(Job).values(lease_expires_at=past))

    assert owner.renew() == 1

    assert job(database, mine).lease_expires_at > utcnow()
    assert job(database, theirs).lease_expires_at == past
    thief = Queue(database)
    stolen = thief.claim(["deploy"])
    assert stolen is not None and stolen.id == theirs, "only the renewed lease is safe"
    assert thief.claim(["deploy"]) is None


def test_release_dead_leases_frees_jobs_of_dead_processes_on_this_host(
    database: Database,
) -> None:
    host = socket.gethostname()
    dead, alive, elsewhere, own = add(
        database, ("deploy", "env:1"), ("deploy", "env:2"), ("deploy", "env:3"), ("deploy", "env:4")
    )
    queue = Queue(database)
    set_running(database, dead, f"{host}:999999:abcd")
    set_running(database, alive, f"{host}:{os.getppid()}:beef")  # our parent is alive
    set_running(database, elsewhere, "some-other-host:999999:abcd")  # not ours to judge
    set_running(database, own, queue.owner)

    assert queue.release_dead_leases() == 1

    freed = job(database, dead)
    assert (freed.status, freed.lease_owner, freed.lease_expires_at) == ("queued", None, None)
    assert job(database, alive).status == "running"
    assert job(database, elsewhere).status == "running"
    assert job(database, own).status == "running"
    claimed = queue.claim(["deploy"])
    assert claimed is not None and claimed.id == dead
    assert queue.release_dead_leases() == 0


# -- finishing ---------------------------------------------------------------------------


def test_ack_marks_done_and_only_once(database: Database) -> None:
    (job_id,) = add(database, ("route", "repo:a"))
    queue = Queue(database)
    assert queue.claim(["route"]) is not None

    assert queue.ack(job_id)

    row = job(database, job_id)
    assert (row.status, row.lease_owner, row.lease_expires_at) == ("done", None, None)
    assert not queue.ack(job_id)
    assert queue.claim(["route"]) is None


def test_fail_records_the_error_and_never_runs_again(database: Database) -> None:
    (job_id,) = add(database, ("deploy", "env:1"))
    queue = Queue(database)
    assert queue.claim(["deploy"]) is not None

    assert queue.fail(job_id, "install command exited 1" + "x" * 5000)

    row = job(database, job_id)
    assert row.status == "failed"
    assert row.last_error is not None and row.last_error.startswith("install command exited 1")
    assert len(row.last_error) == 4000
    assert queue.claim(["deploy"]) is None


def test_retry_waits_for_run_after(database: Database) -> None:
    (job_id,) = add(database, ("deploy", "env:1"))
    queue = Queue(database)
    assert queue.claim(["deploy"]) is not None

    assert queue.retry(job_id, delay=60, error="git fetch timed out")

    row = job(database, job_id)
    assert (row.status, row.last_error, row.lease_owner) == ("queued", "git fetch timed out", None)
    assert row.run_after > utcnow()
    assert queue.claim(["deploy"]) is None, "not before run_after"
    move_back(database, job_id, field="run_after", seconds=61)
    again = queue.claim(["deploy"])
    assert again is not None and again.id == job_id
    assert again.attempts == 2

    assert queue.retry(job_id, delay=0, error="controller stopped")
    third = queue.claim(["deploy"])
    assert third is not None and third.id == job_id, "no delay: claimable at once"
    assert third.attempts == 3


def test_only_the_owner_can_finish_a_job(database: Database) -> None:
    (job_id,) = add(database, ("deploy", "env:1"))
    owner, stranger = Queue(database), Queue(database)
    assert owner.claim(["deploy"]) is not None

    assert not stranger.ack(job_id)
    assert not stranger.retry(job_id, delay=0, error="not mine")
    assert not stranger.fail(job_id, "not mine")

    row = job(database, job_id)
    assert (row.status, row.lease_owner, row.last_error) == ("running", owner.owner, None)
    assert owner.ack(job_id)


# -- newest wins and cancel --------------------------------------------------------------


def test_supersede_marks_only_queued_jobs_of_that_key_and_kind(database: Database) -> None:
    running, older, newer, other_key, other_kind = add(
        database,
        ("deploy", "env:1"),
        ("deploy", "env:1"),
        ("deploy", "env:1"),
        ("deploy", "env:2"),
        ("route", "env:1"),
        deployment_ids=["dep_run", "dep_old", "dep_new", "dep_other", None],
    )
    queue = Queue(database)
    claimed = queue.claim(["deploy"])
    assert claimed is not None and claimed.id == running

    with database.transaction() as session:
        superseded = Queue.supersede(session, key="env:1", kind="deploy")

    assert sorted(superseded) == ["dep_new", "dep_old"]
    assert job(database, running).status == "running"
    assert job(database, older).status == "superseded"
    assert job(database, newer).status == "superseded"
    assert job(database, other_key).status == "queued"
    assert job(database, other_kind).status == "queued"


def test_cancel_marks_only_queued_jobs_of_that_key(database: Database) -> None:
    running, queued, other = add(
        database,
        ("deploy", "env:1"),
        ("deploy", "env:1"),
        ("deploy", "env:2"),
        deployment_ids=["dep_a", "dep_b", "dep_c"],
    )
    queue = Queue(database)
    assert queue.claim(["deploy"]) is not None

    with database.transaction() as session:
        assert Queue.cancel(session, key="env:1") == ["dep_b"]

    assert job(database, running).status == "running"
    assert job(database, queued).status == "canceled"
    assert job(database, other).status == "queued"


# -- concurrency -------------------------------------------------------------------------


def test_concurrent_workers_never_share_a_key_nor_lose_a_job(database: Database) -> None:
    keys = [f"env:{n}" for n in range(6)]
    ids = add(database, *[("deploy", keys[n % len(keys)]) for n in range(60)])
    key_of = {job_id: keys[n % len(keys)] for n, job_id in enumerate(ids)}

    lock = threading.Lock()
    running: set[str] = set()
    claims: Counter[int] = Counter()
    order: dict[str, list[int]] = defaultdict(list)
    violations: list[str] = []
    errors: list[BaseException] = []
    done = threading.Event()
    deadline = time.monotonic() + scaled(60)

    def work() -> None:
        queue = Queue(database)
        try:
            while not done.is_set() and time.monotonic() < deadline:
                claimed = queue.claim(["deploy"])
                if claimed is None:
                    time.sleep(0.002)
                    continue
                with lock:
                    if claimed.key in running:
                        violations.append(f"{claimed.key} claimed twice at once")
                    running.add(claimed.key)
                    claims[claimed.id] += 1
                    order[claimed.key].append(claimed.id)
                time.sleep(0.001)
                with lock:
                    running.discard(claimed.key)  # before the ack commits: no false alarms
                if not queue.ack(claimed.id):
                    with lock:
                        violations.append(f"ack of job {claimed.id} lost")
                with lock:
                    if sum(claims.values()) >= len(ids):
                        done.set()
        except BaseException as exc:
            with lock:
                errors.append(exc)
            done.set()

    threads = [threading.Thread(target=work, name=f"worker-{n}") for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=scaled(90))
    assert not any(thread.is_alive() for thread in threads)

    assert errors == []
    assert violations == []
    assert set(claims) == set(ids), "every job was claimed"
    assert set(claims.values()) == {1}, "no job was claimed twice"
    for key in keys:
        assert order[key] == sorted(i for i in ids if key_of[i] == key), "FIFO within a key"
    assert Queue(database).counts() == {"done": len(ids)}


# -- backoff -----------------------------------------------------------------------------


def test_backoff_grows_by_factor_up_to_the_cap() -> None:
    backoff = Backoff(min_timeout=1.0, max_timeout=10.0, factor=2.0, randomize=False)
    assert [backoff.delay(attempt) for attempt in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]
    assert Backoff(min_timeout=0.5, factor=3.0, randomize=False).delay(3) == pytest.approx(4.5)


def test_backoff_jitter_stays_between_base_and_twice_base_under_the_cap() -> None:
    backoff = Backoff(min_timeout=1.0, max_timeout=10.0, factor=2.0, randomize=True)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0)]:
        samples = [backoff.delay(attempt) for _ in range(200)]
        assert all(base <= s <= min(2 * base, 10.0) for s in samples), (attempt, samples)
    spread = {backoff.delay(1) for _ in range(50)}
    assert len(spread) > 1, "randomize adds jitter"
