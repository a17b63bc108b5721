"""The App client against the validating fake GitHub: tokens, caching, errors, start-up."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.fake_github import Failure, FakeGitHub, generate_private_key

from controller.errors import PermanentError, TemporaryError
from controller.github.app import StoredApp, web_url
from controller.github.auth import git_auth_header
from controller.github.client import TOKEN_REFRESH_MARGIN, AppClient, make_client
from controller.github.errors import GitHubRejected
from controller.github.startup import check_app
from controller.settings import load_settings

INSTALLATION_ID = 5151
TOKENS = "apps/create-installation-access-token"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def client_for(fake: FakeGitHub, **kwargs: object) -> AppClient:
    return AppClient(app_id=fake.app_id, private_key=fake.private_key, api_url=fake.url, **kwargs)  # type: ignore[arg-type]


def test_reads_the_app_its_installations_and_repositories(fake_github: FakeGitHub) -> None:
    client = client_for(fake_github)
    assert client.app_info()["slug"] == "slipway-test"
    assert [i["id"] for i in client.installations()] == [INSTALLATION_ID]
    repos = client.installation_repositories(INSTALLATION_ID)
    assert [r["full_name"] for r in repos] == ["octo-org/private-tasks"]
    assert fake_github.operation_ids() == [
        "apps/get-authenticated",
        "apps/list-installations",
        TOKENS,
        "apps/list-repos-accessible-to-installation",
    ]


def test_tokens_are_cached_until_shortly_before_they_expire(fake_github: FakeGitHub) -> None:
    clock = Clock()
    client = client_for(fake_github, clock=clock)
    first = client.installation_token(INSTALLATION_ID)
    assert client.installation_token(INSTALLATION_ID) == first
    clock.now += fake_github.token_lifetime - TOKEN_REFRESH_MARGIN - timedelta(seconds=5)
    assert client.installation_token(INSTALLATION_ID) == first
    assert fake_github.operation_ids().count(TOKENS) == 1
    clock.now += timedelta(seconds=10)  # within the margin: a fresh token
    second = client.installation_token(INSTALLATION_ID)
    assert second != first
    assert fake_github.operation_ids().count(TOKENS) == 2
    assert {first, second} <= {i.token for i in fake_github.issued}


@pytest.mark.parametrize(
    ("failure", "kind", "delay"),
    [
        (Failure(500, {"message": "Server Error"}), TemporaryError, None),
        (Failure(502, {"message": "Bad Gateway"}), TemporaryError, None),
        (
            Failure(
                403,
                {"message": "You have exceeded a secondary rate limit. Please wait a few minutes"},
                {"Retry-After": "37"},
            ),
            TemporaryError,
            37.0,
        ),
        (
            Failure(403, {"message": "You have exceeded a secondary rate limit."}),
            TemporaryError,
            60.0,
        ),
        (Failure(429, {"message": "Too many requests"}, {"Retry-After": "5"}), TemporaryError, 5.0),
        (Failure(401, {"message": "Bad credentials"}), GitHubRejected, None),
        (Failure(404, {"message": "Not Found"}), GitHubRejected, None),
        (Failure(422, {"message": "Validation Failed"}), GitHubRejected, None),
    ],
)
def test_errors_are_ours(
    fake_github: FakeGitHub, failure: Failure, kind: type[Exception], delay: float | None
) -> None:
    fake_github.fail_next(TOKENS, failure)
    client = client_for(fake_github)
    with pytest.raises(kind) as caught:
        client.installation_token(INSTALLATION_ID)
    assert str(failure.status) in str(caught.value)
    assert "installation 5151" in str(caught.value)
    if isinstance(caught.value, TemporaryError):
        assert caught.value.delay == delay
    else:
        assert isinstance(caught.value, PermanentError)
        assert caught.value.status == failure.status  # type: ignore[attr-defined]
    assert client.installation_token(INSTALLATION_ID).startswith("ghs_")  # then it works


def test_a_primary_rate_limit_waits_until_the_reset(fake_github: FakeGitHub) -> None:
    reset = int(time.time()) + 120
    fake_github.fail_next(
        "apps/get-authenticated",
        Failure(
            403,
            {"message": "API rate limit exceeded for installation ID 5151."},
            {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)},
        ),
    )
    with pytest.raises(TemporaryError) as caught:
        client_for(fake_github).app_info()
    assert caught.value.delay is not None and 100 < caught.value.delay <= 121


def test_an_unreachable_github_is_temporary(tmp_path: Path) -> None:
    with FakeGitHub() as fake:
        url, key = fake.url, fake.private_key
    client = AppClient(app_id=1, private_key=key, api_url=url)
    with pytest.raises(TemporaryError, match="could not reach GitHub"):
        client.installation_token(1)


def test_the_fake_refuses_what_the_spec_does_not_allow(fake_github: FakeGitHub) -> None:
    client = client_for(fake_github)
    requester = client._integration.requester
    with pytest.raises(PermanentError):
        try:
            requester.requestJsonAndCheck(
                "POST",
                f"/app/installations/{INSTALLATION_ID}/access_tokens",
                input={"repository_ids": ["not-a-number"]},
            )
        except Exception as exc:
            from controller.github.errors import map_github_error

            raise map_github_error(exc, doing="testing") from exc
    with pytest.raises(Exception):  # noqa: B017
        requester.requestJsonAndCheck("GET", "/app/no-such-thing")
    assert len(fake_github.errors) == 2
    assert "repository_ids/0" in fake_github.errors[0]
    assert "no operation" in fake_github.errors[1]
    fake_github.errors.clear()


def settings_for(fake: FakeGitHub, **overrides: object):
    values: dict[str, object] = {
        "github_app_id": str(fake.app_id),
        "github_private_key": fake.private_key,
        "github_api_url": fake.url,
    }
    values.update(overrides)
    return load_settings(**values)


def stored(fake: FakeGitHub, app_id: int) -> StoredApp:
    return StoredApp(
        app_id=app_id,
        slug="stored",
        private_key=fake.private_key,
        webhook_secret="whsec",
        client_id="Iv1.x",
        client_secret="cs",
        html_url="https://github.com/apps/stored",
    )


def test_make_client_prefers_settings_to_the_stored_app(
    fake_github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("APP_ID", "PRIVATE_KEY", "PRIVATE_KEY_PATH", "API_URL"):
        monkeypatch.delenv(f"SLIPWAY_GITHUB_{name}", raising=False)
    assert make_client(load_settings()) is None
    from_stored = make_client(
        load_settings(github_api_url=fake_github.url), stored_app=stored(fake_github, 77)
    )
    assert isinstance(from_stored, AppClient) and from_stored.app_id == 77
    chosen = make_client(settings_for(fake_github), stored_app=stored(fake_github, 77))
    assert isinstance(chosen, AppClient) and chosen.app_id == fake_github.app_id
    assert "BEGIN" not in repr(chosen) and "BEGIN" not in repr(stored(fake_github, 77))


def test_start_up_names_the_app(fake_github: FakeGitHub) -> None:
    assert check_app(settings_for(fake_github)) == "GitHub App slipway-test (id 4242)"


def test_start_up_says_the_app_id_is_wrong(fake_github: FakeGitHub) -> None:
    with pytest.raises(PermanentError, match="GitHub knows no App with id 99"):
        check_app(settings_for(fake_github, github_app_id="99"))
    with pytest.raises(PermanentError, match="'my-app' is not a GitHub App id"):
        check_app(settings_for(fake_github, github_app_id="my-app"))


def test_start_up_says_the_key_is_not_the_apps(fake_github: FakeGitHub) -> None:
    other = generate_private_key()
    with pytest.raises(PermanentError, match="the private key does not belong to App 4242") as e:
        check_app(settings_for(fake_github, github_private_key=other))
    assert "PRIVATE KEY" not in str(e.value)


def test_start_up_says_the_key_is_unreadable(fake_github: FakeGitHub, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(PermanentError, match=r"cannot read the GitHub App private key .*missing"):
        check_app(
            settings_for(fake_github, github_private_key=None, github_private_key_path=missing)
        )
    garbage = tmp_path / "app.pem"
    garbage.write_text("ghp_notakey\n")
    with pytest.raises(PermanentError, match="_PATH is not a PEM RSA private key") as e:
        check_app(
            settings_for(fake_github, github_private_key=None, github_private_key_path=garbage)
        )
    assert "ghp_notakey" not in str(e.value)
    with pytest.raises(PermanentError, match="SLIPWAY_GITHUB_APP_ID is set but no private key"):
        check_app(settings_for(fake_github, github_private_key=None))
    assert fake_github.requests == []  # nothing was sent with a broken identity


def test_a_key_file_works_and_escaped_newlines_too(fake_github: FakeGitHub, tmp_path: Path) -> None:
    pem = tmp_path / "app.pem"
    pem.write_text(fake_github.private_key)
    assert check_app(
        settings_for(fake_github, github_private_key=None, github_private_key_path=pem)
    )
    escaped = fake_github.private_key.replace("\n", "\\n")
    assert check_app(settings_for(fake_github, github_private_key=escaped))


def test_web_url_of_an_api_url() -> None:
    assert web_url("https://api.github.com") == "https://github.com"
    assert web_url("https://ghe.example.com/api/v3/") == "https://ghe.example.com"
    assert web_url("http://127.0.0.1:9999") == "http://127.0.0.1:9999"


def test_the_git_header_is_basic_auth_of_x_access_token() -> None:
    assert git_auth_header("ghs_abc") == "Authorization: basic eC1hY2Nlc3MtdG9rZW46Z2hzX2FiYw=="


def test_no_token_reaches_a_log_line_even_at_debug(
    fake_github: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = client_for(fake_github)
    token = client.installation_token(INSTALLATION_ID)
    client.installation_repositories(INSTALLATION_ID)
    assert caplog.records  # PyGithub and urllib3 did log
    assert not [r for r in caplog.records if token in r.getMessage()]
