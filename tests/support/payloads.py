"""GitHub's real webhook payloads, their JSON Schemas and an independent signer, for tests.

Everything here comes from the npm packages pinned in ``tests/node/package.json``
(install them with ``npm ci --prefix tests/node``):

* ``@octokit/webhooks-examples`` — payloads GitHub really sent;
* ``@octokit/webhooks-schemas`` — the JSON Schema (draft-07) of every event;
* ``@octokit/webhooks-methods`` — GitHub's own ``sign()``, run through ``sign.mjs``.

Builders never write a payload from scratch: they copy a real example that validates
against the current schema, edit it, validate the result and return it.

Over 400 lines: one builder per GitHub event the tests send, all on the same example
index, schema check and signer.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import zlib
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from jsonschema import Draft7Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from support.waiting import scaled

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
NODE_MODULES = NODE_DIR / "node_modules"
EXAMPLES_PATH = NODE_MODULES / "@octokit" / "webhooks-examples" / "api.github.com" / "index.json"
SCHEMA_PATH = NODE_MODULES / "@octokit" / "webhooks-schemas" / "schema.json"
METHODS_PATH = NODE_MODULES / "@octokit" / "webhooks-methods" / "package.json"
SIGN_SCRIPT = NODE_DIR / "sign.mjs"
INSTALL_HINT = "run `npm ci --prefix tests/node`"

ZERO_SHA = "0" * 40
DEFAULT_INSTALLATION_ID = 4242
SIGN_TIMEOUT = scaled(60)

_SCHEMA_URI = "urn:octokit:webhooks-schemas"
_SIGNATURE_RE = re.compile(r"sha256=[0-9a-f]{64}")
_DATE_TIME_RE = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")

Payload = dict[str, Any]


# --- availability ---------------------------------------------------------------------


def missing_node_support() -> str | None:
    """Why the npm test packages cannot be used here, or ``None`` when they can."""
    for path in (EXAMPLES_PATH, SCHEMA_PATH, METHODS_PATH):
        if not path.is_file():
            return f"npm test packages are not installed ({path.relative_to(NODE_DIR)} missing)"
    if shutil.which("node") is None:
        return "the `node` executable is not on PATH"
    return None


def node_modules_available() -> bool:
    """Whether GitHub's example payloads, schemas and signer can be used."""
    return missing_node_support() is None


def require_node_modules() -> None:
    """Skip the calling test when the npm packages are missing; in CI, fail instead."""
    reason = missing_node_support()
    if reason is None:
        return
    if os.environ.get("CI", "").strip().lower() == "true":
        raise RuntimeError(f"{reason}; CI must not skip these tests: {INSTALL_HINT}")
    pytest.skip(f"{reason}; {INSTALL_HINT}")


# --- examples -------------------------------------------------------------------------


@functools.cache
def _index() -> dict[str, list[Payload]]:
    with EXAMPLES_PATH.open(encoding="utf-8") as f:
        entries = json.load(f)
    return {entry["name"]: entry["examples"] for entry in entries}


def examples(name: str, action: str | None = None) -> list[Payload]:
    """Deep copies of GitHub's example payloads for event ``name`` (and ``action``)."""
    try:
        found = _index()[name]
    except KeyError:
        raise KeyError(f"no webhook examples for event {name!r}") from None
    return [copy.deepcopy(p) for p in found if action is None or p.get("action") == action]


def example(name: str, action: str | None = None, index: int = 0) -> Payload:
    """One example payload (a deep copy); ``index`` counts within the ``action`` filter."""
    found = examples(name, action)
    if not found:
        raise LookupError(f"no {name!r} example with action {action!r}")
    return found[index]


# --- schema validation ----------------------------------------------------------------


@functools.cache
def _schema() -> Payload:
    with SCHEMA_PATH.open(encoding="utf-8") as f:
        schema: Payload = json.load(f)
    return schema


@functools.cache
def _registry() -> Registry[Any]:
    resource = Resource.from_contents(_schema(), default_specification=DRAFT7)
    registry: Registry[Any] = Registry().with_resource(_SCHEMA_URI, resource)
    return registry


def _is_date_time(value: object) -> bool:
    """RFC 3339 ``date-time`` (jsonschema only checks it with optional extras installed)."""
    if not isinstance(value, str):
        return True
    if not _DATE_TIME_RE.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return False
    return True


