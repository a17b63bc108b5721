"""Sign in with GitHub as plain functions: the state cookie, the code exchange, PKCE, and
the server-side record of a session (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from controller.errors import PermanentError, TemporaryError
from controller.github.oauth import authorize_url, exchange_user_code, pkce_challenge
from controller.secretstore.crypto import Cipher
from controller.store.db import Database
from controller.store.tables import GitHubUserSession, utcnow
from controller.web.github_signin import STATE_TTL, issue_state, pkce_verifier, read_state
from controller.web.session import GITHUB, issue_cookie, read_session
from controller.web.signin_records import delete_signin, load_signin, store_signin

ADMIN = "slw_admin-token-for-tests"


def test_the_state_cookie_is_signed_expires_and_keeps_a_safe_next() -> None:
    cookie = issue_state(ADMIN, state="st4te", next_page="/projects/demo?x=1", now=1000.0)
    pending = read_state(ADMIN, cookie, now=1001.0)
    assert pending is not None and pending.state == "st4te"
    assert pending.next == "/projects/demo?x=1"
    assert read_state(ADMIN, cookie, now=1001.0 + STATE_TTL) is None  # expired
    assert read_state("rotated", cookie, now=1001.0) is None
    expires, _state, encoded, mac = cookie.split(".")
    assert read_state(ADMIN, f"{expires}.other.{encoded}.{mac}", now=1001.0) is None
    assert read_state(ADMIN, "garbage", now=1001.0) is None
    away = issue_state(ADMIN, state="s", next_page="//evil.example/", now=1000.0)
    assert read_state(ADMIN, away, now=1001.0).next == "/"  # type: ignore[union-attr]


def test_the_pkce_verifier_is_the_servers_own_and_fits_rfc_7636() -> None:
    verifier = pkce_verifier(ADMIN, "st4te")
    assert 43 <= len(verifier) <= 128 and verifier != pkce_verifier("rotated", "st4te")
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert pkce_challenge(verifier) == expected.decode()
    url = authorize_url(
        web="https://ghe.example.com",
        client_id="Iv1.x",
        redirect_uri="https://deploy.example.com/auth/github/callback",
        state="st4te",
        verifier=verifier,
    )
    assert url.startswith("https://ghe.example.com/login/oauth/authorize?client_id=Iv1.x&")
    assert "code_challenge_method=S256" in url and verifier not in url


def test_a_github_session_cookie_is_its_own_kind() -> None:
    cookie = issue_cookie(ADMIN, kind=GITHUB, nonce="sess1on", lifetime=60, now=1000.0)
    session = read_session(ADMIN, cookie, now=1001.0)
    assert session is not None and not session.is_admin and session.nonce == "sess1on"
    assert read_session(ADMIN, cookie, now=1061.0) is None
    body, _, mac = cookie.rpartition(".")
    assert read_session(ADMIN, f"v1{body[2:]}.{mac}", now=1001.0) is None  # no admin from it
    assert read_session(ADMIN, issue_cookie(ADMIN, kind="x9"), now=1001.0) is None


def _exchange(status: int, body: object) -> object:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)

    result = exchange_user_code(
        web="https://github.com",
        client_id="Iv1.x",
        client_secret="client-secret-value",
        code="c0de",
        verifier="v" * 64,
        redirect_uri="https://deploy.example.com/auth/github/callback",
        transport=httpx.MockTransport(answer),
    )
    assert str(seen[0].url) == "https://github.com/login/oauth/access_token"
    assert seen[0].headers["accept"] == "application/json"
    return result


def test_the_exchange_answers_the_token_and_classifies_refusals() -> None:
    granted = _exchange(200, {"access_token": "ghu_secret", "expires_in": 28800})
    assert granted.token == "ghu_secret" and granted.expires_in == 28800  # type: ignore[attr-defined]
    assert "ghu_secret" not in repr(granted)
    with pytest.raises(PermanentError, match="bad_verification_code") as refused:
        _exchange(200, {"error": "bad_verification_code", "error_description": "ghu_x"})
    assert "ghu_x" not in str(refused.value) and "client-secret" not in str(refused.value)
    with pytest.raises(TemporaryError):
        _exchange(502, {"message": "bad gateway"})
    with pytest.raises(PermanentError):
        _exchange(404, {"message": "Not Found"})


def test_a_signin_record_keeps_the_token_encrypted_bound_and_until_it_expires(
    database: Database,
) -> None:
    cipher = Cipher(["a passphrase from a secret manager, 32+ characters long"])
    with database.transaction() as session:
        store_signin(
            session,
            cipher,
            session_id="one",
            login="pusher",
            github_user_id=7,
            token="ghu_one-secret",
            lifetime=3600,
        )
        store_signin(
            session,
            cipher,
            session_id="two",
            login="other",
            github_user_id=8,
            token="ghu_two-secret",
            lifetime=3600,
        )
    with database.read() as session:
        found = load_signin(session, cipher, "one")
        assert found is not None and (found.login, found.token) == ("pusher", "ghu_one-secret")
        assert "ghu_one" not in repr(found)
        assert load_signin(session, cipher, "unknown") is None
        rows = session.execute(select(GitHubUserSession)).scalars().all()
        assert all(
            "ghu_" not in r.token_encrypted and r.id_hash not in ("one", "two") for r in rows
        )
    with database.transaction() as session:  # a ciphertext moved to another row is refused
        one, two = sorted(rows, key=lambda r: r.login != "pusher")
        session.execute(
            update(GitHubUserSession)
            .where(GitHubUserSession.id_hash == two.id_hash)
            .values(token_encrypted=one.token_encrypted)
        )
    with database.read() as session:
        assert load_signin(session, cipher, "two") is None
    with database.transaction() as session:
        delete_signin(session, "one")
        session.execute(update(GitHubUserSession).values(expires_at=utcnow() - timedelta(1)))
    with database.read() as session:
        assert load_signin(session, cipher, "one") is None
        assert load_signin(session, cipher, "two") is None  # expired
