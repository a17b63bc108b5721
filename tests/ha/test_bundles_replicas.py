"""Bundles served by every replica (issue 12): two real ``slipway serve`` replicas on one
PostgreSQL database, each with a data dir of its own, as pods with an ``emptyDir``.

The leader builds a version (the local runtime runs it; the manifests endpoint, asked on
the leader, bundles it as the Kubernetes runtime does, from the build on its disk). Then
the other replica, which never saw the build, serves that bundle byte-identical and under
its digest, refuses a wrong token as the leader does, and renders manifests that name
the same digest; after the leader is SIGKILLed, the survivor still serves it. The repo
carries a 4 MB file, so the bundle spans several 1 MiB chunks.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, select
from support import payloads
from support.repos import TaskRepo
from support.server import Server
from support.waiting import scaled

from controller.bundles import bundle_token
from controller.settings import normalise_database_url
from controller.store.tables import Environment, StoredBundle, Version

pytestmark = [pytest.mark.postgres, pytest.mark.node, pytest.mark.timeout(scaled(600))]

REPO = "octo-org/demo"
KEY = Fernet.generate_key().decode()


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Server, Server]]:
    shared = {"admin_token": "slw_" + "t" * 40, "encryption.key": KEY}
    servers = []
    for name in ("a", "b"):
        data = tmp_path / name / "data"
        data.mkdir(parents=True, mode=0o700)
        for file, value in shared.items():
            (data / file).write_text(value + "\n")
            (data / file).chmod(0o600)
        # as the chart sets it: the Service that balances over the replicas
        service = {"SLIPWAY_KUBERNETES_ARTIFACT_URL": "http://slipway.slipway.svc"}
        servers.append(Server(data, database_url=postgres_url, extra_env=service))
    try:
        for server in servers:
            server.start()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.close()


def _bundle_env(server: Server) -> dict[str, str]:
    objects = server.ok("GET", "/api/v1/projects/demo/environments/production/manifests")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    fetch = deployment["spec"]["template"]["spec"]["initContainers"][0]
    return {e["name"]: e.get("value") for e in fetch["env"]}


def _get(server: Server, digest: str, token: str) -> httpx.Response:
    return httpx.get(
        f"{server.url}/api/v1/bundles/{digest}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=scaled(60),
    )


def test_a_bundle_built_by_the_leader_is_served_by_every_replica_and_after_failover(
    replicas: tuple[Server, Server], tmp_path: Path, postgres_url: str
) -> None:
    payloads.require_node_modules()
    a, b = replicas
    repo = TaskRepo(tmp_path / "repo")
    repo.write("assets/big.txt", base64.b64encode(os.urandom(3 * 1024 * 1024)).decode())
    sha = repo.commit("a big asset")
    a.create_project("demo", repo=REPO, clone_url=str(repo.path))
    body = payloads.push(repo=REPO, ref="refs/heads/main", before="0" * 40, after=sha)
    assert b.deliver("push", body).status_code == 202
    dep = b.wait_for(lambda: next(iter(b.deployments()), None), timeout=scaled(60))
    final = b.wait_deployment(dep["id"], timeout=scaled(300))
    assert final["status"] == "deployed", final

    engine = create_engine(normalise_database_url(postgres_url))
    try:
        with engine.connect() as conn:
            source_path = conn.execute(
                select(Version.source_path).where(Version.deployment_id == dep["id"])
            ).scalar_one()
            env_id = conn.execute(
                select(Environment.id).where(Environment.name == "production")
            ).scalar_one()
        leader = a if source_path.startswith(str(a.data_dir)) else b
        follower = b if leader is a else a
        assert source_path.startswith(str(leader.data_dir)), source_path

        bundle = _bundle_env(leader)
        digest = bundle["BUNDLE_DIGEST"]
        cached = leader.data_dir / "bundles" / f"{digest.replace(':', '-')}.tar"
        expected = cached.read_bytes()
        assert "sha256:" + hashlib.sha256(expected).hexdigest() == digest

        token = bundle_token([KEY], env_id)
        served = _get(follower, digest, token)
        assert served.status_code == 200, served.text
        assert served.content == expected
        assert "sha256:" + hashlib.sha256(served.content).hexdigest() == digest
        assert served.headers["etag"] == f'"{digest}"'
        assert "immutable" in served.headers["cache-control"]
        assert not (follower.data_dir / "bundles").exists()  # served from the database
        manifests = "/api/v1/projects/demo/environments/production/manifests"
        assert follower.ok("GET", manifests) == leader.ok("GET", manifests)
        assert bundle["BUNDLE_URL"] == f"http://slipway.slipway.svc/api/v1/bundles/{digest}"
        with engine.connect() as conn:
            chunks = conn.execute(
                select(StoredBundle.chunks).where(StoredBundle.digest == digest)
            ).scalar_one()
        assert chunks >= 4  # the 4 MB asset alone is four chunks

        forged = bundle_token([Fernet.generate_key().decode()], env_id)
        other_env = bundle_token([KEY], env_id + 1)
        for server in (leader, follower):
            assert _get(server, digest, forged).status_code == 401
            assert _get(server, digest, other_env).status_code == 404
            assert _get(server, digest, "sbt_garbage").status_code == 401

        leader.kill()
        survivor: Any = follower.wait_for(
            lambda: (r := _get(follower, digest, token)).status_code == 200 and r,
            timeout=scaled(60),
        )
        assert survivor.content == expected
        assert _get(follower, digest, forged).status_code == 401
    finally:
        engine.dispose()
