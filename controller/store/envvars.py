"""Queries on env vars and their change history. Rows hold ciphertext only: every
encrypt and decrypt, and every write, stays in :mod:`controller.secretstore.store`,
which holds the cipher and the associated data; these only select.

A scope (an environment, the preview root or a preview branch) is the triple
``project_id``, ``environment``, ``branch_key`` (``""`` off the preview branches)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, select
from sqlalchemy.orm import Session

from controller.store.tables import Environment, EnvVar, EnvVarChange


def _in_scope(
    model: type[EnvVar] | type[EnvVarChange], *, project_id: int, environment: str, branch_key: str
) -> tuple[ColumnElement[bool], ...]:
    return (
        model.project_id == project_id,
        model.environment == environment,
        model.branch_key == branch_key,
    )


def env_vars_in_scope(
    session: Session, *, project_id: int, environment: str, branch_key: str
) -> list[EnvVar]:
    """The scope's variables, by name."""
    where = _in_scope(EnvVar, project_id=project_id, environment=environment, branch_key=branch_key)
    return list(session.execute(select(EnvVar).where(*where).order_by(EnvVar.name)).scalars())


def env_var_by_name(
    session: Session, *, project_id: int, environment: str, branch_key: str, name: str
) -> EnvVar | None:
    where = _in_scope(EnvVar, project_id=project_id, environment=environment, branch_key=branch_key)
    return session.execute(select(EnvVar).where(*where, EnvVar.name == name)).scalar_one_or_none()


def env_var_history(
    session: Session, *, project_id: int, environment: str, branch_key: str, limit: int
) -> list[EnvVarChange]:
    """The scope's newest ``limit`` changes, newest first."""
    where = _in_scope(
        EnvVarChange, project_id=project_id, environment=environment, branch_key=branch_key
    )
    return list(
        session.execute(
            select(EnvVarChange).where(*where).order_by(EnvVarChange.id.desc()).limit(limit)
        ).scalars()
    )


_NEWEST_CHANGE = select(func.max(EnvVarChange.id)).where(
    EnvVarChange.project_id == bindparam("project_id")
)


def newest_env_var_change_id(session: Session, project_id: int) -> int | None:
    """The id of the project's newest env var change: a stamp every write moves on.
    Read by every trigger, so the statement is built once."""
    return session.execute(_NEWEST_CHANGE, {"project_id": project_id}).scalar()


def env_var_layer_rows(
    session: Session, *, project_id: int, environment: str, branch_keys: Collection[str]
) -> list[tuple[Any, ...]]:
    """(environment, branch key, name, ciphertext, secret, fork-safe) of every variable of
    ``environment`` under any of ``branch_keys``: one query, no ORM objects."""
    rows = session.execute(
        select(
            EnvVar.environment,
            EnvVar.branch_key,
            EnvVar.name,
            EnvVar.value_encrypted,
            EnvVar.secret,
            EnvVar.fork_safe,
        ).where(
            EnvVar.project_id == project_id,
            EnvVar.environment == environment,
            EnvVar.branch_key.in_(list(branch_keys)),
        )
    ).all()
    return [tuple(row) for row in rows]


def all_env_vars(session: Session) -> list[EnvVar]:
    return list(session.execute(select(EnvVar)).scalars())


def all_environments(session: Session) -> list[Environment]:
    return list(session.execute(select(Environment)).scalars())
