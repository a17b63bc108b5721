"""controller.versions.promote with the Kubernetes runtime on a fake cluster: the database's
current version and the Service's selector move together, or neither moves."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from k8s_fakes import FakeClock, FakeCluster, FakeInputs
from sqlalchemy import select

from controller.domain.deployments import DeployRequest, request_deployment
from controller.domain.projects import create_project
from controller.errors import PermanentError
from controller.runtimes.kubernetes.runtime import KubernetesRuntime
from controller.secretstore.crypto import Cipher
from controller.settings import KubernetesSettings
from controller.store.db import Database
from controller.store.tables import Environment, Version
from controller.versions import previous_version, promote

NS = "slipway-acme-production"


def add_versions(db: Database, count: int) -> tuple[int, list[int]]:
    cipher = Cipher([Fernet.generate_key().decode()])
    ids = []
    with db.transaction() as session:
        project = create_project(session, cipher, ref="acme", repo="octo-org/acme")
        env = session.execute(
            select(Environment).where(
                Environment.project_id == project.id, Environment.name == "production"
            )
        ).scalar_one()
        for n in range(1, count + 1):
            dep = request_deployment(
                session,
                project=project,
                environment=env,
                request=DeployRequest(sha=f"{n:040d}", ref="refs/heads/main", source="git"),
            )
            dep.status = "deployed"
            version = Version(
                project_id=project.id,
                environment_id=env.id,
                deployment_id=dep.id,
                version=f"20261201.{n}",
                day="20261201",
                seq=n,
                sha=f"{n:040d}",
                tasks=[{"id": "hello"}],
                source_path="/nowhere/app",
                venv_path="/nowhere/venv",
            )
            session.add(version)
            session.flush()
            ids.append(version.id)
        return env.id, ids


def current(db: Database, env_id: int) -> int | None:
    with db.read() as session:
        env = session.get(Environment, env_id)
        assert env is not None
        return env.current_version_id


def test_a_failed_rollout_promotes_nothing_and_rollback_restores_the_selector(
    sqlite_database: Database,
) -> None:
    env_id, (one, two) = add_versions(sqlite_database, 2)
    clock, cluster = FakeClock(), FakeCluster()
    runtime = KubernetesRuntime(
        KubernetesSettings(rollout_timeout=60),
        cluster=cluster,
        inputs=FakeInputs(),
        clock=clock,
        sleep=clock.sleep,
    )
    assert promote(sqlite_database, runtime, version_id=one) == ("20261201.1", None)
    assert cluster.service_selector(NS)["slipway.dev/version"] == "20261201.1"

    cluster.behaviour["20261201.2"] = "pull"
    with pytest.raises(PermanentError, match="ErrImagePull"):
        promote(sqlite_database, runtime, version_id=two)
    assert current(sqlite_database, env_id) == one
    assert cluster.service_selector(NS)["slipway.dev/version"] == "20261201.1"

    cluster.behaviour["20261201.2"] = "ok"
    before = len(cluster.writes())
    assert promote(sqlite_database, runtime, version_id=two) == ("20261201.2", "20261201.1")
    assert [w for w in cluster.writes()[before:] if w[1] == "Service"] == [
        ("apply", "Service", NS, "workers")
    ]
    assert cluster.service_selector(NS)["slipway.dev/version"] == "20261201.2"
    assert cluster.objects[("Deployment", NS, "worker-20261201-1")]["spec"]["replicas"] == 0

    with sqlite_database.read() as session:
        env = session.get(Environment, env_id)
        assert env is not None
        back = previous_version(session, env).id
    assert promote(sqlite_database, runtime, version_id=back) == ("20261201.1", "20261201.2")
    assert current(sqlite_database, env_id) == one
    assert cluster.service_selector(NS)["slipway.dev/version"] == "20261201.1"
