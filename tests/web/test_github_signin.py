"""Issue 13: Sign in with GitHub, against a real ``slipway serve`` and the fake GitHub.

The App comes from the real manifest flow (the fake answers the conversion with its own
OAuth client). A "browser" (httpx, following no redirect by itself) goes to
``/auth/github/login``, to the fake's authorize page (signed in there as
``FakeGitHub.browser_login``) and back to ``/auth/github/callback``. The fake validates
the REST calls Slipway makes with the person's token (``GET /user``, ``GET
/repos/{owner}/{repo}``) against GitHub's spec, and the web flow's by hand.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import ARTIFACTS, REPO, csrf_of, deploy
from support import payloads
from support.fake_github import SPEC_PATH, FakeGitHub
from support.repos import TaskRepo
from support.server import Server
from test_browser import NODE_DIR, _require_browser

from controller.github.oauth import PushAccess

pytestmark = pytest.mark.node


@dataclass
class GitHubSite:
    server: Server
    github: FakeGitHub
    versions: list[dict[str, Any]]
    run: dict[str, Any]

    def current(self) -> str | None:
        envs = self.server.ok("GET", "/api/v1/projects/demo/environments")
        return next(e["current_version"] for e in envs if e["name"] == "production")


def _store_app_by_the_manifest_flow(server: Server) -> None:
    url = server.ok("POST", "/api/v1/github/setup", json={})["url"]
    page = server.client.get(url)
    assert page.status_code == 200, page.text
    action = page.text.split("action='", 1)[1].split("'", 1)[0].replace("&amp;", "&")
    state = parse_qs(urlsplit(action).query)["state"][0]
    done = server.client.get("/github/callback", params={"code": "c0de", "state": state})
    assert done.status_code == 200, done.text


@pytest.fixture(scope="module")
def gh_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHubSite]:
    if not SPEC_PATH.exists():
        pytest.fail(f"{SPEC_PATH} missing: run `npm ci` in tests/node")
    payloads.require_node_modules()
    tmp = tmp_path_factory.mktemp("github-signin")
    repo = TaskRepo(tmp / "repo")
    with FakeGitHub() as github:
        github.add_user("pusher", push=[REPO.upper()])  # GitHub's names ignore case
        github.add_user("reader", read=[REPO])
        server = Server(
            tmp / "data", extra_env={"SLIPWAY_GITHUB_API_URL": github.url}, log_level="debug"
        )
        server.start()
        try:
            server.create_project("demo", repo=REPO, clone_url=str(repo.path))
            server.create_project("other", repo="octo-org/unrelated", clone_url=str(repo.path))
            before, versions = "0" * 40, []
            for message in ("hello v1", "hello v2"):
                sha = repo.head() if not versions else repo.set_message(message)
                push = payloads.push(repo=REPO, ref="refs/heads/main", before=before, after=sha)
                assert server.deliver("push", push).status_code == 202
                versions.append(deploy(server, sha=sha))
                before = sha
            ran = server.trigger("demo", "production", "hello", {"n": 1})
            assert ran.status_code == 200, ran.text
            _store_app_by_the_manifest_flow(server)
            yield GitHubSite(server=server, github=github, versions=versions, run=ran.json())
        finally:
            server.close()
        assert github.errors == [], "requests GitHub would refuse:\n" + "\n".join(github.errors)


def _browser(site: GitHubSite) -> httpx.Client:
    return httpx.Client(base_url=site.server.url, timeout=60, trust_env=False)


@contextmanager
def sign_in_with_github(site: GitHubSite, login: str) -> Iterator[httpx.Client]:
    """A browser signed in to Slipway through GitHub as ``login``."""
    with _browser(site) as browser:
        started = browser.get("/auth/github/login", params={"next": "/"})
        assert started.status_code == 303, started.text
        authorize = started.headers["location"]
        assert authorize.startswith(f"{site.github.url}/login/oauth/authorize?")
        site.github.browser_login = login
        with httpx.Client(trust_env=False, timeout=60) as on_github:
            back = on_github.get(authorize)
        assert back.status_code == 302, back.text
        callback = back.headers["location"]
        assert callback.startswith(f"{site.server.url}/auth/github/callback?")
        signed_in = browser.get(callback)
        assert signed_in.status_code == 303, signed_in.text
        assert signed_in.headers["location"] == "/"
        yield browser


def test_the_login_page_offers_github_and_the_cookie_holds_no_token(gh_site: GitHubSite) -> None:
    page = gh_site.server.client.get("/")
    assert "Sign in with GitHub" in page.text and 'href="/auth/github/login?next=' in page.text
    with sign_in_with_github(gh_site, "pusher") as browser:
        cookie = browser.cookies["slipway_session"]
        assert cookie.startswith("g1.")
        tokens = list(gh_site.github.user_tokens)
        assert tokens and all(token not in cookie for token in tokens)
        page = browser.get("/")
        assert "Signed in with GitHub as <b>pusher</b>" in page.text
        for token in tokens:
            assert token not in page.text
    log = gh_site.server.log()
    for token in [*tokens, gh_site.github.client_secret]:
        assert token not in log
    for path in gh_site.server.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for token in tokens:
                assert token.encode() not in data, path


def test_a_user_with_push_access_sees_the_project_and_can_promote(gh_site: GitHubSite) -> None:
    first, second = gh_site.versions
    with sign_in_with_github(gh_site, "pusher") as browser:
        home = browser.get("/")
        assert 'href="/projects/demo"' in home.text
        assert 'href="/projects/other"' not in home.text  # octo-org/unrelated: no access
        assert browser.get("/projects/other").status_code == 404
        assert browser.get("/projects/demo").status_code == 200
        assert browser.get(f"/deployments/{first['id']}").status_code == 200
        assert browser.get(f"/deployments/{first['id']}/log").status_code == 200
        assert browser.get(f"/runs/{gh_site.run['id']}").status_code == 200
        page = browser.get("/projects/demo/environments/production")
        assert page.status_code == 200
        try:
            promoted = browser.post(
                "/projects/demo/environments/production/promote",
                data={"csrf": csrf_of(page.text), "version": first["version"]},
                headers={"Origin": gh_site.server.url},
            )
            assert promoted.status_code == 303, promoted.text
            assert gh_site.current() == first["version"]
        finally:
            gh_site.server.ok(
                "POST",
                "/api/v1/projects/demo/environments/production/promote",
                json={"version": second["version"]},
            )


def test_a_user_without_push_access_sees_nothing_and_cannot_promote(gh_site: GitHubSite) -> None:
    first, second = gh_site.versions
    assert gh_site.current() == second["version"]
    with sign_in_with_github(gh_site, "reader") as browser:
        home = browser.get("/")
        assert home.status_code == 200
        assert "/projects/demo" not in home.text and REPO not in home.text
        assert browser.get("/projects/demo").status_code == 404
        assert browser.get("/projects/demo/environments/production").status_code == 404
        assert browser.get(f"/deployments/{first['id']}").status_code == 404
        assert browser.get(f"/deployments/{first['id']}/log").status_code == 404
        assert browser.get(f"/runs/{gh_site.run['id']}").status_code == 404
        refused = browser.post(
            "/projects/demo/environments/production/promote",
            data={"csrf": csrf_of(home.text), "version": first["version"]},
            headers={"Origin": gh_site.server.url},
        )
        assert refused.status_code == 404
        refused = browser.post(
            "/projects/demo/environments/production/rollback",
            data={"csrf": csrf_of(home.text)},
            headers={"Origin": gh_site.server.url},
        )
        assert refused.status_code == 404
    assert gh_site.current() == second["version"]


def test_a_forged_or_foreign_state_is_refused(gh_site: GitHubSite) -> None:
    exchanged = gh_site.github.operation_ids().count("oauth/access_token")
    with _browser(gh_site) as browser:
        started = browser.get("/auth/github/login")
        state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
        forged = browser.get("/auth/github/callback", params={"code": "x", "state": "forged"})
        assert forged.status_code == 403
        assert "slipway_session" not in browser.cookies
    with _browser(gh_site) as other:  # the right state, but not this browser's sign-in
        foreign = other.get("/auth/github/callback", params={"code": "x", "state": state})
        assert foreign.status_code == 403
        assert "slipway_session" not in other.cookies
    assert gh_site.github.operation_ids().count("oauth/access_token") == exchanged


def test_a_sign_in_declined_on_github_signs_no_one_in(gh_site: GitHubSite) -> None:
    with _browser(gh_site) as browser:
        started = browser.get("/auth/github/login")
        state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
        declined = browser.get(
            "/auth/github/callback", params={"error": "access_denied", "state": state}
        )
        assert declined.status_code == 401
        assert "GitHub did not sign you in" in declined.text
        assert "slipway_session" not in browser.cookies


def test_signing_out_ends_the_session_on_the_server(gh_site: GitHubSite) -> None:
    with sign_in_with_github(gh_site, "pusher") as browser:
        cookie = browser.cookies["slipway_session"]
        home = browser.get("/")
        out = browser.post(
            "/logout", data={"csrf": csrf_of(home.text)}, headers={"Origin": gh_site.server.url}
        )
        assert out.status_code == 303
    with _browser(gh_site) as replay:
        replay.cookies.set("slipway_session", cookie)
        assert 'name="token"' in replay.get("/").text  # the old cookie signs no one in
        assert replay.get("/projects/demo").status_code == 303


def test_a_token_github_no_longer_accepts_ends_the_session(gh_site: GitHubSite) -> None:
    with sign_in_with_github(gh_site, "pusher") as browser:
        cookie = browser.cookies["slipway_session"]
        token = list(gh_site.github.user_tokens)[-1]
        del gh_site.github.user_tokens[token]  # revoked on GitHub; nothing cached yet
        page = browser.get("/projects/demo")
        assert page.status_code == 303 and page.headers["location"] == "/"
        assert "slipway_session" not in browser.cookies
    with _browser(gh_site) as replay:
        replay.cookies.set("slipway_session", cookie)
        assert 'name="token"' in replay.get("/").text


def test_push_access_is_asked_again_after_a_minute() -> None:
    answers = {"octo-org/demo": True}
    calls: list[str] = []
    now = [1000.0]

    def fetch(_api: str, _token: str, repo: str) -> bool:
        calls.append(repo)
        return answers[repo.lower()]

    cache = PushAccess(api_url=lambda: "http://unused", fetch=fetch, clock=lambda: now[0])
    assert cache.can_push("ghu_t", "Octo-Org/Demo") and cache.can_push("ghu_t", "octo-org/demo")
    assert calls == ["Octo-Org/Demo"]
    answers["octo-org/demo"] = False
    now[0] += 59
    assert cache.can_push("ghu_t", "octo-org/demo")
    now[0] += 2
    assert not cache.can_push("ghu_t", "octo-org/demo")
    assert len(calls) == 2


def test_the_manifest_asks_github_for_the_signin_callback() -> None:
    from controller.github.manifest import manifest

    assert manifest("https://deploy.example.com")["callback_urls"] == [
        "https://deploy.example.com/auth/github/callback"
    ]


def test_sign_in_with_github_in_chromium(gh_site: GitHubSite) -> None:
    _require_browser()
    ARTIFACTS.mkdir(exist_ok=True)
    gh_site.github.browser_login = "pusher"
    result = subprocess.run(
        [
            "node",
            str(Path(__file__).with_name("github_signin.mjs")),
            gh_site.server.url,
            str(ARTIFACTS),
        ],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["problems"] == [], report
    seen = report["seen"]
    assert seen["signedInAs"] is True
    assert seen["projects"] == ["demo"]
    assert seen["cookie"] == {"httpOnly": True, "sameSite": "Lax", "kind": "g1."}
    assert seen["stateCookieLeft"] is False
    assert seen["promoteOffered"] is True
    for name in ("github-projects", "github-project"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 1000
