"""Issue 13: pages for people over a real server — sign-in, what they show, CSRF."""

from __future__ import annotations

import re

import httpx
import pytest
from conftest import PLAIN_VALUE, SECRET_VALUE, Site, csrf_of

pytestmark = pytest.mark.node


def test_home_asks_for_the_token_and_shows_no_data_before(site: Site) -> None:
    client = site.server.client
    page = client.get("/")
    assert page.status_code == 200
    assert 'name="token"' in page.text and 'type="password"' in page.text
    assert "demo" not in page.text and "octo-org" not in page.text
    for path in ("/projects/demo", f"/deployments/{site.first['id']}", f"/runs/{site.run['id']}"):
        response = client.get(path)
        assert response.status_code == 303 and response.headers["location"].startswith("/?next=")
    assert client.get(f"/deployments/{site.first['id']}/log").status_code == 401


def test_a_wrong_token_gets_no_session(site: Site) -> None:
    response = site.server.client.post(
        "/login", data={"token": "nope"}, headers={"Origin": site.server.url}
    )
    assert response.status_code == 401
    assert "set-cookie" not in response.headers


def test_session_cookie_is_httponly_samesite_and_not_the_token(site: Site) -> None:
    with httpx.Client(base_url=site.server.url, trust_env=False) as client:
        response = client.post(
            "/login", data={"token": site.server.token}, headers={"Origin": site.server.url}
        )
        assert response.status_code == 303
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("slipway_session=")
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert "Secure" not in cookie  # SLIPWAY_PUBLIC_URL is http here
        assert site.server.token not in cookie
        value = client.cookies["slipway_session"]
        assert value != site.server.token and site.server.token not in value


def test_project_page_shows_versions_statuses_and_preview_branches(
    site: Site, browser_client: httpx.Client
) -> None:
    page = browser_client.get("/").text
    assert 'href="/projects/demo"' in page
    html = browser_client.get("/projects/demo").text
    assert site.second["version"] in html
    assert "feature/pages" in html and site.preview["version"] in html
    assert site.second["id"] in html  # last deployment of production
    assert "status-deployed" in html and "status-active" in html
    assert ">Rollback</button>" in html and ">Promote</button>" in html
    # Rollback only where an older deployed version exists (the preview has one version)
    assert 'aria-label="Roll back production"' in html
    assert 'aria-label="Roll back feature/pages"' not in html


def test_deployment_page_has_the_log_and_step_durations(
    site: Site, browser_client: httpx.Client
) -> None:
    html = browser_client.get(f"/deployments/{site.second['id']}").text
    assert f"Version {site.second['version']} deployed" in html
    for step in ("fetch", "checkout", "install", "build", "version", "health", "promote"):
        assert f'data-step="{step}"' in html
    assert html.count('class="step-duration">—') == 0
    assert site.second["sha"] in html
    follow = browser_client.get(f"/deployments/{site.second['id']}/log", params={"after": 0})
    body = follow.json()
    assert body["active"] is False and body["lines"]
    last = body["lines"][-1]["id"]
    assert (
        browser_client.get(f"/deployments/{site.second['id']}/log", params={"after": last}).json()[
            "lines"
        ]
        == []
    )


def test_environment_page_lists_versions_tasks_and_runs(
    site: Site, browser_client: httpx.Client
) -> None:
    html = browser_client.get("/projects/demo/environments/production").text
    assert site.first["version"] in html and site.second["version"] in html
    assert "<code>hello</code>" in html and "<code>db:migrate</code>" in html
    assert site.run["id"] in html
    assert 'id="envvars"' in html
    run = browser_client.get(f"/runs/{site.run['id']}").text
    assert "status-completed" in run and "hello v2" in run
    preview = browser_client.get(
        "/projects/demo/environments/preview", params={"branch": "feature/pages"}
    ).text
    assert site.preview["version"] in preview


def test_rollback_from_the_page_changes_the_current_version(
    site: Site, browser_client: httpx.Client
) -> None:
    html = browser_client.get("/projects/demo").text
    response = browser_client.post(
        "/projects/demo/environments/production/rollback",
        data={"csrf": csrf_of(html), "branch": ""},
        headers={"Origin": site.server.url},
    )
    assert response.status_code == 303, response.text
    assert site.current() == site.first["version"]
    again = browser_client.post(
        "/projects/demo/environments/production/rollback",
        data={"csrf": csrf_of(html)},
        headers={"Origin": site.server.url},
    )
    assert again.status_code == 409 and "no version before" in again.text


