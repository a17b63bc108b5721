"""``one_of`` / ``not_one_of``: ``IN`` whose SQL text does not grow with the list.

An ``in_()`` over a list read from data is a new statement for every length, and the
driver keeps each one prepared (pysqlite: 128 per connection, ~80 KB for 1,000 values).
These run on SQLite and PostgreSQL: same rows as ``in_()``, one statement for every
length, and ORM updates through them still refresh the objects a session holds.
"""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, update
from support.statements import statements

from controller.domain.projects import create_project
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.projects import project_refs
from controller.store.sql import not_one_of, one_of
from controller.store.tables import Project


@pytest.fixture
def project_ids(database: Database) -> list[int]:
    cipher = Cipher([Fernet.generate_key().decode()])
    with database.transaction() as session:
        return [
            create_project(session, cipher, ref=f"p{i}", repo=f"octo-org/p{i}").id
            for i in range(12)
        ]


def test_one_of_selects_what_in_selects(database: Database, project_ids: list[int]) -> None:
    wanted = project_ids[2:7]
    with database.read() as session:
        by_id = set(session.execute(select(Project.id).where(one_of(Project.id, wanted))).scalars())
        by_ref = set(
            session.execute(
                select(Project.ref).where(one_of(Project.ref, ["p3", "p11", "nope"]))
            ).scalars()
        )
        rest = set(
            session.execute(select(Project.id).where(not_one_of(Project.id, wanted))).scalars()
        )
        none = session.execute(select(Project.id).where(one_of(Project.id, []))).all()
        every = session.execute(select(Project.id).where(not_one_of(Project.id, []))).all()
    assert by_id == set(wanted)
    assert by_ref == {"p3", "p11"}
    assert rest == set(project_ids) - set(wanted)
    assert none == [] and len(every) == len(project_ids)


def test_a_string_longer_than_the_column_matches_nothing(
    database: Database, project_ids: list[int]
) -> None:
    """PostgreSQL compares as text: no cast to the column's length truncates a value."""
    with database.read() as session:
        rows = session.execute(select(Project.id).where(one_of(Project.ref, ["p1" + "x" * 300])))
        assert rows.all() == []


def test_one_statement_for_every_length(database: Database, project_ids: list[int]) -> None:
    with statements(database) as seen, database.read() as session:
        for n in (1, 2, 5, 12, 400, 1000):
            ids = set(project_ids[:n]) | set(range(10_000, 10_000 + n - min(n, 12)))
            assert set(project_refs(session, ids)) == set(project_ids[:n])
    assert len(seen) == 6
    assert len(set(seen)) == 1, seen


def test_an_orm_update_through_one_of_refreshes_the_session(
    database: Database, project_ids: list[int]
) -> None:
    with database.transaction() as session:
        held = session.get(Project, project_ids[0])
        assert held is not None
        session.execute(
            update(Project).where(one_of(Project.id, project_ids[:3])).values(repo="octo-org/moved")
        )
        assert held.repo == "octo-org/moved"
    with database.read() as session:
        moved = session.execute(select(Project.id).where(Project.repo == "octo-org/moved"))
        assert set(moved.scalars()) == set(project_ids[:3])


def test_none_is_refused() -> None:
    with pytest.raises(ValueError, match="None"):
        one_of(Project.id, [1, None])
