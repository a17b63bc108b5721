"""Retention on SQLite and PostgreSQL: finished jobs, old deployment logs and old run logs
go; what is still in use (active deployments, current versions, recent rows) stays; runs
whose process is gone stop being "running"."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from itertools import count

from sqlalchemy import func, select

from controller.domain.environments import find_environment
from controller.domain.projects import get_project
from controller.owners import make_owner, process_owner
from controller.store.db import Database
from controller.store.retention import (
    RetentionPolicy,
    prune_deployment_logs,
    prune_jobs,
    prune_run_logs,
    prune_storage,
)
from controller.store.runs import fail_abandoned_runs
from controller.store.tables import (
    Deployment,
    DeploymentLog,
    Environment,
    Job,
    Run,
    Version,
    utcnow,
)

WEEK = timedelta(days=7)
_ids = count(1)


def _deployment(
    db: Database, *, status: str, finished_days_ago: float | None, lines: int = 3
) -> str:
    now = utcnow()
    with db.transaction() as session:
        project = get_project(session, "demo")
        env = find_environment(session, project, "production", None)
        dep = Deployment(
            id=f"dep_{next(_ids)}",
            project_id=project.id,
            environment_id=env.id,
            sha=f"{next(_ids):040x}",
            source="push",
            status=status,
            finished_at=None
            if finished_days_ago is None
            else now - timedelta(days=finished_days_ago),
        )
        session.add(dep)
        session.flush()
        for n in range(lines):
            session.add(DeploymentLog(deployment_id=dep.id, message=f"line {n}"))
        return dep.id


def _version(db: Database, deployment_id: str, *, current: bool) -> int:
    with db.transaction() as session:
        dep = session.get(Deployment, deployment_id)
        assert dep is not None
        n = next(_ids)
        version = Version(
            project_id=dep.project_id,
            environment_id=dep.environment_id,
            deployment_id=dep.id,
            version=f"20260101.{n}",
            day="20260101",
            seq=n,
            source_path="/x",
            venv_path="/y",
        )
        session.add(version)
        session.flush()
        dep.version_id = version.id
        if current:
            env = session.get(Environment, dep.environment_id)
            assert env is not None
            env.current_version_id = version.id
        return version.id


def _log_counts(db: Database) -> dict[str, int]:
    with db.read() as session:
        rows = session.execute(
            select(DeploymentLog.deployment_id, func.count()).group_by(DeploymentLog.deployment_id)
        ).all()
    return {dep: int(n) for dep, n in rows}


def test_finished_jobs_older_than_the_retention_go(
    database: Database, make_project: Callable[..., int]
) -> None:
    make_project()
    active = _deployment(database, status="building", finished_days_ago=None)
    old = utcnow() - timedelta(days=8)
    with database.transaction() as session:
        for status in ("done", "failed", "superseded", "canceled"):
            session.add(Job(kind="deploy", key="env:1", status=status, updated_at=old))
        session.add(Job(kind="deploy", key="env:1", status="done", updated_at=utcnow()))
        session.add(Job(kind="deploy", key="env:1", status="queued", updated_at=old))
        session.add(Job(kind="deploy", key="env:2", status="running", updated_at=old))
        # An active deployment's failed job tells the resync it gave up: it stays.
        session.add(
            Job(kind="deploy", key="env:3", status="failed", updated_at=old, deployment_id=active)
        )

    assert prune_jobs(database, older_than=WEEK) == 4

    with database.read() as session:
        left = sorted(
            (j.status, j.deployment_id is not None) for j in session.execute(select(Job)).scalars()
        )
    assert left == [("done", False), ("failed", True), ("queued", False), ("running", False)]
    assert prune_jobs(database, older_than=WEEK) == 0


def test_old_deployment_logs_go_except_the_current_versions(
    database: Database, make_project: Callable[..., int]
) -> None:
    make_project()
    old_failed = _deployment(database, status="failed", finished_days_ago=40)
    old_previous = _deployment(database, status="deployed", finished_days_ago=35)
    _version(database, old_previous, current=False)
    old_current = _deployment(database, status="deployed", finished_days_ago=31)
    _version(database, old_current, current=True)
    recent = _deployment(database, status="failed", finished_days_ago=2)
    running = _deployment(database, status="building", finished_days_ago=None)

    removed = prune_deployment_logs(database, older_than=timedelta(days=30))

    assert removed == 6
    assert _log_counts(database) == {old_current: 3, recent: 3, running: 3}
    with database.read() as session:  # the deployments themselves stay
        assert session.get(Deployment, old_failed) is not None
        assert session.get(Deployment, old_previous) is not None


def test_deployment_logs_go_in_short_batches_until_done(
    database: Database, make_project: Callable[..., int]
) -> None:
    make_project()
    for _ in range(5):
        _deployment(database, status="failed", finished_days_ago=40, lines=4)

    first = prune_deployment_logs(database, older_than=WEEK, batch=2, max_batches=3)
    assert first == 6  # three transactions of at most two lines
    assert prune_deployment_logs(database, older_than=WEEK, batch=2, max_batches=100) == 14
    assert _log_counts(database) == {}


def test_old_run_logs_are_emptied_and_the_runs_stay(
    database: Database, make_project: Callable[..., int]
) -> None:
    make_project()
    dep = _deployment(database, status="deployed", finished_days_ago=1)
    version_id = _version(database, dep, current=True)
    now = utcnow()
    with database.transaction() as session:
        env_id = session.execute(
            select(Environment.id).where(Environment.name == "production")
        ).scalar_one()
        for run_id, finished in (
            ("run_old", now - timedelta(days=8)),
            ("run_new", now - timedelta(days=1)),
            ("run_running", None),
        ):
            session.add(
                Run(
                    id=run_id,
                    environment_id=env_id,
                    version_id=version_id,
                    task_id="hello",
                    status="completed" if finished else "running",
                    output={"ok": True},
                    logs="hello from production\n",
                    finished_at=finished,
                )
            )

    assert prune_run_logs(database, older_than=WEEK) == 1
    assert prune_run_logs(database, older_than=WEEK) == 0  # the index skips emptied runs

    with database.read() as session:
        runs = {r.id: r for r in session.execute(select(Run)).scalars()}
    assert runs["run_old"].logs is None and runs["run_old"].output == {"ok": True}
    assert runs["run_new"].logs and runs["run_running"].logs


def test_prune_storage_applies_every_rule(
    database: Database, make_project: Callable[..., int]
) -> None:
    make_project()
    _deployment(database, status="failed", finished_days_ago=40, lines=2)
    with database.transaction() as session:
        session.add(
            Job(kind="deploy", key="env:1", status="done", updated_at=utcnow() - timedelta(days=9))
        )
    policy = RetentionPolicy(jobs=WEEK, deployment_logs=timedelta(days=30), run_logs=WEEK)

    pruned = prune_storage(database, policy)

    assert (pruned.jobs, pruned.deployment_logs, pruned.run_logs) == (1, 2, 0)
    assert not prune_storage(database, policy)


def _dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)


def test_runs_whose_process_is_gone_or_whose_deadline_passed_end_failed(
    database: Database, make_project: Callable[..., int]
) -> None:
    make_project()
    dep = _deployment(database, status="deployed", finished_days_ago=1)
    version_id = _version(database, dep, current=True)
    now = utcnow()
    here = make_owner().split(":")[0]
    soon, past = now + timedelta(hours=1), now - timedelta(seconds=1)
    rows = {
        # (owner, expires_at, created_at): what should happen to it
        "run_mine": (process_owner(), soon, now),  # this process still waits for it
        "run_parent": (f"{here}:{os.getppid()}:0000abcd", soon, now),  # alive
        "run_dead_pid": (f"{here}:{_dead_pid()}:0000abcd", soon, now),  # gone: at once
        "run_other_host": ("elsewhere:1:0000abcd", soon, now),  # cannot tell yet
        "run_other_late": ("elsewhere:1:0000abcd", past, now),  # its deadline passed
        "run_legacy_old": (None, None, now - timedelta(days=2)),  # before deadlines
        "run_legacy_new": (None, None, now - timedelta(hours=1)),
    }
    with database.transaction() as session:
        env_id = session.execute(
            select(Environment.id).where(Environment.name == "production")
        ).scalar_one()
        for run_id, (owner, expires_at, created_at) in rows.items():
            session.add(
                Run(
                    id=run_id,
                    environment_id=env_id,
                    version_id=version_id,
                    task_id="hello",
                    status="running",
                    owner=owner,
                    expires_at=expires_at,
                    created_at=created_at,
                )
            )
        session.add(
            Run(
                id="run_done",
                environment_id=env_id,
                version_id=version_id,
                task_id="hello",
                status="completed",
                owner=None,
                expires_at=None,
                created_at=now - timedelta(days=3),
                finished_at=now - timedelta(days=3),
            )
        )

    assert fail_abandoned_runs(database) == 3
    assert fail_abandoned_runs(database) == 0

    with database.read() as session:
        runs = {r.id: r for r in session.execute(select(Run)).scalars()}
    failed = {run_id for run_id, run in runs.items() if run.status == "failed"}
    assert failed == {"run_dead_pid", "run_other_late", "run_legacy_old"}
    assert runs["run_done"].status == "completed"
    for run_id in failed:
        run = runs[run_id]
        assert run.error is not None and run.error["type"] == "RunAbandoned"
        assert "trigger it again" in run.error["message"]
        assert run.finished_at is not None and run.owner is None
    assert "stopped before the run finished" in runs["run_dead_pid"].error["message"]
    assert "time limit" in runs["run_other_late"].error["message"]
