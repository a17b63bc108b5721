"""Leader election, mechanism by mechanism (controller.leadership).

* The Lease algorithm against a fake of our :class:`LeaseApi` boundary (no cluster can
  run here), with a fake clock: one holder at a time, takeover only after the holder went
  quiet for the lease duration, optimistic concurrency, the renew deadline, hand-over.
* The advisory lock against the real test PostgreSQL: one holder, and a lost connection
  is lost leadership (and frees the lock for the other candidate).
* :class:`Campaign` and :class:`Manager`: the deploy pool runs only while leading, and a
  lost election stops it.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from support.waiting import poll_until

from controller.errors import TemporaryError
from controller.leadership import Campaign, make_elector
from controller.leadership.advisory import AdvisoryLock
from controller.leadership.lease import LeaseClaim, LeaseConflict, LeaseRecord
from controller.manager import Manager, Pool
from controller.queue import Claimed, Queue
from controller.settings import load_settings, normalise_database_url
from controller.store.db import Database


class FakeLeaseApi:
    """One Lease with a resourceVersion, as the API server keeps it."""

    name = "slipway-leader"

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.version = 0
        self.failing = False
        self.writes: list[LeaseRecord] = []

    def _check(self) -> None:
        if self.failing:
            raise TemporaryError("the API server is unreachable")

    def read(self) -> LeaseRecord | None:
        self._check()
        return self.record

    def create(self, record: LeaseRecord) -> LeaseRecord:
        self._check()
        if self.record is not None:
            raise LeaseConflict("exists")
        return self._store(record)

    def replace(self, record: LeaseRecord) -> LeaseRecord:
        self._check()
        if self.record is None or record.resource_version != self.record.resource_version:
            raise LeaseConflict("changed")
        return self._store(record)

    def _store(self, record: LeaseRecord) -> LeaseRecord:
        self.version += 1
        self.record = replace(record, resource_version=str(self.version))
        self.writes.append(self.record)
        return self.record


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def claims(api: FakeLeaseApi, clock: Clock, *names: str) -> list[LeaseClaim]:
    return [
        LeaseClaim(api, identity=name, lease_seconds=15, renew_deadline=10, clock=clock)
        for name in names
    ]


def test_lease_one_holder_and_takeover_only_after_the_holder_went_quiet() -> None:
    api, clock = FakeLeaseApi(), Clock()
    a, b = claims(api, clock, "pod-a", "pod-b")
    assert a.acquire() is True
    assert api.record is not None and api.record.holder == "pod-a"
    assert b.acquire() is False
    for _ in range(10):  # a renews every 2 s: b never gets it
        clock.t += 2
        assert a.keep() is True
        assert b.acquire() is False
    # a is SIGKILLed: no more renewals. b waits the lease duration from when it last
    # saw the record change, on its own clock.
    clock.t += 14
    assert b.acquire() is False
    clock.t += 2
    assert b.acquire() is True
    assert api.record.holder == "pod-b"
    assert api.record.transitions == 1
    # a comes back (a paused process): it sees another holder and steps down
    assert a.keep() is False


def test_lease_clock_skew_cannot_elect_two_leaders() -> None:
    """renewTime written by a holder whose clock is far behind is never compared with
    ours: only the record changing counts."""
    api, clock = FakeLeaseApi(), Clock()
    (a,) = claims(api, clock, "pod-a")
    past = datetime(2001, 1, 1, tzinfo=UTC)
    a._now = lambda: past
    assert a.acquire()
    (b,) = claims(api, clock, "pod-b")
    assert b.acquire() is False  # a renewTime from 2001 does not look expired to b
    clock.t += 5
    assert a.keep()
    clock.t += 12  # 17 s since b first looked, but a renewed 12 s ago
    assert b.acquire() is False


def test_lease_race_for_an_expired_lease_has_one_winner() -> None:
    api, clock = FakeLeaseApi(), Clock()
    a, b, c = claims(api, clock, "pod-a", "pod-b", "pod-c")
    assert a.acquire()
    assert not b.acquire() and not c.acquire()
    clock.t += 20
    # b and c both read the expired record; c writes first, b's write carries a stale
    # resourceVersion and gets 409
    stale = api.read()
    assert c.acquire() is True
    real_read = api.read
    api.read = lambda: stale  # type: ignore[method-assign]
    assert b.acquire() is False
    api.read = real_read  # type: ignore[method-assign]
    assert api.record is not None and api.record.holder == "pod-c"


def test_lease_renew_deadline_then_lost() -> None:
    api, clock = FakeLeaseApi(), Clock()
    (a,) = claims(api, clock, "pod-a")
    assert a.acquire()
    api.failing = True
    clock.t += 4
    assert a.keep() is True  # not renewed for 4 s: may still lead
    clock.t += 5
    assert a.keep() is True
    clock.t += 2  # 11 s > renew deadline (10 s) < lease duration (15 s)
    assert a.keep() is False


def test_lease_release_hands_over_at_once() -> None:
    api, clock = FakeLeaseApi(), Clock()
    a, b = claims(api, clock, "pod-a", "pod-b")
    assert a.acquire()
    assert not b.acquire()
    a.release()
    assert api.record is not None and api.record.holder == ""
    assert b.acquire() is True


def test_renew_deadline_must_be_shorter_than_the_lease() -> None:
    with pytest.raises(ValueError):
        LeaseClaim(FakeLeaseApi(), identity="x", lease_seconds=10, renew_deadline=10)


class ScriptedClaim:
    description = "a scripted claim"

    def __init__(self) -> None:
        self.available = threading.Event()
        self.held = True
        self.released = threading.Event()

    def acquire(self) -> bool:
        return self.available.is_set()

    def keep(self) -> bool:
        return self.held

    def release(self) -> None:
        self.released.set()


def test_manager_builds_only_while_leading_and_stops_when_it_loses(
    sqlite_database: Database,
) -> None:
    queue = Queue(sqlite_database, limits={"deploy": 1})
    with sqlite_database.transaction() as session:
        Queue.add(session, kind="deploy", key="env:1")
    handled: list[int] = []
    building = threading.Event()
    cancelled = threading.Event()
    claim = ScriptedClaim()
    manager: Manager

    def handler(job: Claimed) -> None:
        handled.append(job.id)
        building.set()
        if manager.stopping.wait(60):
            cancelled.set()

    manager = Manager(
        queue,
        [Pool(("deploy",), handler)],
        poll_interval=0.05,
        elector=Campaign(claim, retry=0.05),
    )
    manager.start()
    try:
        assert not building.wait(0.5)  # a follower: the job waits
        assert handled == []
        claim.available.set()
        assert building.wait(30)
        claim.held = False  # e.g. the lock's connection is gone
        assert cancelled.wait(30)
        assert manager.lost_leadership.is_set()
        assert claim.released.wait(30)
    finally:
        manager.stop()
    assert handled == [handled[0]]


def test_manager_without_an_elector_leads(sqlite_database: Database) -> None:
    queue = Queue(sqlite_database)
    with sqlite_database.transaction() as session:
        Queue.add(session, kind="deploy", key="env:1")
    done = threading.Event()
    manager = Manager(queue, [Pool(("deploy",), lambda job: done.set())], poll_interval=0.05)
    manager.start()
    try:
        assert done.wait(30)
    finally:
        manager.stop()


def test_elector_choice(tmp_path: Any) -> None:
    sqlite = load_settings(data_dir=tmp_path)
    assert make_elector(sqlite) is None
    pg = load_settings(data_dir=tmp_path, database_url="postgresql://u@127.0.0.1:1/x")
    campaign = make_elector(pg)
    assert campaign is not None and isinstance(campaign.claim, AdvisoryLock)
    campaign.claim.release()


@pytest.mark.postgres
def test_advisory_lock_one_holder_and_a_lost_connection_is_lost_leadership(
    postgres_url: str,
) -> None:
    url = normalise_database_url(postgres_url)
    a, b = AdvisoryLock(url), AdvisoryLock(url)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        assert a.acquire() is True
        assert a.acquire() is True  # re-entrant on its own session
        assert b.acquire() is False
        assert a.keep() is True
        with admin.connect() as conn:  # the leader's connection dies (network, restart)
            killed = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'slipway-leader' AND pid IN"
                    " (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND objid = :key)"
                ),
                {"key": a.key},
            ).all()
        assert killed == [(True,)]
        with pytest.raises(Exception):  # noqa: B017 - any driver error means: not held
            a.keep()
        assert poll_until(b.acquire, timeout=30, what="b takes the lock")
        assert b.keep() is True
    finally:
        a.release()
        b.release()
        admin.dispose()


@pytest.mark.postgres
def test_campaign_on_postgres_hands_over_when_the_leader_stops(postgres_url: str) -> None:
    url = normalise_database_url(postgres_url)
    first, second = Campaign(AdvisoryLock(url), retry=0.05), Campaign(AdvisoryLock(url), retry=0.05)
    lost: list[str] = []
    try:
        first.start(on_elected=lambda: None, on_lost=lost.append)
        assert first.leading.wait(30)
        second.start(on_elected=lambda: None, on_lost=lost.append)
        assert not second.leading.wait(0.5)
        first.stop()  # a graceful stop closes the session: the lock goes with it
        assert second.leading.wait(30)
        assert lost == []
    finally:
        first.stop()
        second.stop()
