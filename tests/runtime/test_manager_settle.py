"""Issue 7 item 10b: a database error while recording a job's outcome (ack, fail, retry)
is logged with the job's context and never kills the worker thread."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from controller.errors import PermanentError
from controller.manager import Manager, Pool
from controller.queue import Claimed, Queue
from controller.store.db import Database


def add_jobs(db: Database, n: int) -> None:
    with db.transaction() as session:
        for i in range(n):
            Queue.add(session, kind="work", key=f"k{i}")


@pytest.mark.parametrize("outcome", ["ack", "fail", "retry"])
def test_a_failed_outcome_write_is_logged_and_the_thread_goes_on(
    sqlite_database: Database,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    outcome: str,
) -> None:
    queue = Queue(sqlite_database)
    broken = threading.Event()
    original = getattr(queue, outcome)

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if not broken.is_set():
            broken.set()
            raise OperationalError("UPDATE jobs", {}, Exception("database is locked"))
        return original(*args, **kwargs)

    monkeypatch.setattr(queue, outcome, flaky)
    handled: list[int] = []
    second = threading.Event()

    def handler(job: Claimed) -> None:
        handled.append(job.id)
        if len(handled) == 2:
            second.set()
        if outcome == "fail":
            raise PermanentError("cannot work")
        if outcome == "retry":
            raise RuntimeError("boom")

    add_jobs(sqlite_database, 2)
    manager = Manager(queue, [Pool(("work",), handler, threads=1)], poll_interval=0.05)
    caplog.set_level(logging.ERROR, logger="controller.manager")
    manager.start()
    try:
        assert second.wait(30), f"the worker thread stopped after the failed {outcome}"
    finally:
        manager.stop()
    assert broken.is_set()
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        f"recording its outcome ({outcome}) failed (temporary error: OperationalError" in m
        for m in messages
    ), messages
