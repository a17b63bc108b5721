"""Running git for the git source: the one boundary where GitPython is imported.

Every git command runs through :func:`run_git`: no prompt, only the ``file``, ``git``,
``http(s)`` and ``ssh`` protocols (no ``ext::`` from a clone URL), literal pathspecs, and
extra configuration (``http.extraHeader`` with a token) passed through
``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` of that one command: the
same as ``git -c``, but not visible in ``ps`` and never part of a command line that could
end up in an exception. git's stderr is scrubbed (URL userinfo, the header and its parts)
before it reaches :class:`GitFailed`, so a cause chained to our errors holds only scrubbed
text.

Names: :func:`parse_remote` turns a clone URL into a :class:`Remote` whose ``key`` (a hash
of the URL without userinfo) names its mirror and whose ``name`` is for messages; neither
ever holds a credential. The ``check_*`` functions refuse a sha, ref or tree path before
any git command sees it.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from controller.errors import PermanentError, SourceNotFound, SourceUnavailable

SHA = re.compile(r"[0-9a-f]{7,40}")
_REF = re.compile(r"refs/[A-Za-z0-9_./-]+")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")
MISSING_REF = re.compile(
    r"not our ref|couldn't find remote ref|no such remote ref|unadvertised object", re.I
)
NO_ACCESS = re.compile(
    r"repository not found|repository '[^']*' not found|does not appear to be a git repository"
    r"|authentication failed|could not read (username|password)|permission denied \(publickey"
    r"|returned error: (401|403|404)",
    re.I,
)
_ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
_MAX_DETAIL = 4000


class GitFailed(Exception):
    """A git command exited non-zero; ``detail`` (its stderr) is already scrubbed."""

    def __init__(self, detail: str, *, timed_out: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.timed_out = timed_out


def run_git(
    args: Sequence[str],
    *,
    timeout: float,
    config: Sequence[tuple[str, str]] = (),
    secrets: Sequence[str] = (),
) -> bytes:
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "GCM_INTERACTIVE": "never",
        "GIT_ALLOW_PROTOCOL": _ALLOWED_PROTOCOLS,  # no ext:: or fd:: from a clone URL
        "GIT_LITERAL_PATHSPECS": "1",
    }
    first = int(os.environ.get("GIT_CONFIG_COUNT") or 0)
    for index, (key, value) in enumerate(config, start=first):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    env["GIT_CONFIG_COUNT"] = str(first + len(config))
    import git  # GitPython on first use: a web process that never runs git saves ~3 MB

    try:
        status, out, err = git.Git().execute(
            ["git", *args],
            env=env,
            kill_after_timeout=timeout,
            with_extended_output=True,
            with_exceptions=False,
            stdout_as_string=False,
            strip_newline_in_stdout=False,
        )
    except git.GitCommandNotFound as exc:
        raise SourceUnavailable("git is not installed on the controller") from exc
    if status != 0:
        timed_out = status == -signal.SIGKILL or err.startswith("Timeout:")
        raise GitFailed(scrub(err, secrets)[-_MAX_DETAIL:], timed_out=timed_out)
    return out


def secrets_of(auth_header: str | None) -> tuple[str, ...]:
    if not auth_header:
        return ()
    value = auth_header.partition(":")[2].strip()
    return (auth_header, value, *(word for word in value.split() if len(word) >= 8))


def scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return redact(text)


def redact(text: str) -> str:
    """Drop the userinfo (``user:token@``) of every URL in ``text``."""
    return _USERINFO.sub(r"\1", text)


def summarize(detail: str) -> str:
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    return "; ".join(lines[-3:])[-500:] or "no error output"


@dataclass(frozen=True)
class Remote:
    url: str = field(repr=False)  # what git fetches from; may hold credentials
    key: str  # the mirror's name: a hash, never the URL
    name: str  # for messages: owner/name or a local path, never credentials
    local_path: Path | None


def parse_remote(clone_url: str) -> Remote:
    if not clone_url or clone_url.startswith("-") or any(c in clone_url for c in "\0\r\n"):
        raise SourceNotFound(f"invalid clone URL {redact(clone_url)!r:.200}")
    if clone_url.startswith("file://"):
        local: Path | None = Path(os.path.abspath(unquote(urlsplit(clone_url).path)))
        url = clone_url
    elif "://" in clone_url or (":" in clone_url.split("/", 1)[0] and clone_url[0] != "."):
        local, url = None, clone_url  # a network URL or scp-like host:path
    else:
        local = Path(os.path.abspath(clone_url))
        url = str(local)  # fetches run elsewhere: a relative path must not change meaning
    identity = str(local) if local is not None else redact(clone_url)
    return Remote(
        url=url,
        key=hashlib.sha256(identity.encode()).hexdigest()[:32],
        name=str(local) if local is not None else _short_name(identity),
        local_path=local,
    )


def _short_name(url: str) -> str:
    if "://" in url:
        parts = urlsplit(url)
        host, path = parts.hostname or "", parts.path
    else:
        host, _, path = url.partition(":")
        host = host.rpartition("@")[2]
    segments = [s for s in path.rstrip("/").removesuffix(".git").split("/") if s]
    return "/".join(segments[-2:]) or host or "the repository"


def check_sha(sha: str) -> str:
    if not SHA.fullmatch(sha.lower()):
        raise SourceNotFound(f"{sha!r:.60} is not a commit sha (7 to 40 hex digits)")
    return sha.lower()


def check_ref(ref: str) -> None:
    if not _REF.fullmatch(ref) or ".." in ref or "/." in ref or ref.endswith((".lock", "/")):
        raise SourceNotFound(f"{ref!r:.200} is not a valid ref name")


def tree_path(path: str) -> str:
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if path.startswith("/") or not parts or ".." in parts or "\0" in path:
        raise PermanentError(f"invalid path {path!r:.200}: it must be relative to the repo root")
    return "/".join(parts)
