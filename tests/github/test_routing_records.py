"""Routing remembers the clone URL and installation a delivery names (for private clones)."""

from __future__ import annotations

import json

from cryptography.fernet import Fernet
from sqlalchemy import select
from support import payloads

from controller.domain.projects import create_project
from controller.routing import route_pending
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.deliveries import route_key
from controller.store.tables import Delivery, Job, Repository

REPO = "octo-org/Private-Tasks"


def queue(db: Database, event: str, payload: dict, n: int) -> None:
    with db.transaction() as session:
        delivery = Delivery(
            delivery_id=f"d-{n}",
            event=event,
            repo_lower=REPO.lower(),
            body=json.dumps(payload).encode(),
        )
        session.add(delivery)
        session.flush()
        session.add(
            Job(
                kind="route",
                key=route_key(REPO.lower(), delivery.delivery_id),
                payload={"delivery": delivery.id},
            )
        )


def repositories(db: Database) -> list[tuple[str, str | None, int | None]]:
    with db.read() as session:
        rows = session.execute(select(Repository)).scalars().all()
        return [(r.full_name, r.clone_url, r.installation_id) for r in rows]


def test_a_push_records_its_clone_url_and_installation(database: Database) -> None:
    payloads.require_node_modules()
    cipher = Cipher([Fernet.generate_key().decode()])
    with database.transaction() as session:
        create_project(session, cipher, ref="demo", repo=REPO)
    first = "https://git.example.com/octo-org/Private-Tasks.git"
    queue(
        database,
        "push",
        payloads.push(
            repo=REPO, before="0" * 40, after="1" * 40, clone_url=first, installation_id=9
        ),
        1,
    )
    assert route_pending(database, cipher, budget=30.0)
    assert repositories(database) == [(REPO, first, 9)]

    renamed = "https://git.example.com/octo-org/renamed.git"
    queue(
        database,
        "push",
        payloads.push(
            repo=REPO, before="1" * 40, after="2" * 40, clone_url=renamed, installation_id=10
        ),
        2,
    )
    assert route_pending(database, cipher, budget=30.0)
    assert repositories(database) == [(REPO, renamed, 10)]


def test_a_delivery_for_no_project_records_nothing(database: Database) -> None:
    payloads.require_node_modules()
    cipher = Cipher([Fernet.generate_key().decode()])
    queue(
        database,
        "push",
        payloads.push(repo=REPO, before="0" * 40, after="1" * 40, installation_id=9),
        1,
    )
    route_pending(database, cipher, budget=30.0)
    assert repositories(database) == []