def _is_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.scheme) and " " not in value


def _format_checker() -> FormatChecker:
    # jsonschema checks neither format without optional extras; the schema uses both a lot.
    checker = FormatChecker()
    checker.checks("date-time")(_is_date_time)
    checker.checks("uri")(_is_uri)
    return checker


def definition_name(event: str, payload: Payload) -> str:
    """The schema definition for ``event``: ``event$action``, else ``event$event``."""
    action = payload.get("action")
    name = f"{event}${action}" if isinstance(action, str) else f"{event}$event"
    if name not in _schema()["definitions"]:
        raise AssertionError(
            f"schema.json has no definition {name!r} for event {event!r} (action {action!r})"
        )
    return name


@functools.cache
def _validator(definition: str) -> Draft7Validator:
    return Draft7Validator(
        {"$ref": f"{_SCHEMA_URI}#/definitions/{definition}"},
        registry=_registry(),
        format_checker=_format_checker(),
    )


def _describe(error: ValidationError) -> str:
    path = "".join(f"[{part!r}]" for part in error.absolute_path) or "(top level)"
    message = error.message if len(error.message) <= 200 else error.message[:200] + "…"
    if error.context:
        message += f" — closest: {_describe(best_match(error.context))}"
    return f"{path}: {message}"


def validate(event: str, payload: Payload) -> None:
    """Raise AssertionError unless ``payload`` matches GitHub's schema for ``event``."""
    definition = definition_name(event, payload)
    errors = sorted(_validator(definition).iter_errors(payload), key=lambda e: list(e.path))
    if errors:
        shown = "\n  ".join(_describe(e) for e in errors[:10])
        more = f"\n  … and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise AssertionError(
            f"{event} payload does not match schema definition {definition!r}:\n  {shown}{more}"
        )


def _valid_examples(
    name: str, action: str | None = None, where: Callable[[Payload], bool] | None = None
) -> Iterator[Payload]:
    """Examples that still validate (several old ones do not), optionally filtered."""
    for payload in examples(name, action):
        if where is not None and not where(payload):
            continue
        try:
            validate(name, payload)
        except AssertionError:
            continue
        yield payload


def _first_valid(
    name: str, action: str | None = None, where: Callable[[Payload], bool] | None = None
) -> Payload:
    for payload in _valid_examples(name, action, where):
        return payload
    raise LookupError(f"no {name!r} example (action {action!r}) validates and fits the request")


# --- editing helpers ------------------------------------------------------------------


def _stable_id(kind: str, key: str) -> int:
    """A deterministic GitHub-like id, so the same name always gets the same id."""
    return 10_000_000 + zlib.crc32(f"{kind}:{key.lower()}".encode()) % 900_000_000


def _node_id(type_code: str, type_name: str, ident: int) -> str:
    """GitHub's legacy global node id, e.g. ``MDEwOlJlcG9zaXRvcnkx…`` for a repository."""
    return base64.b64encode(f"{type_code}:{type_name}{ident}".encode()).decode("ascii")


def repository_id(full_name: str) -> int:
    """The repository id the builders give ``owner/name``."""
    return _stable_id("repository", full_name)


def account_id(login: str) -> int:
    """The user/organization id the builders give ``login``."""
    return _stable_id("account", login)


def _split(full_name: str) -> tuple[str, str]:
    owner, sep, name = full_name.partition("/")
    if not sep or not owner or not name or "/" in name:
        raise ValueError(f"expected 'owner/name', got {full_name!r}")
    return owner, name


