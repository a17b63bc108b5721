"""Sign-in cookies, CSRF tokens and the log context, as plain functions (no server)."""

from __future__ import annotations

import io
import json
import logging
import threading

from starlette.requests import Request
from starlette.responses import Response

from controller.logs import (
    ContextFilter,
    JsonFormatter,
    bind_log_context,
    current_log_context,
    log_context,
)
from controller.web.session import (
    LIFETIME,
    csrf_ok,
    issue_cookie,
    read_session,
    same_origin,
    set_session_cookie,
)

TOKEN = "slw_admin-token-for-tests"


def test_cookie_roundtrip_tamper_expiry_and_rotation() -> None:
    cookie = issue_cookie(TOKEN, now=1000.0)
    assert TOKEN not in cookie
    session = read_session(TOKEN, cookie, now=1001.0)
    assert session is not None and session.expires == 1000 + LIFETIME
    assert read_session(TOKEN, cookie, now=1001.0 + LIFETIME) is None  # expired
    assert read_session("rotated-token", cookie, now=1001.0) is None  # token rotated
    body, _, mac = cookie.rpartition(".")
    later = body.replace(body.split(".")[1], str(10**12))
    assert read_session(TOKEN, f"{later}.{mac}", now=1001.0) is None  # lifetime extended
    assert read_session(TOKEN, "garbage", now=1001.0) is None


def test_csrf_token_belongs_to_its_session() -> None:
    one = read_session(TOKEN, issue_cookie(TOKEN))
    two = read_session(TOKEN, issue_cookie(TOKEN))
    assert one is not None and two is not None
    assert csrf_ok(one, one.csrf)
    assert not csrf_ok(one, two.csrf)
    assert not csrf_ok(one, "")
    assert not csrf_ok(None, one.csrf)


def test_cookie_is_secure_when_the_public_url_is_https() -> None:
    for url, secure in (("https://deploy.example.com", True), ("http://127.0.0.1:8080", False)):
        response = Response()
        set_session_cookie(response, "v", public_url=url)
        header = response.headers["set-cookie"]
        assert "HttpOnly" in header and "SameSite=lax" in header
        assert ("Secure" in header) is secure


def _request(headers: dict[str, str]) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "server": ("127.0.0.1", 8080),
        "path": "/login",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"host", b"127.0.0.1:8080")],
    }
    return Request(scope)


def test_same_origin_accepts_this_server_and_the_public_url_only() -> None:
    public = "https://deploy.example.com"
    assert same_origin(_request({"Origin": "http://127.0.0.1:8080"}), public_url=public)
    assert same_origin(_request({"Origin": public}), public_url=public)
    assert same_origin(_request({"Referer": public + "/projects/x"}), public_url=public)
    assert same_origin(_request({}), public_url=public)  # no browser: the CSRF token decides
    assert not same_origin(_request({"Origin": "https://evil.example"}), public_url=public)
    assert not same_origin(_request({"Origin": "null"}), public_url=public)
    assert not same_origin(
        _request({"Referer": "https://deploy.example.com.evil.example/"}), public_url=public
    )


def _json_line(message: str) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter("web"))
    logger = logging.getLogger("slipway-test-json")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning(message)
    finally:
        logger.removeHandler(handler)
    return dict(json.loads(stream.getvalue()))


def test_json_lines_carry_the_bound_context_and_bind_replaces_it() -> None:
    bind_log_context(deployment="dep_1", project="demo", environment="production")
    line = _json_line("one")
    assert line["message"] == "one" and line["level"] == "warning" and line["process"] == "web"
    assert (line["deployment"], line["project"], line["environment"]) == (
        "dep_1",
        "demo",
        "production",
    )
    bind_log_context(delivery="d-2")
    line = _json_line("two")
    assert line["delivery"] == "d-2" and "deployment" not in line
    with log_context(project="other"):
        assert current_log_context() == {"delivery": "d-2", "project": "other"}
    assert current_log_context() == {"delivery": "d-2"}
    bind_log_context()


def test_the_log_context_stays_in_its_thread() -> None:
    bind_log_context(deployment="dep_main")
    seen: list[dict[str, str]] = []
    thread = threading.Thread(target=lambda: seen.append(current_log_context()))
    thread.start()
    thread.join(30)
    assert seen == [{}]
    assert current_log_context() == {"deployment": "dep_main"}
    bind_log_context()
