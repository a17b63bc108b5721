"""Routing in batches: one transaction, arrival order, newest wins within the batch."""

from __future__ import annotations

import json

from cryptography.fernet import Fernet
from sqlalchemy import select
from support import payloads

from controller.deployments import create_project
from controller.dispatch import route_pending
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.deliveries import route_key
from controller.store.tables import Delivery, Deployment, Job

REPO = "octo-org/demo"


def _queue_pushes(db: Database, shas: list[str]) -> list[tuple[int, int]]:
    payloads.require_node_modules()
    out = []
    with db.transaction() as session:
        for n, sha in enumerate(shas):
            body = json.dumps(payloads.push(repo=REPO, after=sha, before="0" * 40)).encode()
            delivery = Delivery(
                delivery_id=f"d-{sha[:6]}-{n}", event="push", repo_lower=REPO, body=body
            )
            session.add(delivery)
            session.flush()
            job = Job(
                kind="route",
                key=route_key(REPO, delivery.delivery_id),
                payload={"delivery": delivery.id},
            )
            session.add(job)
            session.flush()
            out.append((job.id, delivery.id))
    return out


def _setup(db: Database) -> Cipher:
    cipher = Cipher([Fernet.generate_key().decode()])
    with db.transaction() as session:
        create_project(session, cipher, ref="demo", repo=REPO, clone_url="/nowhere")
    return cipher


def _deployments(db: Database) -> dict[str, Deployment]:
    with db.read() as session:
        return {d.sha: d for d in session.execute(select(Deployment)).scalars()}


def test_idle_environment_first_push_starts_middle_ones_are_superseded(database: Database) -> None:
    cipher = _setup(database)
    shas = [f"{n}" * 40 for n in range(1, 6)]
    _queue_pushes(database, shas)
    results = route_pending(database, cipher, budget=30.0)
    assert results is not None
    assert len(results) == 5
    deps = _deployments(database)
    assert deps[shas[0]].status == "queued"
    assert deps[shas[-1]].status == "queued"
    for sha in shas[1:-1]:
        assert deps[sha].status == "superseded"
        assert deps[sha].error == f"superseded by {deps[shas[-1]].id}"
    with database.read() as session:
        route_jobs = session.execute(select(Job.status).where(Job.kind == "route")).scalars().all()
        deploy_jobs = (
            session.execute(
                select(Job.deployment_id).where(Job.kind == "deploy", Job.status == "queued")
            )
            .scalars()
            .all()
        )
        processed = session.execute(select(Delivery.processed_at)).scalars().all()
    assert route_jobs == ["done"] * 5
    assert sorted(deploy_jobs) == sorted([deps[shas[0]].id, deps[shas[-1]].id])
    assert all(processed)
    # nothing is left to route, and nothing new is made
    assert route_pending(database, cipher) is None
    assert len(_deployments(database)) == 5


def test_busy_environment_only_the_newest_waits(database: Database) -> None:
    cipher = _setup(database)
    _queue_pushes(database, ["a" * 40])
    route_pending(database, cipher, budget=30.0)
    shas = ["b" * 40, "c" * 40, "d" * 40]
    _queue_pushes(database, shas)
    route_pending(database, cipher, budget=30.0)
    deps = _deployments(database)
    assert deps["a" * 40].status == "superseded"  # still queued when the newer ones came
    assert [deps[s].status for s in shas] == ["superseded", "superseded", "queued"]
