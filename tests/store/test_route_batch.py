"""Routing in batches: one transaction, arrival order, newest wins within the batch; one
bad delivery never holds back its neighbours; batches are bounded by bytes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from support import payloads

from controller.domain.projects import create_project
from controller.routing import apply as routing_apply
from controller.routing import route_pending
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.deliveries import route_key
from controller.store.tables import Delivery, Deployment, Job, utcnow

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


def _queue_bodies(db: Database, bodies: list[tuple[str, bytes]]) -> list[int]:
    """Queue raw deliveries ``(event, body)`` of ``REPO``; returns their primary keys."""
    pks = []
    with db.transaction() as session:
        for n, (event, body) in enumerate(bodies):
            delivery = Delivery(delivery_id=f"raw-{n}", event=event, repo_lower=REPO, body=body)
            session.add(delivery)
            session.flush()
            session.add(
                Job(
                    kind="route",
                    key=route_key(REPO, delivery.delivery_id),
                    payload={"delivery": delivery.id},
                )
            )
            pks.append(delivery.id)
    return pks


def _outcomes(db: Database) -> dict[str, str | None]:
    with db.read() as session:
        return dict(session.execute(select(Delivery.delivery_id, Delivery.outcome)).all())


def _push_with(**fields: object) -> bytes:
    payload = payloads.push(repo=REPO, after="1" * 40, before="0" * 40)
    for path, value in fields.items():
        target = payload
        *parents, last = path.split("__")
        for name in parents:
            target = target[name]
        target[last] = value
    return json.dumps(payload).encode()


def test_wrong_typed_fields_are_rejected_at_once_and_alone(database: Database) -> None:
    """Issue 14: ``after: 5`` used to raise TypeError in routing, roll back the batch and
    retry for minutes; the delivery never got an outcome."""
    cipher = _setup(database)
    install = payloads.installation(action="created", repos=[REPO])
    install["installation"]["id"] = 2**70
    bodies = [
        ("push", _push_with(after="2" * 40)),
        ("push", _push_with(after=5)),
        ("push", _push_with(after=["a" * 40])),
        ("push", _push_with(ref=["refs/heads/main"])),
        ("push", _push_with(repository__default_branch={"name": "main"})),
        ("push", _push_with(deleted="yes")),
        ("push", _push_with(after="--upload-pack=touch /tmp/x")),
        ("installation", json.dumps(install).encode()),
        ("push", _push_with(after="3" * 40)),
    ]
    _queue_bodies(database, bodies)

    results = route_pending(database, cipher, budget=30.0)

    assert results is not None and len(results) == len(bodies)
    outcomes = _outcomes(database)
    for n in range(1, len(bodies) - 1):
        assert (outcomes[f"raw-{n}"] or "").startswith("rejected: payload "), outcomes
    assert "deploy 2222222" in (outcomes["raw-0"] or "")
    assert "deploy 3333333" in (outcomes["raw-8"] or "")
    with database.read() as session:
        statuses = session.execute(select(Job.status).where(Job.kind == "route")).scalars().all()
    assert statuses == ["done"] * len(bodies)
    assert route_pending(database, cipher) is None


def test_routing_that_raises_fails_its_delivery_alone(
    database: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14: a delivery whose routing raises unexpectedly is recorded and logged; its
    batch neighbours are routed in the same pass."""
    cipher = _setup(database)
    real_route = routing_apply.route

    def route(event: str, payload: dict[str, Any], views: Any) -> Any:
        if payload.get("after") == "2" * 40:
            raise KeyError("a bug")
        return real_route(event, payload, views)

    monkeypatch.setattr(routing_apply, "route", route)
    _queue_bodies(
        database,
        [("push", _push_with(after=f"{n}" * 40)) for n in (1, 2, 3)],
    )

    results = route_pending(database, cipher, budget=30.0)

    assert results is not None and len(results) == 3
    outcomes = _outcomes(database)
    assert outcomes["raw-1"] == "rejected: routing failed (KeyError)"
    assert "deploy 1111111" in (outcomes["raw-0"] or "")
    assert "deploy 3333333" in (outcomes["raw-2"] or "")
    assert any("raw-1" in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_batch_that_fails_to_apply_routes_the_rest_one_by_one(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database failure applying one delivery retries that one alone, with backoff;
    the deliveries after it in the batch are routed at once. Once its attempts run out it
    is recorded ``failed``: every delivery ends with an outcome."""
    cipher = _setup(database)
    real_apply = routing_apply.apply_deploy

    def apply(session: Any, cipher: Any, project: Any, intent: Any, *args: Any, **kw: Any) -> None:
        if intent.sha == "2" * 40:
            raise OperationalError("INSERT", {}, Exception("disk I/O error"))
        real_apply(session, cipher, project, intent, *args, **kw)

    monkeypatch.setattr(routing_apply, "apply_deploy", apply)
    opened = payloads.pull_request(action="opened", repo=REPO, head_sha="2" * 40)
    _queue_bodies(
        database,
        [
            ("push", _push_with(after="1" * 40)),
            ("pull_request", json.dumps(opened).encode()),
            ("push", _push_with(after="3" * 40)),
        ],
    )
    with database.transaction() as session:
        session.execute(update(Job).where(Job.kind == "route").values(max_attempts=2))

    route_pending(database, cipher, budget=30.0)

    outcomes = _outcomes(database)
    assert outcomes["raw-1"] is None, "waits for its retry"
    assert "deploy 1111111" in (outcomes["raw-0"] or "")
    assert "deploy 3333333" in (outcomes["raw-2"] or "")
    with database.transaction() as session:
        session.execute(update(Job).where(Job.kind == "route").values(run_after=utcnow()))
    route_pending(database, cipher, budget=30.0)
    outcomes = _outcomes(database)
    assert outcomes["raw-1"] == "failed: routing gave up after 2 attempts (OperationalError)"


def test_a_routing_batch_is_bounded_by_bytes(database: Database) -> None:
    """Issue 15: 128 large bodies are never loaded at once; the batch stops at the byte
    bound (the first delivery always goes, however large)."""
    cipher = _setup(database)
    body = _push_with(after="1" * 40)
    padded = body[:-1] + b', "padding": "' + b"x" * (200_000 - len(body)) + b'"}'
    _queue_bodies(database, [("push", padded) for _ in range(10)])

    first = route_pending(database, cipher, budget=30.0, max_bytes=450_000)
    assert first is not None and len(first) == 2 and first.backlog
    single = route_pending(database, cipher, budget=30.0, max_bytes=1000)
    assert single is not None and len(single) == 1
    rest = route_pending(database, cipher, budget=30.0)
    assert rest is not None and len(rest) == 7
    assert all(outcome for outcome in _outcomes(database).values())
