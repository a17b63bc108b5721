"""A push that supersedes a waiting deployment while its ``promote`` job runs: the older
version never becomes current (issue 11, the trade-off ``controller.gates`` used to make).

The ordering is driven by hand, on SQLite and PostgreSQL: the pipeline runs the passed
gate's ``promote`` job, and the runtime's health check of the waiting version — after
the job saw the deployment waiting, before the promoting transaction — is where the
newer request lands. On PostgreSQL a last test holds that request's transaction open
until the promoting transaction waits for its lock, then commits it: the promotion sees
what committed first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text
from support.waiting import poll_until, scaled

from controller.builders.base import Builder
from controller.domain.deployments import DeployRequest, request_deployment
from controller.domain.environments import find_environment
from controller.domain.projects import create_project, get_project
from controller.gates.spec import parse_gate
from controller.gates.waiting import PROMOTE_JOB
from controller.models import WAITING
from controller.pipeline.build import Attempt, Snapshot
from controller.pipeline.deploy import Pipeline
from controller.pipeline.gate import GatePhase
from controller.pipeline.journal import Journal
from controller.queue import Claimed
from controller.runtimes.base import VersionSpec
from controller.secretstore.crypto import Cipher
from controller.sources.git import GitSource
from controller.store.db import Database
from controller.store.tables import Deployment, DeploymentLog, Environment, Job, Project
from controller.versions import allocate_version

CIPHER = Cipher([Fernet.generate_key().decode()])


class Runtime:
    """Records what the pipeline asks of workers; ``on_ensure`` runs inside the check."""

    name = "fake"

    def __init__(self) -> None:
        self.on_ensure: Callable[[], None] = lambda: None
        self.activated: list[int] = []
        self.retired: list[int] = []

    def ensure(self, spec: VersionSpec) -> None:
        self.on_ensure()

    def activate(self, spec: VersionSpec) -> None:
        self.activated.append(spec.version_id)

    def retire(self, version_id: int) -> None:
        self.retired.append(version_id)


@pytest.fixture
def runtime() -> Runtime:
    return Runtime()


@pytest.fixture
def pipeline(database: Database, runtime: Runtime, tmp_path: Path) -> Pipeline:
    data = tmp_path / "data"
    data.mkdir()
    return Pipeline(
        db=database,
        data_dir=data,
        source=cast(GitSource, None),
        builder=cast(Builder, None),
        runtime=cast(Any, runtime),
        build_timeout=600,
        stopping=threading.Event(),
    )


def request(database: Database, sha: str) -> str:
    with database.transaction() as session:
        project = get_project(session, "demo")
        env = find_environment(session, project, "production", None)
        deployment = request_deployment(
            session,
            project=project,
            environment=env,
            request=DeployRequest(sha=sha, ref="refs/heads/main", source="push"),
        )
        return deployment.id


def waiting_with_version(database: Database, tmp_path: Path, sha: str) -> tuple[str, int]:
    """A deployment of ``sha`` that passed its health check and waits for ``manual``."""
    dep_id = request(database, sha)
    with database.read() as session:
        dep = session.get(Deployment, dep_id)
        assert dep is not None
        session.expunge(dep)
    version = allocate_version(
        database,
        deployment=dep,
        sha=sha,
        tasks=[],
        artifact_digest=None,
        source_path=str(tmp_path / sha[:4]),
        venv_path=str(tmp_path / "venv"),
        tasks_dir="tasks",
        release_tasks=[],
    )
    with database.transaction() as session:
        row = session.get(Deployment, dep_id)
        assert row is not None
        row.status, row.gate = WAITING, "manual"
    return dep_id, version.id


@pytest.fixture
def project(database: Database) -> None:
    with database.transaction() as session:
        create_project(session, CIPHER, ref="demo", repo="octo-org/demo")
    with database.transaction() as session:
        get_project(session, "demo").promotion_gates = {"production": "manual"}


def gate_passed(deployment_id: str) -> Claimed:
    return Claimed(
        id=1,
        kind=PROMOTE_JOB,
        key="env",
        payload={"outcome": "pass", "message": "by the test"},
        deployment_id=deployment_id,
        attempts=1,
        max_attempts=5,
    )


def state(database: Database, deployment_id: str) -> tuple[int | None, str, str | None, str]:
    """The environment's current version, the deployment's status and error, its log."""
    with database.read() as session:
        dep = session.get(Deployment, deployment_id)
        assert dep is not None
        env = session.get(Environment, dep.environment_id)
        assert env is not None
        lines = session.execute(
            select(DeploymentLog.message).where(DeploymentLog.deployment_id == deployment_id)
        ).scalars()
        return env.current_version_id, dep.status, dep.error, "\n".join(lines)


@pytest.mark.usefixtures("project")
def test_a_passed_gate_promotes_a_deployment_that_still_waits(
    database: Database, pipeline: Pipeline, runtime: Runtime, tmp_path: Path
) -> None:
    dep_id, version_id = waiting_with_version(database, tmp_path, "a" * 40)
    pipeline.handle(gate_passed(dep_id))
    current, status, _error, logs = state(database, dep_id)
    assert (current, status) == (version_id, "deployed")
    assert "Promoted" in logs and runtime.activated == [version_id]


@pytest.mark.usefixtures("project")
def test_a_push_while_the_promotion_runs_supersedes_it_and_nothing_is_promoted(
    database: Database, pipeline: Pipeline, runtime: Runtime, tmp_path: Path
) -> None:
    dep_id, version_id = waiting_with_version(database, tmp_path, "a" * 40)
    newer: list[str] = []
    runtime.on_ensure = lambda: newer.append(request(database, "b" * 40))

    pipeline.handle(gate_passed(dep_id))

    current, status, error, logs = state(database, dep_id)
    assert newer, "the push did not land during the promotion"
    assert current is None, "the superseded version became current"
    assert status == "superseded" and error is not None and newer[0] in error
    assert "Promoted" not in logs and "Not promoted" in logs
    assert runtime.activated == [] and runtime.retired == [version_id]


@pytest.mark.usefixtures("project")
def test_a_waiting_deployment_older_than_a_request_is_never_promoted(
    database: Database, pipeline: Pipeline, runtime: Runtime, tmp_path: Path
) -> None:
    """The newer request came while the older one still built, so it never saw it wait
    (only waiting deployments are superseded at request time): the promotion sees it."""
    dep_id, version_id = waiting_with_version(database, tmp_path, "a" * 40)
    with database.transaction() as session:
        newer = Deployment(
            id="dep_newer",
            project_id=get_project(session, "demo").id,
            environment_id=session.get(Deployment, dep_id).environment_id,  # type: ignore[union-attr]
            sha="c" * 40,
            source="push",
            status="building",
        )
        session.add(newer)

    pipeline.handle(gate_passed(dep_id))

    current, status, error, _logs = state(database, dep_id)
    assert current is None and status == "superseded"
    assert error is not None and "superseded by dep_newer" in error
    assert runtime.activated == [] and runtime.retired == [version_id]


@pytest.mark.usefixtures("project")
def test_a_deployment_overtaken_while_it_was_built_ends_superseded_instead_of_waiting(
    database: Database,
) -> None:
    older = request(database, "a" * 40)
    with database.transaction() as session:  # its job runs: the next request queues
        session.get(Deployment, older).status = "building"  # type: ignore[union-attr]
    newer = request(database, "b" * 40)
    with database.read() as session:
        dep = session.get(Deployment, older)
        assert dep is not None
        env = session.get(Environment, dep.environment_id)
        project = session.get(Project, dep.project_id)
        assert env is not None and project is not None
        snap = Snapshot(dep, project, env)
    run = SimpleNamespace(snap=snap, journal=Journal(database, older), version="20261201.1")

    waited = GatePhase(db=database).wait(cast(Attempt, run), parse_gate("manual"))

    _current, status, error, logs = state(database, older)
    assert status == "superseded" and error is not None and newer in error and newer in logs
    assert waited["superseded"] == newer
    with database.read() as session:
        timeouts = session.execute(select(Job.id).where(Job.deployment_id == older, Job.kind == PROMOTE_JOB)).all()  # fmt: skip
    assert timeouts == [], "a superseded deployment has no deadline to wait for"


@pytest.mark.postgres
@pytest.mark.usefixtures("project")
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_push_committing_while_the_promotion_waits_for_its_lock_wins(
    database: Database, pipeline: Pipeline, runtime: Runtime, tmp_path: Path
) -> None:
    dep_id, version_id = waiting_with_version(database, tmp_path, "a" * 40)
    superseding = threading.Event()
    failures: list[BaseException] = []

    def push() -> None:
        try:
            with database.transaction() as session:
                project = get_project(session, "demo")
                env = find_environment(session, project, "production", None)
                request_deployment(
                    session,
                    project=project,
                    environment=env,
                    request=DeployRequest(sha="b" * 40, ref="refs/heads/main", source="push"),
                )
                session.flush()
                superseding.set()
                poll_until(lambda: lock_waiters(database) > 0, timeout=scaled(60), what="the promotion waiting for the lock")  # fmt: skip
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)
            superseding.set()

    pusher = threading.Thread(target=push)

    def start_push() -> None:
        pusher.start()
        assert superseding.wait(scaled(60))

    runtime.on_ensure = start_push
    try:
        pipeline.handle(gate_passed(dep_id))
    finally:
        pusher.join(scaled(60))
    assert not failures, failures
    current, status, error, _logs = state(database, dep_id)
    assert current is None, "the superseded version became current"
    assert status == "superseded" and error is not None and "superseded by" in error
    assert runtime.activated == [] and runtime.retired == [version_id]


def lock_waiters(database: Database) -> int:
    with database.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )
