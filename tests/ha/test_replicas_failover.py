"""Two real ``slipway serve`` replicas on one PostgreSQL database (issue 12, item 5).

Each replica has a data dir of its own, as pods with an ``emptyDir`` do; they share the
database, the encryption key and the admin token. The project's pre-build command (the
build step; installs of one dependency set are serialised by their cache, builds are not)
blocks on a gate file and records which replica's data dir (its ``HOME``) ran it, so the
test sees who builds without guessing:

1. deliveries to *both* replicas start a production and a staging deployment; both builds
   run in one replica, the leader (the other never starts one);
2. the leader is SIGKILLed mid-build (its controller dies with it);
3. the other replica is elected, takes both deployments over and, once the gate opens,
   finishes each exactly once: one version, one promotion, and a journal that shows the
   resume (the build step's second attempt, the local steps redone on this replica).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine
from support import payloads
from support.procs import alive
from support.repos import TaskRepo
from support.server import Server
from support.waiting import poll_until, scaled

from controller.settings import normalise_database_url
from controller.store.tables import DeploymentLog, DeploymentStep, Job, Version

# Two controllers start at nice +10 on a shared machine: give the whole test room.
pytestmark = [pytest.mark.postgres, pytest.mark.node, pytest.mark.timeout(scaled(900))]

REPO = "octo-org/demo"


class Gate:
    """A build command that waits for a file and says who ran it."""

    def __init__(self, root: Path) -> None:
        self.started = root / "started"
        self.open_path = root / "gate"
        self.command = (
            f'echo "$HOME $$" >> {self.started}; '
            f"while [ ! -e {self.open_path} ]; do sleep 0.1; done"
        )

    def runs(self) -> list[tuple[str, int]]:
        if not self.started.exists():
            return []
        rows = [line.split() for line in self.started.read_text().splitlines() if line.strip()]
        return [(home, int(pid)) for home, pid in rows]

    def open(self) -> None:
        self.open_path.touch()


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Server, Server]]:
    shared = {"admin_token": "slw_" + "t" * 40, "encryption.key": Fernet.generate_key().decode()}
    servers = []
    for name in ("a", "b"):
        data = tmp_path / name / "data"
        data.mkdir(parents=True, mode=0o700)
        for file, value in shared.items():
            (data / file).write_text(value + "\n")
            (data / file).chmod(0o600)
        servers.append(
            Server(
                data, database_url=postgres_url, extra_env={"SLIPWAY_MAX_CONCURRENT_BUILDS": "2"}
            )
        )
    a, b = servers
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    eng = create_engine(normalise_database_url(postgres_url))
    yield eng
    eng.dispose()


def push(server: Server, *, branch: str, sha: str) -> None:
    body = payloads.push(repo=REPO, ref=f"refs/heads/{branch}", before="0" * 40, after=sha)
    response = server.deliver("push", body)
    assert response.status_code == 202, response.text


def deployment(server: Server, env: str, sha: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next(
            (d for d in server.deployments() if d["environment"] == env and d["sha"] == sha),
            None,
        )

    return dict(server.wait_for(find))


def test_leader_killed_mid_build_the_other_replica_finishes_it_exactly_once(
    replicas: tuple[Server, Server], tmp_path: Path, engine: Engine
) -> None:
    payloads.require_node_modules()
    a, b = replicas
    homes = {str(a.data_dir / "home"): a, str(b.data_dir / "home"): b}
    gate = Gate(tmp_path)
    repo = TaskRepo(tmp_path / "repo")
    sha = repo.head()
    repo.checkout("staging", create=True)
    a.create_project(
        "demo",
        repo=REPO,
        clone_url=str(repo.path),
        staging_branch="staging",
        pre_build_command=gate.command,
    )
    push(a, branch="main", sha=sha)  # every replica takes webhooks
    push(b, branch="staging", sha=sha)
    production = deployment(b, "production", sha)
    staging = deployment(a, "staging", sha)

    # 1. both builds run in one replica, the leader
    first = poll_until(lambda: (r := gate.runs()) and len(r) >= 2 and r, timeout=scaled(120), what="both builds started", context=lambda: a.log() + b.log())  # fmt: skip
    assert {home for home, _ in first} == {home for home, _ in first[:1]}, first
    leader = homes[first[0][0]]
    follower = b if leader is a else a
    assert len(first) == 2
    for dep in (production, staging):
        assert follower.ok("GET", f"/api/v1/deployments/{dep['id']}")["status"] == "building"
    with engine.connect() as conn:
        owners = conn.execute(
            select(Job.lease_owner).where(Job.kind == "deploy", Job.status == "running")
        ).all()
    assert len(owners) == 2 and len(set(owners)) == 1, owners  # one controller holds both
    assert len(gate.runs()) == 2

    # 2. SIGKILL the leader (its controller process dies with it: PR_SET_PDEATHSIG)
    leader.kill()

    # 3. the follower takes over and resumes both builds in its own data dir
    follower_home = str(follower.data_dir / "home")
    poll_until(
        lambda: sum(home == follower_home for home, _ in gate.runs()) >= 2,
        timeout=scaled(120),
        what="the follower resumed both builds",
        context=follower.log,
    )
    gate.open()
    finals = [follower.wait_deployment(dep["id"]) for dep in (production, staging)]
    for final in finals:
        assert final["status"] == "deployed", f"{final}\n{follower.log()}"
    # the killed leader's orphaned build commands saw the gate and ended
    for _home, pid in first:
        poll_until(lambda pid=pid: not alive(pid), timeout=scaled(30), what=f"pid {pid} ended")
    assert len(gate.runs()) == 4  # two per replica, never a third start

    with engine.connect() as conn:
        for final in finals:
            dep_id = final["id"]
            versions = conn.execute(
                select(Version.version).where(Version.deployment_id == dep_id)
            ).all()
            assert [v for (v,) in versions] == [final["version"]]
            steps = {
                row.name: row
                for row in conn.execute(
                    select(DeploymentStep).where(DeploymentStep.deployment_id == dep_id)
                )
            }
            assert steps["build"].attempts == 2  # started by the leader, resumed here
            assert steps["install"].attempts == 2  # redone: its venv is on the leader's disk
            assert steps["version"].attempts == 1
            assert steps["promote"].attempts == 1
            assert all(row.status == "done" for row in steps.values())
            messages = [
                m
                for (m,) in conn.execute(
                    select(DeploymentLog.message).where(DeploymentLog.deployment_id == dep_id)
                )
            ]
            resumed = [m for m in messages if m.startswith("Resuming a deployment started by")]
            assert len(resumed) == 1, messages
            assert "fetch, checkout, install run again here" in resumed[0]
            assert sum(m.startswith("Promoted ") for m in messages) == 1
            assert sum(m.startswith("Step build done") for m in messages) == 1
    envs = follower.ok("GET", "/api/v1/projects/demo/environments")
    current = {e["name"]: e["current_version"] for e in envs}
    assert {f["environment"]: current[f["environment"]] for f in finals} == {
        f["environment"]: f["version"] for f in finals
    }


@pytest.fixture(autouse=True)
def _no_orphans(tmp_path: Path) -> Iterator[None]:
    """Whatever happens, no build command outlives the test."""
    yield
    gate = Gate(tmp_path)
    gate.open()
    for _home, pid in gate.runs():
        try:
            poll_until(lambda pid=pid: not alive(pid), timeout=scaled(10), what=f"pid {pid}")
        except Exception:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
