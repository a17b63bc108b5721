"""PyGithub's and requests' failures as our own :class:`TemporaryError` / :class:`PermanentError`.

Temporary: 5xx, connection failures and timeouts, and rate limits. GitHub signals a
primary rate limit with ``403``/``429`` and ``X-RateLimit-Remaining: 0`` (wait until
``X-RateLimit-Reset``), a secondary one with ``403``/``429`` and a message saying
"secondary rate limit", usually with ``Retry-After`` (else GitHub says to wait at least a
minute). ``Retry-After`` wins when present. Permanent: everything else, notably ``401``
(bad credentials: the App id or key), ``404`` and ``422``.

Messages hold GitHub's own ``message`` (never a token: GitHub does not echo credentials)
cut to 200 characters, and what Slipway was doing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from controller.errors import PermanentError, SlipwayError, TemporaryError

SECONDARY_RATE_LIMIT_DELAY = 60.0
MAX_RATE_LIMIT_DELAY = 3600.0


class GitHubRejected(PermanentError):
    """GitHub answered a 4xx that retrying cannot fix; ``status`` is its HTTP status."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def map_github_error(
    exc: Exception, *, doing: str, now: Callable[[], float] = time.time
) -> SlipwayError:
    """Return our error for ``exc``, raised while ``doing`` (e.g. "getting the App")."""
    if isinstance(exc, SlipwayError):
        return exc
    import github  # on first use (see controller.github.client.token_client)
    import requests

    if isinstance(exc, github.GithubException):
        return _from_status(exc.status, exc.data, exc.headers or {}, doing=doing, now=now)
    if isinstance(exc, requests.Timeout):
        return TemporaryError(f"GitHub did not answer in time while {doing}")
    if isinstance(exc, requests.RequestException):
        return TemporaryError(f"could not reach GitHub while {doing}: {type(exc).__name__}")
    if isinstance(exc, (ValueError, TypeError)) and "key" in str(exc).lower():
        return PermanentError(
            f"the GitHub App's private key cannot sign a token while {doing}",
            hint="set SLIPWAY_GITHUB_PRIVATE_KEY(_PATH) to the App's PEM private key",
        )
    return PermanentError(f"unexpected failure while {doing}: {type(exc).__name__}")


def _from_status(
    status: int,
    data: Any,
    headers: Mapping[str, Any],
    *,
    doing: str,
    now: Callable[[], float],
) -> SlipwayError:
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    message = data.get("message") if isinstance(data, dict) else None
    said = f": {str(message)[:200]}" if message else ""
    what = f"GitHub answered {status} while {doing}{said}"
    if status in (403, 429):
        delay = _rate_limit_delay(status, lowered, str(message or ""), now=now)
        if delay is not None:
            return TemporaryError(f"{what} (rate limited)", delay=delay)
    if status >= 500 or status == 408:
        return TemporaryError(what)
    if status == 401:
        return GitHubRejected(
            what,
            status=status,
            hint="check SLIPWAY_GITHUB_APP_ID and that the private key is the App's own",
        )
    if status == 404:
        return GitHubRejected(
            what,
            status=status,
            hint="check the App id, and that the App is installed where it is used",
        )
    return GitHubRejected(what, status=status)


def _rate_limit_delay(
    status: int, headers: Mapping[str, str], message: str, *, now: Callable[[], float]
) -> float | None:
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 1.0), MAX_RATE_LIMIT_DELAY)
        except ValueError:
            pass
    if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
        try:
            reset = float(headers["x-ratelimit-reset"])
        except ValueError:
            return SECONDARY_RATE_LIMIT_DELAY
        return min(max(reset - now(), 1.0), MAX_RATE_LIMIT_DELAY)
    if "rate limit" in message.lower() or status == 429:
        return SECONDARY_RATE_LIMIT_DELAY
    return None
