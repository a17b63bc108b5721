"""Creating the GitHub App in one click (manifest flow), end to end against a real server.

GitHub's side is a small local HTTP server answering ``POST /app-manifests/{code}/conversions``
with the documented example of ``apps/create-from-manifest`` from ``@octokit/openapi``;
every request it gets is checked against that operation (path, method, no body).
"""

from __future__ import annotations

import functools
import html
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import cli
from support import payloads
from support.server import Server

OPENAPI = payloads.NODE_MODULES / "@octokit" / "openapi" / "generated" / "api.github.com.json"
CONVERSION = "/app-manifests/{code}/conversions"


@functools.cache
def conversion_operation() -> dict[str, Any]:
    spec = json.loads(OPENAPI.read_text())
    operation: dict[str, Any] = spec["paths"][CONVERSION]["post"]
    operation["example"] = spec["components"]["examples"]["integration-from-manifest"]["value"]
    return operation


class FakeGitHub:
    """GitHub's conversion endpoint: answers each code once, records every request."""

    def __init__(self) -> None:
        operation = conversion_operation()
        self.requests: list[tuple[str, str, bytes]] = []
        self.problems: list[str] = []
        self.used: set[str] = set()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                fake.requests.append(("POST", self.path, body))
                match = re.fullmatch(r"/app-manifests/([^/]+)/conversions", self.path)
                if match is None:
                    fake.problems.append(f"no operation for POST {self.path}")
                    return self._answer(404, {"message": "Not Found"})
                if body and "requestBody" not in operation:
                    fake.problems.append("the conversion takes no request body")
                if "json" not in (self.headers.get("accept") or ""):
                    fake.problems.append("no JSON Accept header")
                code = match.group(1)
                if code in fake.used:
                    return self._answer(404, {"message": "Not Found"})
                fake.used.add(code)
                self._answer(201, operation["example"])

            def _answer(self, status: int, document: Any) -> None:
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(30)


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    payloads.require_node_modules()
    if not OPENAPI.is_file():
        pytest.skip("@octokit/openapi is not installed (npm install --prefix tests/node)")
    fake = FakeGitHub()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def bare_server(tmp_path: Path, github: FakeGitHub) -> Iterator[Server]:
    """A server with no SLIPWAY_WEBHOOK_SECRET, talking to the fake GitHub."""
    srv = Server(tmp_path / "data", secret=None, extra_env={"SLIPWAY_GITHUB_API_URL": github.url})
    try:
        yield srv.start()
    finally:
        srv.close()


def setup_form(server: Server, url: str) -> tuple[str, dict[str, Any]]:
    page = server.client.get(url)
    assert page.status_code == 200, page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    action = re.search(r"action='([^']+)'", page.text)
    value = re.search(r"name='manifest' value='([^']+)'", page.text)
    assert action and value, page.text
    return html.unescape(action.group(1)), json.loads(html.unescape(value.group(1)))


def test_setup_creates_the_app_once_and_webhooks_verify_with_its_secret(
    bare_server: Server, github: FakeGitHub
) -> None:
    server = bare_server
    push = payloads.push(repo="octo-org/demo", before="0" * 40, after="a" * 40)
    assert server.deliver("push", push).status_code == 503  # no secret yet

    printed = cli(server, "github", "setup").stdout
    url = printed.strip().splitlines()[-1]
    assert url.startswith(f"{server.url}/github/setup?token=")

    action, manifest = setup_form(server, url)
    assert server.client.get(url).status_code == 403  # the set-up link works once
    target = urlsplit(action)
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{github.url}/settings/apps/new"
    state = parse_qs(target.query)["state"][0]
    assert manifest["hook_attributes"]["url"] == f"{server.url}/webhooks/github"
    assert manifest["redirect_url"] == f"{server.url}/github/callback"
    assert manifest["setup_url"] == f"{server.url}/github/installed"
    assert manifest["default_permissions"] == {
        "contents": "read",
        "metadata": "read",
        "deployments": "write",
        "checks": "write",
        "pull_requests": "write",
        "statuses": "read",
    }
    assert set(manifest["default_events"]) == {
        "push",
        "pull_request",
        "delete",
        "deployment_status",
        "check_run",
    }

    wrong = server.client.get("/github/callback", params={"code": "c0de", "state": "nope"})
    assert wrong.status_code == 403
    assert github.requests == []

    done = server.client.get("/github/callback", params={"code": "c0de", "state": state})
    assert done.status_code == 200, done.text
    assert "octoapp" in done.text
    assert len(github.requests) == 1 and github.problems == []
    again = server.client.get("/github/callback", params={"code": "c0de", "state": state})
    assert again.status_code == 403
    assert len(github.requests) == 1

    example = conversion_operation()["example"]
    signed = server.deliver("push", push, secret=example["webhook_secret"])
    assert signed.status_code == 202, signed.text
    assert server.deliver("push", push, secret="not-the-app-secret").status_code == 401

    status = json.loads(cli(server, "github", "status", "--json").stdout)
    assert status["app"]["id"] == example["id"] and status["app"]["slug"] == "octoapp"
    assert server.client.get("/github/installed").status_code == 200

    secrets = [example["pem"], example["client_secret"], example["webhook_secret"]]
    key_line = example["pem"].splitlines()[1]
    answers = json.dumps(status) + done.text
    server.stop()
    for secret in [*secrets, key_line]:
        assert secret not in server.log()
        assert secret not in answers
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in [*secrets, key_line]:
                assert secret.encode() not in data, path


def test_setup_for_an_organization_posts_to_its_settings(
    bare_server: Server, github: FakeGitHub
) -> None:
    url = bare_server.ok("POST", "/api/v1/github/setup", json={"org": "octo-org"})["url"]
    action, _ = setup_form(bare_server, url)
    assert urlsplit(action).path == "/organizations/octo-org/settings/apps/new"


def test_a_setup_link_needs_the_admin_token(bare_server: Server) -> None:
    answer = bare_server.client.post("/api/v1/github/setup", json={})
    assert answer.status_code == 401
    assert bare_server.client.get("/github/setup", params={"token": "guess"}).status_code == 403