def _replace_strings(value: Any, old: str, new: str) -> Any:
    """Replace ``old`` by ``new`` in every string inside ``value`` (in place for containers)."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = _replace_strings(item, old, new)
    elif isinstance(value, list):
        value[:] = [_replace_strings(item, old, new) for item in value]
    return value


def _sub_strings(value: Any, pattern: re.Pattern[str], new: str) -> Any:
    """Regex-substitute in every string inside ``value`` (in place for containers)."""
    if isinstance(value, str):
        return pattern.sub(new, value)
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = _sub_strings(item, pattern, new)
    elif isinstance(value, list):
        value[:] = [_sub_strings(item, pattern, new) for item in value]
    return value


def _set_account(user: Payload, login: str) -> None:
    """Turn a user/organization object of an example into ``login``'s."""
    old = user["login"]
    for key, value in list(user.items()):
        if isinstance(value, str) and key.endswith("url"):
            user[key] = re.sub(
                rf"(/users/|/orgs/|github\.com/){re.escape(old)}(?=[/{{?]|$)",
                rf"\g<1>{login}",
                value,
            )
    ident = account_id(login)
    user["login"] = login
    user["id"] = ident
    if user.get("type") == "Organization":
        user["node_id"] = _node_id("012", "Organization", ident)
    else:
        user["node_id"] = _node_id("04", "User", ident)
    if "name" in user:
        user["name"] = login
    if "email" in user:
        user["email"] = f"{ident}+{login}@users.noreply.github.com"


def _set_repository(
    repo: Payload,
    full_name: str,
    *,
    default_branch: str | None = None,
    clone_url: str | None = None,
) -> None:
    """Turn a repository object of an example into ``full_name``'s (ids, URLs, owner)."""
    owner, name = _split(full_name)
    _replace_strings(repo, repo["full_name"], full_name)
    ident = repository_id(full_name)
    repo.update(id=ident, node_id=_node_id("010", "Repository", ident), name=name)
    repo["full_name"] = full_name
    _set_account(repo["owner"], owner)
    if default_branch is not None:
        repo["default_branch"] = default_branch
        if "master_branch" in repo:
            repo["master_branch"] = default_branch
    if clone_url is not None:
        repo["clone_url"] = clone_url


def _repository_lite(full_name: str) -> Payload:
    """The short repository entry of installation events."""
    _, name = _split(full_name)
    ident = repository_id(full_name)
    return {
        "id": ident,
        "node_id": _node_id("010", "Repository", ident),
        "name": name,
        "full_name": full_name,
        "private": False,
    }


def _set_installation_lite(payload: Payload, installation_id: int) -> None:
    payload["installation"] = {
        "id": installation_id,
        "node_id": _node_id("023", "IntegrationInstallation", installation_id),
    }


def _set_installation(payload: Payload, installation_id: int, account: str) -> None:
    """Edit the full installation object: id (and its URLs), account, target."""
    inst = payload["installation"]
    # Some examples disagree with themselves (suspend: id 16598467, URLs say 957387).
    _sub_strings(inst, re.compile(r"/installations/\d+"), f"/installations/{installation_id}")
    inst["id"] = installation_id
    _set_account(inst["account"], account)
    inst["target_id"] = inst["account"]["id"]
    inst["target_type"] = inst["account"].get("type", "User")


def _checked(event: str, payload: Payload) -> Payload:
    validate(event, payload)
    return payload


# --- builders -------------------------------------------------------------------------


def push(
    *,
    repo: str = "octo-org/demo",
    ref: str = "refs/heads/main",
    before: str,
    after: str,
    default_branch: str = "main",
    deleted: bool = False,
    created: bool = False,
    clone_url: str | None = None,
    installation_id: int = DEFAULT_INSTALLATION_ID,
) -> Payload:
    """A ``push`` delivery for ``repo``; ``refs/tags/…`` refs make tag pushes.

    As on GitHub, a deleting push has ``after`` all zeros, no commits and no head commit;
    a creating push has ``before`` all zeros; a tag push lists no commits.
    """
    if deleted and created:
        raise ValueError("a push cannot both create and delete its ref")
    if deleted and after != ZERO_SHA:
        raise ValueError("a deleting push has after == ZERO_SHA")
    if created and before != ZERO_SHA:
        raise ValueError("a creating push has before == ZERO_SHA")

    # Deletions start from a real deletion; everything else from a push carrying a commit.
    if deleted:
        payload = _first_valid("push", where=lambda p: p["deleted"])
    else:
        payload = _first_valid("push", where=lambda p: bool(p["commits"]))
    _replace_strings(payload, payload["repository"]["full_name"], repo)
    _set_repository(payload["repository"], repo, default_branch=default_branch, clone_url=clone_url)
    _set_installation_lite(payload, installation_id)
    payload.pop("organization", None)

    payload.update(ref=ref, before=before, after=after, deleted=deleted, created=created)
    payload["forced"] = False
    payload["base_ref"] = None
    if deleted:
        payload["commits"] = []
        payload["head_commit"] = None
        payload["compare"] = f"https://github.com/{repo}/compare/{before[:12]}...{after[:12]}"
        return _checked("push", payload)

    commit = copy.deepcopy(payload["head_commit"])
    commit["id"] = after
    commit["url"] = f"https://github.com/{repo}/commit/{after}"
    commit["message"] = f"Change {after[:7]}"
    payload["head_commit"] = commit
    # GitHub lists no commits for tag pushes, only the tagged head commit.
    payload["commits"] = [] if ref.startswith("refs/tags/") else [copy.deepcopy(commit)]
    payload["compare"] = (
        f"https://github.com/{repo}/commit/{after[:12]}"
        if created
        else f"https://github.com/{repo}/compare/{before[:12]}...{after[:12]}"
    )
    return _checked("push", payload)


