"""Env vars in the database (SQLite and PostgreSQL): writes, audit, precedence, rotation."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import select, text

from controller.domain.environments import find_environment
from controller.domain.projects import get_project
from controller.errors import InvalidInput, NotFound, PermanentError
from controller.secretstore.crypto import Cipher
from controller.secretstore.store import (
    Scope,
    decrypt_value,
    get_variable,
    history,
    resolve_for_environment,
    rotate_all,
    set_variables,
    unset_variable,
)
from controller.store.db import Database
from controller.store.tables import EnvVar

SECRET = "sk_live_9f8e7d6c5b4a"
K1 = base64.urlsafe_b64encode(b"k1" * 16).decode()  # a Fernet key, as generated ones
K2 = "a passphrase from a secret manager, 32+ characters long"


def test_values_are_encrypted_and_changes_are_audited_without_values(
    database: Database, cipher: Cipher, project_id: int
) -> None:
    prod = Scope(project_id, "production")
    with database.transaction() as session:
        set_variables(session, cipher, prod, {"API_KEY": SECRET}, actor="admin token", secret=True)
        set_variables(session, cipher, prod, {"API_URL": "https://x"}, actor="admin token")
    with database.transaction() as session:
        set_variables(session, cipher, prod, {"API_KEY": SECRET + "2"}, actor="admin token")
        unset_variable(session, prod, "API_URL", actor="admin token")
    with database.read() as session:
        row = get_variable(session, prod, "API_KEY")
        assert row.secret, "a secret stays secret when it is set again"
        assert decrypt_value(cipher, row) == SECRET + "2"
        with pytest.raises(NotFound):
            get_variable(session, prod, "API_URL")
        changes = [(c.name, c.action, c.actor) for c in history(session, prod)]
        assert changes == [
            ("API_URL", "unset", "admin token"),
            ("API_KEY", "set", "admin token"),
            ("API_URL", "set", "admin token"),
            ("API_KEY", "set", "admin token"),
        ]
        dumped = " ".join(
            str(v)
            for table in ("env_vars", "env_var_changes")
            for r in session.execute(text(f"SELECT * FROM {table}"))
            for v in r
        )
    assert SECRET not in dumped and "https://x" not in dumped


def test_a_value_copied_into_another_row_does_not_decrypt(
    database: Database, cipher: Cipher, project_id: int
) -> None:
    with database.transaction() as session:
        set_variables(session, cipher, Scope(project_id, "production"), {"K": "v1"}, actor="t")
        set_variables(session, cipher, Scope(project_id, "staging"), {"K": "v2"}, actor="t")
    with database.transaction() as session:
        prod = get_variable(session, Scope(project_id, "production"), "K")
        staging = get_variable(session, Scope(project_id, "staging"), "K")
        staging.value_encrypted = prod.value_encrypted
    with database.read() as session, pytest.raises(PermanentError):
        decrypt_value(cipher, get_variable(session, Scope(project_id, "staging"), "K"))


def test_import_without_override_keeps_what_is_set(
    database: Database, cipher: Cipher, project_id: int
) -> None:
    scope = Scope(project_id, "staging")
    with database.transaction() as session:
        set_variables(session, cipher, scope, {"A": "old"}, actor="admin token")
        written, kept = set_variables(
            session, cipher, scope, {"A": "new", "B": "b"}, actor="import", override=False
        )
    assert (written, kept) == (["B"], ["A"])
    with database.read() as session:
        assert decrypt_value(cipher, get_variable(session, scope, "A")) == "old"
    with database.transaction() as session, pytest.raises(InvalidInput):
        set_variables(session, cipher, scope, {"SLIPWAY_RUN_ID": "x"}, actor="t")


def test_environments_resolve_with_preview_precedence_and_the_fork_rule(
    database: Database, cipher: Cipher, project_id: int
) -> None:
    with database.transaction() as session:
        set_variables(session, cipher, Scope(project_id, "production"), {"P": "p"}, actor="t")
        set_variables(session, cipher, Scope(project_id, "preview"), {"X": "parent"}, actor="t")
        set_variables(
            session, cipher, Scope(project_id, "preview"), {"OPEN": "o"}, actor="t", fork_safe=True
        )
        set_variables(
            session, cipher, Scope(project_id, "preview", "feature"), {"X": "child"}, actor="t"
        )
    with database.read() as session:
        project = get_project(session, "demo")

        def seen(name: str, branch: str | None) -> dict[str, str]:
            env = find_environment(session, project, name, branch)
            resolved = resolve_for_environment(session, cipher, env)
            return {n: v.value for n, v in resolved.items()}

        assert seen("production", None) == {"P": "p"}
        assert seen("staging", None) == {}
        assert seen("preview", "feature") == {"X": "child", "OPEN": "o"}
        assert seen("preview", "fork-pr") == {"OPEN": "o"}


def test_rotation_moves_every_value_to_the_newest_key(database: Database, project_id: int) -> None:
    old = Cipher([K1])
    with database.transaction() as session:
        set_variables(session, old, Scope(project_id, "production"), {"A": "a"}, actor="t")
    both = Cipher([K2, K1])
    with database.transaction() as session:
        counts = rotate_all(session, both)
    assert (
        counts["env_vars"] == 1 and counts["secret_keys"] == 5
    )  # prod, staging, preview root, 2 branches
    with database.transaction() as session:
        assert rotate_all(session, both)["already_current"] == 6
    new = Cipher([K2])
    with database.read() as session:
        row = session.execute(select(EnvVar)).scalar_one()
        assert decrypt_value(new, row) == "a"
        project = get_project(session, "demo")
        env = find_environment(session, project, "production", None)
        assert new.decrypt(env.secret_key_encrypted).startswith("sk_")


def test_a_change_reaches_the_next_resolution_through_the_cache(
    database: Database, cipher: Cipher, project_id: int
) -> None:
    scope = Scope(project_id, "production")

    def resolved() -> dict[str, str]:
        with database.read() as session:
            env = find_environment(session, get_project(session, "demo"), "production", None)
            return {n: v.value for n, v in resolve_for_environment(session, cipher, env).items()}

    with database.transaction() as session:
        set_variables(session, cipher, scope, {"A": "1", "B": "2"}, actor="t")
    assert resolved() == resolved() == {"A": "1", "B": "2"}
    with database.transaction() as session:
        set_variables(session, cipher, scope, {"A": "changed"}, actor="t")
    assert resolved() == {"A": "changed", "B": "2"}
    with database.transaction() as session:
        unset_variable(session, scope, "B", actor="t")
    assert resolved() == {"A": "changed"}