@pytest.mark.parametrize(
    "how",
    ["no csrf", "wrong csrf", "foreign origin", "foreign referer", "no session"],
)
def test_forged_posts_are_refused_and_change_nothing(
    site: Site, browser_client: httpx.Client, how: str
) -> None:
    csrf = csrf_of(browser_client.get("/projects/demo").text)
    data = {"csrf": csrf}
    headers = {"Origin": site.server.url}
    client = browser_client
    if how == "no csrf":
        data = {}
    elif how == "wrong csrf":
        data = {"csrf": csrf[:-2] + "00"}
    elif how == "foreign origin":
        headers = {"Origin": "https://evil.example"}
    elif how == "foreign referer":
        headers = {"Referer": "https://evil.example/attack.html"}
    else:
        client = site.server.client  # no cookie at all
    before = site.current()
    for action in ("rollback", "promote"):
        response = client.post(
            f"/projects/demo/environments/production/{action}",
            data={**data, "version": site.first["version"]},
            headers=headers,
        )
        assert response.status_code == 403, response.text
    assert site.current() == before == site.second["version"]


def test_a_session_from_another_admin_token_is_refused(site: Site) -> None:
    from controller.web.session import issue_cookie

    with httpx.Client(base_url=site.server.url, trust_env=False) as client:
        client.cookies.set("slipway_session", issue_cookie("some-other-token"))
        assert client.get("/projects/demo").status_code == 303


def _envvar_rows(html: str) -> dict[str, str]:
    return dict(re.findall(r'<tr data-envvar="([A-Z_]+)" data-layer="(\w+)"', html))


def test_environment_page_lists_env_var_names_not_values(
    site: Site, browser_client: httpx.Client
) -> None:
    html = browser_client.get("/projects/demo/environments/production").text
    assert _envvar_rows(html) == {"API_TOKEN": "own", "LOG_LEVEL": "own"}
    row = html[html.index('data-envvar="API_TOKEN"') :].split("</tr>")[0]
    assert "<td>secret</td>" in row and "admin token" in row and "<time" in row
    assert "<td>set</td>" in row
    assert SECRET_VALUE not in html and PLAIN_VALUE not in html


def test_preview_branch_page_shows_inherited_variables_and_its_overrides(
    site: Site, browser_client: httpx.Client
) -> None:
    html = browser_client.get(
        "/projects/demo/environments/preview", params={"branch": "feature/pages"}
    ).text
    found = re.findall(r'<tr data-envvar="([A-Z_]+)" data-layer="(\w+)"( class="muted")?', html)
    assert found == [
        ("DB_URL", "inherited", ' class="muted"'),
        ("DB_URL", "override", ""),
        ("SHARED_URL", "inherited", ""),
    ]
    assert "overrides preview-wide" in html and "(overridden)" in html
    assert SECRET_VALUE not in html and PLAIN_VALUE not in html


def test_no_secret_in_any_page(site: Site, browser_client: httpx.Client) -> None:
    secrets = [
        site.server.token,
        "test-secret",
        site.server.secret_key("demo", "production"),
        SECRET_VALUE,
        PLAIN_VALUE,
    ]
    paths = [
        "/",
        "/projects/demo",
        "/projects/demo/environments/production",
        "/projects/demo/environments/preview?branch=feature%2Fpages",
        f"/deployments/{site.second['id']}",
        f"/deployments/{site.second['id']}/log",
        f"/runs/{site.run['id']}",
    ]
    for path in paths:
        text = browser_client.get(path).text
        for secret in secrets:
            assert secret not in text, path


def test_forms_never_redirect_off_site(site: Site, browser_client: httpx.Client) -> None:
    html = browser_client.get("/projects/demo").text
    response = browser_client.post(
        "/projects/demo/environments/production/promote",
        data={"csrf": csrf_of(html), "version": site.second["version"], "back": "//evil.example/x"},
        headers={"Origin": site.server.url},
    )
    assert response.status_code == 303 and response.headers["location"] == "/projects/demo"
    login = site.server.client.post(
        "/login",
        data={"token": site.server.token, "next": "https://evil.example/"},
        headers={"Origin": site.server.url},
    )
    assert login.status_code == 303 and login.headers["location"] == "/"


def test_sign_out_needs_the_csrf_token_and_ends_the_session_here(site: Site) -> None:
    client = site.login()
    try:
        html = client.get("/").text
        assert client.post("/logout", headers={"Origin": site.server.url}).status_code == 403
        out = client.post(
            "/logout", data={"csrf": csrf_of(html)}, headers={"Origin": site.server.url}
        )
        assert out.status_code == 303
        assert 'name="token"' in client.get("/").text
    finally:
        client.close()