def _pull_request_base(action: str) -> Payload:
    """A real example with ``action``, else an ``opened`` one relabelled as ``action``."""
    for payload in _valid_examples("pull_request", action):
        return payload
    payload = _first_valid("pull_request", "opened")
    payload["action"] = action
    return payload


def _renumber(value: Any, old: int, new: int) -> None:
    pattern = re.compile(rf"/(pulls|pull|issues)/{old}(?!\d)")
    _sub_strings(value, pattern, rf"/\g<1>/{new}")


def pull_request(
    *,
    action: str,
    number: int = 7,
    repo: str = "octo-org/demo",
    head_ref: str = "feature/x",
    head_sha: str,
    base_ref: str = "main",
    fork_owner: str | None = None,
    merged: bool = False,
    draft: bool = False,
    installation_id: int = DEFAULT_INSTALLATION_ID,
) -> Payload:
    """A ``pull_request`` delivery; ``fork_owner`` makes the head live in a fork.

    ``merged=True`` (only with ``closed``) fills ``merged_at``, ``merge_commit_sha`` and
    ``merged_by``. Actions without an example are derived from ``opened`` and must still
    validate against their own schema definition.
    """
    if merged and action != "closed":
        raise ValueError("only a 'closed' pull_request can be merged")
    owner, name = _split(repo)
    payload = _pull_request_base(action)
    pr = payload["pull_request"]

    _replace_strings(payload, payload["repository"]["full_name"], repo)
    _renumber(payload, pr["number"], number)
    _set_repository(payload["repository"], repo)
    repository = payload["repository"]
    _set_installation_lite(payload, installation_id)
    payload.pop("organization", None)

    payload["number"] = number
    pr["number"] = number
    pr["draft"] = draft

    base = pr["base"]
    base.update(ref=base_ref, label=f"{owner}:{base_ref}", repo=copy.deepcopy(repository))
    base["user"] = copy.deepcopy(repository["owner"])

    head = pr["head"]
    head_repo = copy.deepcopy(repository)
    if fork_owner is not None:
        if fork_owner == owner:
            raise ValueError("a fork belongs to a different owner than the base repository")
        _set_repository(head_repo, f"{fork_owner}/{name}")
        head_repo["fork"] = True
    head.update(
        ref=head_ref,
        sha=head_sha,
        label=f"{head_repo['owner']['login']}:{head_ref}",
        repo=head_repo,
    )
    head["user"] = copy.deepcopy(head_repo["owner"])
    if fork_owner is not None:
        # The fork's owner wrote the pull request and (except for closing it) acted on it.
        pr["user"] = copy.deepcopy(head_repo["owner"])
        pr["author_association"] = "CONTRIBUTOR"
        if action != "closed":
            payload["sender"] = copy.deepcopy(head_repo["owner"])

    if action == "closed":
        pr["merged"] = merged
        if merged:
            pr["merged_at"] = pr["closed_at"]
            pr["merge_commit_sha"] = hashlib.sha1(
                f"merge {repo}#{number} {head_sha}".encode()
            ).hexdigest()
            pr["merged_by"] = copy.deepcopy(payload["sender"])
        else:
            pr["merged_at"] = None
            pr["merged_by"] = None
    return _checked("pull_request", payload)


