"""Env vars in the database: the one set of query functions the API, runs, the pipeline
and ``keys rotate`` use.

Values are encrypted before they reach a session (:mod:`controller.secretstore.crypto`),
with the row's place as associated data, so the database never holds a plaintext value
and a ciphertext moved to another row fails to decrypt. Every change appends an
:class:`EnvVarChange` (name, action, actor, time: never the value) in the same
transaction, so the history cannot disagree with the variables.

Actors are strings a person can read: ``admin token``, ``import (admin token)``,
``sync of deployment dep_…``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.errors import InvalidInput, NotFound
from controller.models import normalise_environment
from controller.secretstore.crypto import Cipher
from controller.secretstore.variables import (
    Variable,
    layers_for,
    resolve_variables,
    validate_variables,
)
from controller.store.tables import Environment, EnvVar, EnvVarChange, Project, utcnow


@dataclass(frozen=True)
class Scope:
    """Where a variable lives: an environment, the preview root or a preview branch."""

    project_id: int
    environment: str
    branch_key: str = ""

    @classmethod
    def of(cls, project: Project, environment: str, branch: str | None) -> Scope:
        name = normalise_environment(environment)
        if branch and name != "preview":
            raise InvalidInput(
                f"{name} has no branches: a branch goes with the preview environment"
            )
        return cls(project.id, name, branch or "")

    def aad(self, name: str) -> bytes:
        return f"env-var\0{self.project_id}\0{self.environment}\0{self.branch_key}\0{name}".encode()

    def describe(self) -> str:
        return f"preview branch {self.branch_key}" if self.branch_key else self.environment


def _rows(session: Session, scope: Scope) -> list[EnvVar]:
    return list(
        session.execute(
            select(EnvVar)
            .where(
                EnvVar.project_id == scope.project_id,
                EnvVar.environment == scope.environment,
                EnvVar.branch_key == scope.branch_key,
            )
            .order_by(EnvVar.name)
        ).scalars()
    )


def list_variables(session: Session, scope: Scope) -> list[EnvVar]:
    return _rows(session, scope)


def get_variable(session: Session, scope: Scope, name: str) -> EnvVar:
    row = session.execute(
        select(EnvVar).where(
            EnvVar.project_id == scope.project_id,
            EnvVar.environment == scope.environment,
            EnvVar.branch_key == scope.branch_key,
            EnvVar.name == name,
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"variable {name} is not set in {scope.describe()}")
    return row


def decrypt_value(cipher: Cipher, row: EnvVar) -> str:
    scope = Scope(row.project_id, row.environment, row.branch_key)
    return cipher.decrypt(row.value_encrypted, aad=scope.aad(row.name))


def _record(session: Session, scope: Scope, name: str, *, action: str, actor: str) -> None:
    session.add(
        EnvVarChange(
            project_id=scope.project_id,
            environment=scope.environment,
            branch_key=scope.branch_key,
            name=name,
            action=action,
            actor=actor,
        )
    )


def set_variables(
    session: Session,
    cipher: Cipher,
    scope: Scope,
    values: dict[str, str],
    *,
    actor: str,
    secret: bool = False,
    fork_safe: bool | None = None,
    source: str = "manual",
    override: bool = True,
) -> tuple[list[str], list[str]]:
    """Create or update; returns ``(written, kept)``. ``override=False`` keeps names that
    exist. A secret stays secret (a write-only value cannot become readable by a write)."""
    values = validate_variables(values)
    existing = {row.name: row for row in _rows(session, scope)}
    written, kept = [], []
    for name, value in values.items():
        row = existing.get(name)
        if row is not None and not override:
            kept.append(name)
            continue
        encrypted = cipher.encrypt(value, aad=scope.aad(name))
        if row is None:
            session.add(
                EnvVar(
                    project_id=scope.project_id,
                    environment=scope.environment,
                    branch_key=scope.branch_key,
                    name=name,
                    value_encrypted=encrypted,
                    secret=secret,
                    fork_safe=bool(fork_safe),
                    source=source,
                    updated_by=actor,
                )
            )
        else:
            row.value_encrypted = encrypted
            row.secret = row.secret or secret
            if fork_safe is not None:
                row.fork_safe = fork_safe
            row.source = source
            row.updated_by = actor
            row.updated_at = utcnow()
        _record(session, scope, name, action=source if source != "manual" else "set", actor=actor)
        written.append(name)
    return written, kept


def unset_variable(session: Session, scope: Scope, name: str, *, actor: str) -> None:
    row = get_variable(session, scope, name)
    session.delete(row)
    _record(session, scope, name, action="unset", actor=actor)


def history(session: Session, scope: Scope, *, limit: int = 500) -> list[EnvVarChange]:
    return list(
        session.execute(
            select(EnvVarChange)
            .where(
                EnvVarChange.project_id == scope.project_id,
                EnvVarChange.environment == scope.environment,
                EnvVarChange.branch_key == scope.branch_key,
            )
            .order_by(EnvVarChange.id.desc())
            .limit(limit)
        ).scalars()
    )


def resolve_for_environment(
    session: Session, cipher: Cipher, env: Environment
) -> dict[str, Variable]:
    """What ``env`` sees, decrypted, with the preview precedence and the fork rule.

    A fork preview exists only when its project allows fork previews; it still sees
    fork-safe variables only."""
    layers: dict[tuple[str, str], list[Variable]] = {}
    for environment, branch_key in layers_for(env.name, env.branch):
        scope = Scope(env.project_id, environment, branch_key)
        layers[(environment, branch_key)] = [
            Variable(
                name=row.name,
                value=decrypt_value(cipher, row),
                secret=row.secret,
                fork_safe=row.fork_safe,
            )
            for row in _rows(session, scope)
            if not (env.is_fork and not row.fork_safe)
        ]
    return resolve_variables(
        environment=env.name, branch=env.branch, layers=layers, fork=env.is_fork
    )


def rotate_all(session: Session, cipher: Cipher) -> dict[str, Any]:
    """Re-encrypt every stored value under the newest key (legacy Fernet tokens too)."""
    counts: dict[str, Any] = {"env_vars": 0, "secret_keys": 0, "already_current": 0}
    for row in session.execute(select(EnvVar)).scalars():
        if cipher.is_current(row.value_encrypted):
            counts["already_current"] += 1
            continue
        scope = Scope(row.project_id, row.environment, row.branch_key)
        row.value_encrypted = cipher.rotate(row.value_encrypted, aad=scope.aad(row.name))
        counts["env_vars"] += 1
    for env in session.execute(select(Environment)).scalars():
        if cipher.is_current(env.secret_key_encrypted):
            counts["already_current"] += 1
            continue
        env.secret_key_encrypted = cipher.rotate(env.secret_key_encrypted)
        counts["secret_keys"] += 1
    counts["key_id"] = cipher.current_key_id
    return counts
