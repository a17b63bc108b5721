"""The project page's read stays bounded: one query per list, one page of previews.

In-process over a real (SQLite) database seeded like the pages benchmark, so the
statements the read sends can be counted: a read with an N+1 would send one per shown
environment or deployment (dozens), a bounded one a fixed dozen.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from benchmarks.pages import seed_database
from sqlalchemy import event, select, update

from controller.domain.projects import create_project
from controller.errors import Conflict
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.tables import Environment
from controller.versions import previous_version
from controller.web import overview
from controller.web.pages import templates

KEY = "k" * 43
PREVIEWS = 120
ARCHIVED = {"feature/000", "feature/001", "feature/050"}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path_factory.mktemp('overview') / 'slipway.db'}")
    database.migrate()
    cipher = Cipher([KEY])
    try:
        with database.transaction() as session:
            create_project(session, cipher, ref="demo", repo="octo-org/demo")
        seed_database(database, cipher, deployments=400, previews=PREVIEWS)
        with database.transaction() as session:
            session.execute(
                update(Environment)
                .where(Environment.branch.in_(ARCHIVED))
                .values(status="archived")
            )
        yield database
    finally:
        database.dispose()


def _request(db: Database) -> Any:
    return SimpleNamespace(
        app=SimpleNamespace(state=SimpleNamespace(services=SimpleNamespace(db=db)))
    )


def _read(db: Database, page: int) -> tuple[dict[str, Any], list[str]]:
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        return overview.project_overview(_request(db), "demo", preview_page=page), statements
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


def test_the_project_read_sends_a_fixed_number_of_queries(db: Database) -> None:
    context, statements = _read(db, 1)
    assert len(context["previews"]) == overview.PREVIEWS_PER_PAGE
    assert len(context["deployments"]) == 50
    # project, repository, counts, fixed, previews, versions, deployments (+ their
    # environments, project refs, versions), events, last deployments, rollback targets
    assert len(statements) <= 14, statements


def test_previews_are_paged_active_first_and_the_page_is_clamped(db: Database) -> None:
    first, _ = _read(db, 1)
    assert first["preview_total"] == PREVIEWS and first["preview_pages"] == 3
    assert first["preview_counts"] == {
        "active": PREVIEWS - len(ARCHIVED),
        "archived": len(ARCHIVED),
    }
    assert first["previews"][0]["branch"] == "feature/002"
    last, _ = _read(db, 99)
    assert last["preview_page"] == 3 and len(last["previews"]) == PREVIEWS - 100
    assert [e["branch"] for e in last["previews"]][-len(ARCHIVED) :] == sorted(ARCHIVED)
    assert last["preview_page"] == 3
    shown = [e["branch"] for page in (1, 2, 3) for e in _read(db, page)[0]["previews"]]
    assert sorted(shown) == [f"feature/{i:03d}" for i in range(PREVIEWS)]
    assert _read(db, 0)[0]["preview_page"] == 1


def test_last_deployment_and_rollback_are_those_of_the_shown_environments(db: Database) -> None:
    context, _ = _read(db, 2)
    shown = {e["id"] for e in context["environments"] + context["previews"]}
    assert set(context["last"]) <= shown and context["last"]
    with db.read() as session:
        for env in session.execute(select(Environment).where(Environment.id.in_(shown))).scalars():
            try:
                previous_version(session, env)
                expected = True
            except Conflict:
                expected = False
            assert (env.id in context["can_roll_back"]) is expected, env.branch
    assert any(e["id"] in context["can_roll_back"] for e in context["previews"])
    assert any(e["id"] not in context["can_roll_back"] for e in context["previews"])


def test_the_page_links_to_the_other_preview_pages(db: Database) -> None:
    context, _ = _read(db, 2)
    html = templates.get_template("project.html").render(
        {**context, "session": None, "csrf": "", "nonce": "n"}
    )
    assert html.count("<tr data-branch=") == overview.PREVIEWS_PER_PAGE
    assert 'href="/projects/demo?previews=1#previews" rel="prev"' in html
    assert 'href="/projects/demo?previews=3#previews" rel="next"' in html
    assert "51\u2013100 of 120 (117 active, 3 archived" in html
    assert 'name="back" value="/projects/demo?previews=2"' in html  # forms come back here