def installation(
    *,
    action: str,
    repos: Iterable[str],
    installation_id: int = DEFAULT_INSTALLATION_ID,
    account: str = "octo-org",
) -> Payload:
    """An ``installation`` delivery (``created``, ``deleted``, ``suspend``, …) for ``repos``."""
    payload = _first_valid("installation", action)
    _set_installation(payload, installation_id, account)
    payload["repositories"] = [_repository_lite(r) for r in repos]
    return _checked("installation", payload)


def installation_repositories(
    *,
    action: str,
    added: Iterable[str],
    removed: Iterable[str],
    installation_id: int = DEFAULT_INSTALLATION_ID,
    account: str = "octo-org",
) -> Payload:
    """An ``installation_repositories`` delivery (``added`` / ``removed``)."""
    payload = _first_valid("installation_repositories", action)
    _set_installation(payload, installation_id, account)
    payload["repository_selection"] = "selected"
    payload["repositories_added"] = [_repository_lite(r) for r in added]
    payload["repositories_removed"] = [_repository_lite(r) for r in removed]
    return _checked("installation_repositories", payload)


def delete(
    *,
    repo: str = "octo-org/demo",
    ref: str,
    ref_type: str = "branch",
    installation_id: int = DEFAULT_INSTALLATION_ID,
) -> Payload:
    """A ``delete`` delivery (the examples are all tags; a branch is an edited one)."""
    payload = _first_valid("delete")
    _replace_strings(payload, payload["repository"]["full_name"], repo)
    _set_repository(payload["repository"], repo)
    _set_installation_lite(payload, installation_id)
    payload.pop("organization", None)
    payload.update(ref=ref, ref_type=ref_type)
    return _checked("delete", payload)


def deployment_status(
    *,
    repo: str = "octo-org/demo",
    sha: str,
    environment: str = "production",
    state: str = "success",
    installation_id: int = DEFAULT_INSTALLATION_ID,
) -> Payload:
    """A ``deployment_status`` delivery of a deployment of ``sha`` in ``environment``."""
    payload = _first_valid(
        "deployment_status", where=lambda p: bool(p["deployment_status"].get("log_url"))
    )
    _replace_strings(payload, payload["repository"]["full_name"], repo)
    _set_repository(payload["repository"], repo)
    _set_installation_lite(payload, installation_id)
    payload.pop("organization", None)
    payload["deployment"].update(sha=sha, environment=environment)
    payload["deployment_status"].update(state=state, environment=environment)
    return _checked("deployment_status", payload)


def check_run(
    *,
    action: str = "completed",
    repo: str = "octo-org/demo",
    sha: str,
    name: str = "ci",
    conclusion: str | None = "success",
    installation_id: int = DEFAULT_INSTALLATION_ID,
) -> Payload:
    """A ``check_run`` delivery (``created`` runs are queued; ``completed`` ones conclude)."""
    payload = _first_valid("check_run", action)
    _replace_strings(payload, payload["repository"]["full_name"], repo)
    _set_repository(payload["repository"], repo)
    _set_installation_lite(payload, installation_id)
    payload.pop("organization", None)
    run = payload["check_run"]
    run.update(name=name, head_sha=sha)
    run["check_suite"]["head_sha"] = sha
    if action == "completed":
        run["conclusion"] = conclusion
    return _checked("check_run", payload)


def ping() -> Payload:
    """A real ``ping`` delivery (the first example that matches the current schema)."""
    return _checked("ping", _first_valid("ping"))


# --- bodies and signatures ------------------------------------------------------------


def body_of(payload: Payload) -> bytes:
    """The delivery body: compact JSON, UTF-8, as GitHub sends it."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def octokit_sign(secret: str, body: bytes) -> str:
    """``sign(secret, body)`` from ``@octokit/webhooks-methods``, run in Node."""
    require_node_modules()
    result = subprocess.run(
        ["node", str(SIGN_SCRIPT), secret],
        input=body,
        capture_output=True,
        timeout=SIGN_TIMEOUT,
        check=False,
        cwd=NODE_DIR,
    )
    signature = result.stdout.decode("utf-8", "replace")
    if result.returncode != 0 or not _SIGNATURE_RE.fullmatch(signature):
        raise RuntimeError(
            f"sign.mjs failed (exit {result.returncode}): "
            f"stdout={signature!r} stderr={result.stderr.decode('utf-8', 'replace')[-500:]!r}"
        )
    return signature
