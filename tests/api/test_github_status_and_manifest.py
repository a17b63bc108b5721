"""The manifest's addresses (github.com and GHES), the code exchange's failures, and
``GET /api/v1/github/status`` over a fake at our ``GitHubClient`` boundary."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from controller.api.github import describe_status
from controller.errors import PermanentError, TemporaryError
from controller.github.app import StoredApp
from controller.github.manifest import exchange_code, manifest, new_app_url, web_url

APP = StoredApp(
    app_id=77,
    slug="slipway-test",
    private_key="PRIVATE-KEY-BODY",
    webhook_secret="whsec-value",
    client_id="Iv1.abc",
    client_secret="client-secret-value",
    html_url="https://github.com/apps/slipway-test",
)
SECRETS = (APP.private_key, APP.webhook_secret, APP.client_secret)


@pytest.mark.parametrize(
    ("api", "web"),
    [
        ("https://api.github.com", "https://github.com"),
        ("https://api.github.com/", "https://github.com"),
        ("https://ghe.example.com/api/v3", "https://ghe.example.com"),
        ("https://ghe.example.com/api/v3/", "https://ghe.example.com"),
    ],
)
def test_the_web_url_follows_the_api_url(api: str, web: str) -> None:
    assert web_url(api) == web
    assert new_app_url(api, None) == f"{web}/settings/apps/new"
    assert new_app_url(api, "octo-org") == f"{web}/organizations/octo-org/settings/apps/new"


def test_the_manifest_points_github_at_the_public_url() -> None:
    doc = manifest("https://slipway.example.com/")
    assert doc["url"] == "https://slipway.example.com"
    assert doc["hook_attributes"] == {
        "url": "https://slipway.example.com/webhooks/github",
        "active": True,
    }
    assert len(doc["name"]) <= 34
    assert "installation" not in doc["default_events"]  # GitHub refuses it there


def _transport(status: int, body: Any) -> httpx.MockTransport:
    return httpx.MockTransport(lambda _request: httpx.Response(status, json=body))


@pytest.mark.parametrize(
    ("status", "error"), [(404, PermanentError), (422, PermanentError), (502, TemporaryError)]
)
def test_a_failed_exchange_is_classified_and_quotes_nothing(
    status: int, error: type[Exception]
) -> None:
    body = {"message": "nope", "pem": APP.private_key, "client_secret": APP.client_secret}
    with pytest.raises(error) as caught:
        exchange_code("https://api.github.com", "c0de", transport=_transport(status, body))
    for secret in SECRETS:
        assert secret not in str(caught.value)


def test_an_unreachable_github_is_temporary() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TemporaryError, match="could not reach GitHub"):
        exchange_code("https://api.github.com", "c0de", transport=httpx.MockTransport(refuse))


class FakeGitHubClient:
    """Our ``GitHubClient`` protocol, answering what GitHub's API would."""

    def __init__(self, *, fail: Exception | None = None) -> None:
        self.fail = fail

    def installation_token(self, installation_id: int) -> str:
        raise AssertionError("status must not mint installation tokens")

    def app_info(self) -> dict[str, Any]:
        if self.fail:
            raise self.fail
        return {"slug": "slipway-test", "name": "Slipway test", "html_url": APP.html_url}

    def installations(self) -> list[dict[str, Any]]:
        return [
            {"id": 11, "account": {"login": "octo-org"}, "suspended_at": None},
            {"id": 12, "account": {"login": "someone"}, "suspended_at": "2026-01-01T00:00:00Z"},
        ]

    def installation_repositories(self, installation_id: int) -> list[dict[str, Any]]:
        names = {11: ["octo-org/demo", "octo-org/api"], 12: []}[installation_id]
        return [{"full_name": n} for n in names]


def _settings(app_id: str | None = None) -> Any:
    return SimpleNamespace(github=SimpleNamespace(github_app_id=app_id))


def test_status_shows_the_app_installations_and_repositories_but_no_secret() -> None:
    answer = describe_status(_settings(), APP, FakeGitHubClient())
    assert answer["app"]["id"] == 77 and answer["app"]["source"] == "manifest"
    assert answer["installations"] == [
        {
            "id": 11,
            "account": "octo-org",
            "suspended": False,
            "repositories": ["octo-org/api", "octo-org/demo"],
        },
        {"id": 12, "account": "someone", "suspended": True, "repositories": []},
    ]
    text = json.dumps(answer)
    for secret in SECRETS:
        assert secret not in text


def test_status_says_when_github_cannot_be_asked() -> None:
    client = FakeGitHubClient(fail=TemporaryError("GitHub answered 502"))
    answer = describe_status(_settings(), APP, client)
    assert answer["error"] == "GitHub answered 502" and answer["installations"] == []


def test_status_without_an_app() -> None:
    assert describe_status(_settings(), None, None) == {
        "app": None,
        "installations": [],
        "error": None,
    }
    assert describe_status(_settings("123"), None, None)["app"] == {
        "id": "123",
        "source": "settings",
    }
