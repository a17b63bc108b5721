"""Env vars in the database: the one set of functions the API, runs, the pipeline and
``keys rotate`` use.
Every read and write of an env var passes the encryption boundary here: the selects are
named queries in :mod:`controller.store.envvars` that hand back ciphertext only, and the
cipher, the associated data and every write stay in this module.

Values are encrypted before they reach a session (:mod:`controller.secretstore.crypto`),
with the row's place as associated data, so the database never holds a plaintext value
and a ciphertext moved to another row fails to decrypt. Every change appends an
:class:`EnvVarChange` (name, action, actor, time: never the value) in the same
transaction, so the history cannot disagree with the variables.

Actors are strings a person can read: ``admin token``, ``import (admin token)``,
``sync of deployment dep_…``.

**Resolving on every run is cached by a stamp.** Every run resolves its variables when it
starts, so a changed value reaches the next run. Decrypting hundreds of values per
trigger would dominate the trigger's latency, so the resolved set is kept (per cipher,
in memory, bounded) under the project's newest :class:`EnvVarChange` id, read first in
the same transaction: every write appends a change in the transaction that writes the
value, so a new stamp always means "load again". (Reading the stamp before the rows
means a concurrent commit can only file newer rows under an older stamp, which the next
run replaces.) ``keys rotate`` changes ciphertexts, not values, so it needs no stamp.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

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
from controller.store.envvars import (
    all_env_vars,
    all_environments,
    env_var_by_name,
    env_var_history,
    env_var_layer_rows,
    env_vars_in_scope,
    newest_env_var_change_id,
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

    def where(self) -> dict[str, Any]:
        """The scope as :mod:`controller.store.envvars` queries take it."""
        return {
            "project_id": self.project_id,
            "environment": self.environment,
            "branch_key": self.branch_key,
        }

    def describe(self) -> str:
        return f"preview branch {self.branch_key}" if self.branch_key else self.environment


def _rows(session: Session, scope: Scope) -> list[EnvVar]:
    return env_vars_in_scope(session, **scope.where())


def list_variables(session: Session, scope: Scope) -> list[EnvVar]:
    return _rows(session, scope)


def get_variable(session: Session, scope: Scope, name: str) -> EnvVar:
    row = env_var_by_name(session, **scope.where(), name=name)
    if row is None:
        raise NotFound(f"variable {name} is not set in {scope.describe()}")
    return row


def decrypt_value(cipher: Cipher, row: EnvVar) -> str:
    scope = Scope(row.project_id, row.environment, row.branch_key)
    return cipher.decrypt(row.value_encrypted, aad=scope.aad(row.name))


def _record(session: Session, scope: Scope, name: str, *, action: str, actor: str) -> None:
    session.add(
        EnvVarChange(
            **scope.where(),
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
                    **scope.where(),
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
    return env_var_history(session, **scope.where(), limit=limit)


CACHE_ENTRIES = 512
_caches: weakref.WeakKeyDictionary[Cipher, OrderedDict[tuple[Any, ...], dict[str, Variable]]]
_caches = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def resolve_for_environment(
    session: Session, cipher: Cipher, env: Environment
) -> dict[str, Variable]:
    """:func:`load_for_environment`, cached under the project's change stamp."""
    stamp = newest_env_var_change_id(session, env.project_id)
    key = (env.id, env.project_id, env.name, env.branch, env.is_fork, stamp)
    with _caches_lock:
        cache = _caches.setdefault(cipher, OrderedDict())
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return dict(hit)
    resolved = load_for_environment(session, cipher, env)
    with _caches_lock:
        cache[key] = resolved
        if len(cache) > CACHE_ENTRIES:
            cache.popitem(last=False)
    return dict(resolved)


def load_for_environment(session: Session, cipher: Cipher, env: Environment) -> dict[str, Variable]:
    """What ``env`` sees, decrypted, with the preview precedence and the fork rule.

    A fork preview exists only when its project allows fork previews; it still sees
    fork-safe variables only. One query for every layer, without ORM objects: this runs
    on every trigger."""
    wanted = layers_for(env.name, env.branch)
    rows = env_var_layer_rows(
        session,
        project_id=env.project_id,
        environment=env.name,
        branch_keys=[branch_key for _, branch_key in wanted],
    )
    layers: dict[tuple[str, str], list[Variable]] = {layer: [] for layer in wanted}
    for environment, branch_key, name, encrypted, secret, fork_safe in rows:
        if env.is_fork and not fork_safe:
            continue
        scope = Scope(env.project_id, environment, branch_key)
        value = cipher.decrypt(encrypted, aad=scope.aad(name))
        layers.setdefault((environment, branch_key), []).append(
            Variable(name=name, value=value, secret=secret, fork_safe=fork_safe)
        )
    return resolve_variables(
        environment=env.name, branch=env.branch, layers=layers, fork=env.is_fork
    )


def rotate_all(session: Session, cipher: Cipher) -> dict[str, Any]:
    """Re-encrypt every stored value under the newest key (legacy Fernet tokens too)."""
    counts: dict[str, Any] = {"env_vars": 0, "secret_keys": 0, "already_current": 0}
    for row in all_env_vars(session):
        if cipher.is_current(row.value_encrypted):
            counts["already_current"] += 1
            continue
        scope = Scope(row.project_id, row.environment, row.branch_key)
        row.value_encrypted = cipher.rotate(row.value_encrypted, aad=scope.aad(row.name))
        counts["env_vars"] += 1
    for env in all_environments(session):
        if cipher.is_current(env.secret_key_encrypted):
            counts["already_current"] += 1
            continue
        env.secret_key_encrypted = cipher.rotate(env.secret_key_encrypted)
        counts["secret_keys"] += 1
    counts["key_id"] = cipher.current_key_id
    return counts
