"""The GitHub App client: JWT, cached installation tokens, and the few reads Slipway makes.

:class:`GitHubClient` is the boundary the rest of Slipway (and the tests' fakes) sees.
:class:`AppClient` implements it with PyGithub: ``GithubIntegration`` signs a fresh
RS256 JWT (``iss`` = App id) per call; an installation token is created with
``POST /app/installations/{id}/access_tokens`` and cached per installation until
:data:`TOKEN_REFRESH_MARGIN` before the ``expires_at`` GitHub gave it (tokens live one
hour), so a clone never starts with a token about to expire.

PyGithub's own retries are turned off (``retry=None``): a rate limit or 5xx becomes our
:class:`~controller.errors.TemporaryError` with GitHub's delay
(:mod:`controller.github.errors`), and the job queue waits, not a worker thread.

:func:`make_client` chooses the identity: ``SLIPWAY_GITHUB_APP_ID`` plus
``SLIPWAY_GITHUB_PRIVATE_KEY`` (or ``_PATH``) win over the App the manifest flow stored;
neither means no client (``None``). A half-configured or unreadable identity is a
:class:`~controller.errors.PermanentError` whose message names the setting to fix.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from controller.errors import PermanentError
from controller.github.app import StoredApp
from controller.github.errors import map_github_error
from controller.github.metering import METER, metered
from controller.settings import Settings

if TYPE_CHECKING:
    import github

# PyGithub's debug line of a request can carry the answer's body (it does for text
# bodies), and an access-token answer holds the token: never below INFO.
logging.getLogger("github.Requester").setLevel(logging.INFO)

TOKEN_REFRESH_MARGIN = timedelta(minutes=5)
REQUEST_TIMEOUT = 15
PER_PAGE = 100
MAX_PAGES = 50


@dataclass(frozen=True)
class Answer:
    """A REST answer: ``status`` 2xx or 304 (``data`` None: unchanged since ``etag``)."""

    status: int
    data: Any
    etag: str | None = None


class GitHubClient(Protocol):
    def installation_token(self, installation_id: int) -> str: ...

    def request(
        self,
        installation_id: int,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        etag: str | None = None,
    ) -> Answer:
        """One REST call as the installation. A 4xx/5xx raises our own error
        (:func:`~controller.github.errors.map_github_error`); ``etag`` makes it conditional."""
        ...

    def app_info(self) -> dict[str, Any]: ...

    def installations(self) -> list[dict[str, Any]]: ...

    def installation_repositories(self, installation_id: int) -> list[dict[str, Any]]: ...

    # -- promotion gates (controller.gates.poll) --

    def list_deployments(
        self, repo: str, *, installation_id: int, sha: str, environment: str | None
    ) -> list[dict[str, Any]]: ...

    def list_deployment_statuses(
        self, repo: str, *, installation_id: int, deployment_id: int
    ) -> list[dict[str, Any]]: ...

    def list_check_runs(
        self, repo: str, *, installation_id: int, ref: str, check_name: str
    ) -> list[dict[str, Any]]: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


def token_client(api_url: str, token: str) -> github.Github:
    """PyGithub on ``api_url`` as ``token`` (an installation's or a user's), with no retries
    or pacing of its own (the job queue retries). PyGithub is imported on first use: it
    costs ~10 MB in each process, and a Slipway without a GitHub App never needs it."""
    import github

    return github.Github(
        auth=github.Auth.Token(token),
        base_url=api_url.rstrip("/"),
        timeout=REQUEST_TIMEOUT,
        retry=None,
        seconds_between_requests=None,
        seconds_between_writes=None,
    )


class AppClient:
    """A GitHub App (see the module docstring). Thread-safe: pipeline threads share one."""

    def __init__(
        self,
        *,
        app_id: int,
        private_key: str,
        api_url: str,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.app_id = app_id
        self.api_url = api_url.rstrip("/")
        self._clock = clock
        import github

        self._integration = github.GithubIntegration(
            auth=github.Auth.AppAuth(app_id, private_key),
            base_url=self.api_url,
            timeout=REQUEST_TIMEOUT,
            retry=None,
            seconds_between_requests=None,
            seconds_between_writes=None,
        )
        self._tokens: dict[int, tuple[str, datetime]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AppClient(app_id={self.app_id}, api_url={self.api_url!r})"

    def installation_token(self, installation_id: int) -> str:
        with self._lock:
            cached = self._tokens.get(installation_id)
            if cached is not None and self._clock() < cached[1] - TOKEN_REFRESH_MARGIN:
                return cached[0]
        doing = f"creating a token for installation {installation_id}"
        try:
            with metered("POST", installation="app", requester=self._integration.requester):
                granted = self._integration.get_access_token(installation_id)
            token, expires_at = granted.token, granted.expires_at
        except Exception as exc:
            raise map_github_error(exc, doing=doing) from None
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        with self._lock:
            self._tokens[installation_id] = (token, expires_at)
        return token

    def app_info(self) -> dict[str, Any]:
        try:
            with metered("GET", installation="app", requester=self._integration.requester):
                return dict(self._integration.get_app().raw_data)
        except Exception as exc:
            raise map_github_error(exc, doing=f"getting GitHub App {self.app_id}") from None

    def installations(self) -> list[dict[str, Any]]:
        """Page by page (not PyGithub's lazy list) so that each request is counted."""
        requester = self._integration.requester
        found: list[dict[str, Any]] = []
        try:
            for page in range(1, MAX_PAGES + 1):
                with metered("GET", installation="app", requester=requester):
                    _, data = requester.requestJsonAndCheck(
                        "GET", "/app/installations", parameters={"per_page": PER_PAGE, "page": page}
                    )
                batch = data if isinstance(data, list) else []
                found.extend(dict(i) for i in batch)
                if len(batch) < PER_PAGE:
                    break
        except Exception as exc:
            raise map_github_error(exc, doing="listing the App's installations") from None
        return found

    def _as_installation(self, installation_id: int) -> github.Github:
        return token_client(self.api_url, self.installation_token(installation_id))

    def request(
        self,
        installation_id: int,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        etag: str | None = None,
    ) -> Answer:
        doing = f"{method} {path}"
        client = self._as_installation(installation_id)
        headers = {"If-None-Match": etag} if etag else {}
        try:
            try:
                status, answer_headers, text = client.requester.requestJson(
                    method, path, parameters=params, headers=headers, input=body
                )
            except Exception:
                METER.record(method, None)
                raise
            METER.record(method, status, installation=str(installation_id), headers=answer_headers)
            lowered = {k.lower(): v for k, v in answer_headers.items()}
            data = _json_or_none(text)
            if status >= 400:
                import github

                raise github.GithubException(status, data, lowered)
        except Exception as exc:
            raise map_github_error(exc, doing=doing) from None
        finally:
            client.close()
        return Answer(status, None if status == 304 else data, lowered.get("etag"))

    def installation_repositories(self, installation_id: int) -> list[dict[str, Any]]:
        doing = f"listing the repositories of installation {installation_id}"
        client = self._as_installation(installation_id)
        found: list[dict[str, Any]] = []
        try:
            for page in range(1, MAX_PAGES + 1):
                with metered("GET", installation=str(installation_id), requester=client.requester):
                    _, data = client.requester.requestJsonAndCheck(
                        "GET",
                        "/installation/repositories",
                        parameters={"per_page": PER_PAGE, "page": page},
                    )
                batch = data.get("repositories", []) if isinstance(data, dict) else []
                found.extend(dict(repo) for repo in batch)
                if len(batch) < PER_PAGE:
                    break
        except Exception as exc:
            raise map_github_error(exc, doing=doing) from None
        finally:
            client.close()
        return found

    # -- promotion gates: what the resync asks about a waiting deployment's commit --

    def list_deployments(
        self, repo: str, *, installation_id: int, sha: str, environment: str | None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"sha": sha, "per_page": PER_PAGE}
        if environment is not None:
            params["environment"] = environment
        data = self._installation_get(
            installation_id,
            f"/repos/{repo}/deployments",
            params,
            doing=f"listing deployments of {sha[:12]} in {repo}",
        )
        return [dict(d) for d in data] if isinstance(data, list) else []

    def list_deployment_statuses(
        self, repo: str, *, installation_id: int, deployment_id: int
    ) -> list[dict[str, Any]]:
        data = self._installation_get(
            installation_id,
            f"/repos/{repo}/deployments/{int(deployment_id)}/statuses",
            {"per_page": PER_PAGE},
            doing=f"listing the statuses of deployment {deployment_id} in {repo}",
        )
        return [dict(d) for d in data] if isinstance(data, list) else []

    def list_check_runs(
        self, repo: str, *, installation_id: int, ref: str, check_name: str
    ) -> list[dict[str, Any]]:
        data = self._installation_get(
            installation_id,
            f"/repos/{repo}/commits/{ref}/check-runs",
            {"check_name": check_name, "per_page": PER_PAGE},
            doing=f"listing check runs {check_name!r} of {ref[:12]} in {repo}",
        )
        runs = data.get("check_runs", []) if isinstance(data, dict) else []
        return [dict(r) for r in runs]

    def _installation_get(
        self, installation_id: int, path: str, params: dict[str, Any], *, doing: str
    ) -> Any:
        client = self._as_installation(installation_id)
        try:
            with metered("GET", installation=str(installation_id), requester=client.requester):
                _, data = client.requester.requestJsonAndCheck("GET", path, parameters=params)
        except Exception as exc:
            raise map_github_error(exc, doing=doing) from None
        finally:
            client.close()
        return data


def _json_or_none(text: str) -> Any:
    """A proxy's HTML error page is no JSON: its status still decides what happens."""
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return None


def make_client(
    settings: Settings,
    *,
    stored_app: StoredApp | None = None,
    clock: Callable[[], datetime] = _utcnow,
) -> GitHubClient | None:
    """The App client for ``settings`` (which win) or ``stored_app``; ``None`` without one."""
    gh = settings.github
    key_given = gh.github_private_key is not None or gh.github_private_key_path is not None
    if gh.github_app_id is None and not key_given:
        if stored_app is None:
            return None
        app_id, private_key = stored_app.app_id, stored_app.private_key
        source = "the App stored by `slipway github setup`"
    else:
        if gh.github_app_id is None:
            raise PermanentError(
                "a GitHub App private key is set but SLIPWAY_GITHUB_APP_ID is not",
                hint="set SLIPWAY_GITHUB_APP_ID to the App's numeric id (its settings page)",
            )
        if not key_given:
            raise PermanentError(
                "SLIPWAY_GITHUB_APP_ID is set but no private key",
                hint="set SLIPWAY_GITHUB_PRIVATE_KEY or SLIPWAY_GITHUB_PRIVATE_KEY_PATH",
            )
        app_id = parse_app_id(gh.github_app_id)
        private_key = read_private_key(settings)
        source = "SLIPWAY_GITHUB_PRIVATE_KEY" + ("_PATH" if gh.github_private_key is None else "")
    check_private_key(private_key, source=source)
    return AppClient(app_id=app_id, private_key=private_key, api_url=gh.github_api_url, clock=clock)


def parse_app_id(value: str) -> int:
    text = value.strip()
    if not text.isdigit() or int(text) <= 0:
        raise PermanentError(
            f"SLIPWAY_GITHUB_APP_ID {text[:40]!r} is not a GitHub App id",
            hint="use the numeric App ID from the App's settings page, not its name or client id",
        )
    return int(text)


def read_private_key(settings: Settings) -> str:
    gh = settings.github
    if gh.github_private_key is not None:
        # A key passed through an env var often has its newlines escaped.
        return gh.github_private_key.get_secret_value().replace("\\n", "\n")
    assert gh.github_private_key_path is not None
    path = gh.github_private_key_path.expanduser()
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PermanentError(
            f"cannot read the GitHub App private key {path}: {type(exc).__name__}"
            f"{': ' + exc.strerror if isinstance(exc, OSError) and exc.strerror else ''}",
            hint="set SLIPWAY_GITHUB_PRIVATE_KEY_PATH to a readable .pem file GitHub generated",
        ) from None


def check_private_key(private_key: str, *, source: str) -> None:
    """A PEM RSA private key, or a :class:`PermanentError` naming ``source`` (never the key)."""
    try:
        key = load_pem_private_key(private_key.strip().encode(), password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PermanentError(
            f"{source} is not a PEM RSA private key",
            hint="use the .pem file from the App's settings page (Generate a private key)",
        )
