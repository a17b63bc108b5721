"""Queries on environments. An environment is found by its key: project, name and
``branch_key`` (the preview branch, or ``""`` for production, staging and the preview
template that holds the shared preview key)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.store.sql import one_of
from controller.store.tables import Environment


def environment_by_key(
    session: Session, project_id: int, name: str, branch_key: str
) -> Environment | None:
    return session.execute(
        select(Environment).where(
            Environment.project_id == project_id,
            Environment.name == name,
            Environment.branch_key == branch_key,
        )
    ).scalar_one_or_none()


def preview_by_branch(session: Session, project_id: int, branch: str) -> Environment | None:
    """The preview environment of ``branch``, in any status."""
    return environment_by_key(session, project_id, "preview", branch)


def environment_id_by_key(
    session: Session, project_id: int, name: str, branch_key: str
) -> int | None:
    return session.execute(
        select(Environment.id).where(
            Environment.project_id == project_id,
            Environment.name == name,
            Environment.branch_key == branch_key,
        )
    ).scalar_one_or_none()


def preview_owner(session: Session, project_id: int, branch: str) -> int | None:
    """The pull request number that holds the preview of ``branch``, if any."""
    return session.execute(
        select(Environment.pr_number).where(
            Environment.project_id == project_id,
            Environment.name == "preview",
            Environment.branch_key == branch,
        )
    ).scalar_one_or_none()


def environments_of_project(session: Session, project_id: int) -> list[Environment]:
    return list(
        session.execute(
            select(Environment).where(Environment.project_id == project_id).order_by(Environment.id)
        ).scalars()
    )


def environment_ids_of_project(session: Session, project_id: int) -> list[int]:
    return list(
        session.execute(
            select(Environment.id).where(Environment.project_id == project_id)
        ).scalars()
    )


def active_preview_branches(session: Session, project_id: int) -> frozenset[str]:
    rows = session.execute(
        select(Environment.branch).where(
            Environment.project_id == project_id,
            Environment.name == "preview",
            Environment.branch.is_not(None),
            Environment.status == "active",
        )
    )
    return frozenset(b for (b,) in rows if b)


def lock_environment(session: Session, environment_id: int) -> None:
    """Take the environment's row lock (PostgreSQL) for the rest of the transaction;
    SQLite's write transactions are serial already."""
    session.execute(
        select(Environment.id).where(Environment.id == environment_id).with_for_update()
    )


def environments_by_id(session: Session, ids: set[int]) -> dict[int, Environment]:
    if not ids:
        return {}
    rows = session.execute(select(Environment).where(one_of(Environment.id, ids))).scalars()
    return {e.id: e for e in rows}


def preview_template(session: Session, project_id: int) -> Environment:
    """The project's preview environment without a branch (it holds the shared key)."""
    return session.execute(
        select(Environment).where(
            Environment.project_id == project_id,
            Environment.name == "preview",
            Environment.branch_key == "",
        )
    ).scalar_one()
