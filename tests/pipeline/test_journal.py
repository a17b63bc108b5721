"""The journal's contract (crash-resume, exactly once) with batched bookkeeping: a step
costs one write transaction, and a new journal — a restarted controller — resumes after
every step whose end was written, never running it twice."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import Writes
from sqlalchemy import select

from controller.errors import BuildFailed, TemporaryError
from controller.pipeline.journal import Journal
from controller.queue import Backoff
from controller.store.db import Database
from controller.store.tables import Deployment, DeploymentLog, DeploymentStep


def steps(database: Database, deployment_id: str) -> dict[str, DeploymentStep]:
    with database.read() as session:
        rows = session.execute(
            select(DeploymentStep).where(DeploymentStep.deployment_id == deployment_id)
        ).scalars()
        return {row.name: row for row in rows}


def messages(database: Database, deployment_id: str) -> list[str]:
    with database.read() as session:
        return list(
            session.execute(
                select(DeploymentLog.message)
                .where(DeploymentLog.deployment_id == deployment_id)
                .order_by(DeploymentLog.id)
            ).scalars()
        )


def wait_until(check: Any, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def test_a_step_and_its_log_lines_cost_one_transaction(
    database: Database, deployment_id: str, writes: Writes
) -> None:
    journal = Journal(database, deployment_id)
    journal.step("checkout", lambda _a: journal.log("checked out") or {"digest": "d"})
    journal.step("install", lambda _a: journal.log("cached") or {"venv": "v"})
    assert writes.count == 2
    assert [r.status for r in steps(database, deployment_id).values()] == ["done", "done"]


def test_a_step_with_logs_and_a_staged_write_costs_one_transaction(
    database: Database, deployment_id: str, writes: Writes
) -> None:
    journal = Journal(database, deployment_id)

    def work(attempt: int) -> dict[str, Any]:
        journal.log("working")
        journal.stage(lambda session: setattr(session.get(Deployment, deployment_id), "status", "installing"))  # fmt: skip
        return {"attempt": attempt}

    assert journal.step("fetch", work) == {"attempt": 1}
    assert writes.count == 1
    row = steps(database, deployment_id)["fetch"]
    assert (row.status, row.attempts, row.result) == ("done", 1, {"attempt": 1})
    assert row.started_at <= row.finished_at and row.duration_ms is not None
    logged = messages(database, deployment_id)
    assert logged[0] == "working" and logged[1].startswith("Step fetch done in")
    with database.read() as session:
        dep = session.get(Deployment, deployment_id)
        assert dep is not None and dep.status == "installing"


def test_a_restarted_controller_resumes_after_done_steps_only(
    database: Database, deployment_id: str
) -> None:
    runs: list[str] = []
    first = Journal(database, deployment_id)
    first.step("fetch", lambda _a: runs.append("fetch") or {"sha": "a"})

    class Killed(BaseException):
        """The controller dies inside a step (SIGKILL: nothing after it runs)."""

    def dies(_attempt: int) -> dict[str, Any]:
        first.begin_durably()
        runs.append("build")
        raise Killed

    with pytest.raises(Killed):
        first.step("build", dies)
    assert steps(database, deployment_id)["build"].status == "running"

    second = Journal(database, deployment_id)
    assert second.step("fetch", lambda _a: runs.append("fetch again") or {}) == {"sha": "a"}
    assert second.step("build", lambda attempt: runs.append("build") or {"attempt": attempt}) == {"attempt": 2}  # fmt: skip
    assert runs == ["fetch", "build", "build"]
    assert steps(database, deployment_id)["build"].attempts == 2
    assert "Step fetch: already done, resuming after it" in messages(database, deployment_id)


def test_a_step_recorded_in_its_own_transaction_commits_with_its_effect(
    database: Database, deployment_id: str, writes: Writes
) -> None:
    journal = Journal(database, deployment_id)

    def number(_attempt: int) -> dict[str, Any]:
        with database.transaction() as session:
            dep = session.get(Deployment, deployment_id)
            assert dep is not None
            dep.artifact_digest = "sha256:abc"
            journal._last_flush = 0.0  # a flush is due: it must not nest a transaction
            journal.record(session, {"version": "1"}, lines=["Version 1"])
        return {"version": "1"}

    assert journal.step("version", number) == {"version": "1"}
    assert writes.count == 1
    assert steps(database, deployment_id)["version"].status == "done"
    assert messages(database, deployment_id)[0] == "Version 1"
    assert messages(database, deployment_id)[1].startswith("Step version done in")

    def rolled_back(_attempt: int) -> dict[str, Any]:
        with database.transaction() as session:
            journal.record(session, {"version": "2"})
            raise BuildFailed("the write failed")

    with pytest.raises(BuildFailed):
        journal.step("promote", rolled_back)
    row = steps(database, deployment_id)["promote"]
    assert (row.status, row.result, row.error) == ("failed", None, "the write failed")
    assert Journal(database, deployment_id).done("promote") is None


def test_a_long_step_shows_as_started_while_it_runs(database: Database, deployment_id: str) -> None:
    journal = Journal(database, deployment_id, start_after=0.2)
    release = threading.Event()

    def slow(_attempt: int) -> dict[str, Any]:
        wait_until(lambda: "install" in steps(database, deployment_id))
        release.set()
        return {}

    journal.step("install", slow)
    assert release.is_set()
    assert steps(database, deployment_id)["install"].status == "done"


def test_temporary_failures_count_attempts_and_give_up(
    database: Database, deployment_id: str
) -> None:
    journal = Journal(database, deployment_id)
    seen: list[int] = []

    def flaky(attempt: int) -> dict[str, Any]:
        seen.append(attempt)
        raise TemporaryError("the remote is down", delay=0)

    with pytest.raises(TemporaryError):
        journal.step("fetch", flaky, retry=Backoff(limit=3, min_timeout=0.01, max_timeout=0.01))
    assert seen == [1, 2, 3]
    row = steps(database, deployment_id)["fetch"]
    assert (row.status, row.attempts) == ("failed", 3)
