"""A stateful fake GitHub REST API that validates every request against GitHub's own spec.

The spec is npm ``@octokit/openapi`` (``tests/node``): every request is matched to an
operation by method and path template, and its path and query parameters and its JSON
body are validated with the operation's schemas (OpenAPI 3.0: ``nullable`` becomes a
``null`` alternative, then draft-04 validation). A request that matches no operation or
does not validate is recorded in :attr:`FakeGitHub.errors` and answered ``400``; the
tests' fixture fails the test when any error was recorded, so Slipway cannot send a
request GitHub would not accept without a test noticing.

Answers are the spec's own examples, overridden by state for what Slipway uses: the App
(``GET /app``, JWT-authenticated with the App's real public key), its installations,
installation tokens (issued, expiring, listed in :attr:`FakeGitHub.issued_tokens` so a
git server can accept exactly them) and an installation's repositories, each built
from the operation's example. Answers are not validated against the response schemas:
the spec's own examples do not always pass them (``installation.account`` is
``allOf: [simple-user, enterprise]``). :meth:`FakeGitHub.fail_next` queues error answers
(5xx, rate limits, 401, 404) for an operation.

**Sign in with GitHub.** The manifest conversion (``POST /app-manifests/{code}/conversions``)
answers this fake's own App, OAuth client included. The web flow's two endpoints are on
GitHub's *web* host, not in the REST spec, so they are served here without spec
validation but checked by hand: ``GET /login/oauth/authorize`` signs in the person
:attr:`FakeGitHub.browser_login` names and redirects to the ``redirect_uri`` with a
one-time code; ``POST /login/oauth/access_token`` wants the App's client id and secret,
that code, the same ``redirect_uri`` and the PKCE verifier of the ``code_challenge``
(S256), and answers a ``ghu_`` user token (GitHub's ``200`` with an ``error`` field when
not). With that token ``GET /user`` answers the person and ``GET /repos/{owner}/{repo}``
the repository with their ``permissions`` (:meth:`FakeGitHub.add_user`), 404 where they
have no access.

One file over 400 lines on purpose: the spec matching, the state and the answers of one
fake GitHub are read together when a test's request is refused; split, every answer
would import the fake's internals back.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jsonschema
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SPEC_PATH = (
    Path(__file__).resolve().parents[1]
    / "node/node_modules/@octokit/openapi/generated/api.github.com.json"
)
_SPEC_URI = "urn:github-openapi"


# --- the spec ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    op: dict[str, Any]

    @property
    def operation_id(self) -> str:
        return str(self.op.get("operationId"))


@functools.cache
def load_spec() -> dict[str, Any]:
    if not SPEC_PATH.exists():
        raise RuntimeError(f"{SPEC_PATH} is missing: run `npm ci` in tests/node")
    return json.loads(SPEC_PATH.read_text())


def _to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 schema → JSON Schema draft 4 (``nullable``; ``$ref`` into our URN)."""
    if isinstance(node, list):
        return [_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_jsonschema(v) for k, v in node.items() if k not in ("example", "examples")}
    if isinstance(out.get("$ref"), str) and out["$ref"].startswith("#/"):
        out["$ref"] = _SPEC_URI + out["$ref"]
    if out.pop("nullable", False) is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _registry() -> Registry:
    components = {"components": _to_jsonschema(load_spec()["components"])}
    resource = Resource.from_contents(components, default_specification=DRAFT4)
    return Registry().with_resource(_SPEC_URI, resource)


@functools.cache
def operations() -> tuple[Operation, ...]:
    found = []
    for template, item in load_spec()["paths"].items():
        regex = re.sub(r"\\\{[^}]+\\\}", "([^/]+)", re.escape(template))
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                found.append(Operation(method.upper(), template, re.compile(regex + "$"), op))
    # Literal segments win over parameters (/app/installations before /app/{x}).
    return tuple(sorted(found, key=lambda o: (o.template.count("{"), o.template)))


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = load_spec()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def schema_errors(schema: dict[str, Any], value: Any) -> list[str]:
    validator = jsonschema.Draft4Validator(_to_jsonschema(schema), registry=_registry())
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}"
        for e in validator.iter_errors(value)
    ]


def match(method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
    for candidate in operations():
        if candidate.method != method:
            continue
        found = candidate.pattern.match(path)
        if found:
            names = re.findall(r"\{([^}]+)\}", candidate.template)
            return candidate, dict(zip(names, found.groups(), strict=True))
    return None


def _coerce(raw: str, schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
    except ValueError:
        return raw
    if kind == "boolean":
        return {"true": True, "false": False}.get(raw, raw)
    return raw


def validate_request(
    method: str, path: str, query: dict[str, list[str]], body: bytes, content_type: str
) -> tuple[Operation | None, dict[str, str], list[str]]:
    """The matched operation, its path parameters, and what is wrong with the request."""
    matched = match(method, path)
    if matched is None:
        return None, {}, [f"{method} {path} is no operation of GitHub's REST API"]
    operation, path_params = matched
    problems: list[str] = []
    params = [_resolve(p) for p in operation.op.get("parameters", [])]
    known = {(p["in"], p["name"]) for p in params}
    for name in query:
        if ("query", name) not in known:
            problems.append(f"query parameter {name!r} is not in the spec")
    for param in params:
        where, name, schema = param["in"], param["name"], param.get("schema", {})
        if where == "path":
            value: Any = _coerce(path_params.get(name, ""), schema)
        elif where == "query" and name in query:
            value = _coerce(query[name][-1], schema)
        else:
            if param.get("required") and where == "query":
                problems.append(f"required query parameter {name!r} missing")
            continue
        problems += [f"{where} parameter {name}: {e}" for e in schema_errors(schema, value)]
    request_body = _resolve(operation.op["requestBody"]) if "requestBody" in operation.op else None
    if request_body is None:
        if body.strip():
            problems.append("the operation takes no request body")
    elif body.strip() or request_body.get("required"):
        media = request_body.get("content", {}).get("application/json")
        if media is None:
            problems.append(f"request body content types are {list(request_body['content'])}")
        elif "json" not in content_type:
            problems.append(f"Content-Type {content_type!r} is not JSON")
        else:
            try:
                payload = json.loads(body or b"null")
            except ValueError:
                problems.append("the request body is not JSON")
            else:
                problems += [f"body {e}" for e in schema_errors(media["schema"], payload)]
    return operation, path_params, problems


def example(operation: Operation, status: str) -> Any:
    response = _resolve(operation.op["responses"][status])
    media = response.get("content", {}).get("application/json", {})
    for item in media.get("examples", {}).values():
        return copy.deepcopy(_resolve(item).get("value"))
    return None


def _from_example(method: str, path: str, status: str) -> Any:
    """The example answer of the operation ``method path`` matches (a sample path)."""
    found = match(method, path)
    assert found is not None
    return example(found[0], status)


# --- state -------------------------------------------------------------------------------


def generate_private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


@dataclass
class Failure:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Issued:
    token: str
    installation_id: int
    expires_at: datetime


@dataclass
class FakeUser:
    login: str
    id: int
    push: set[str]
    read: set[str]


@dataclass
class Grant:
    login: str
    challenge: str
    redirect_uri: str


class FakeGitHub:
    """See the module docstring. ``url`` is the API base URL (PyGithub's ``base_url``)."""

    def __init__(self, *, app_id: int = 4242, slug: str = "slipway-test") -> None:
        self.app_id = app_id
        self.slug = slug
        self.private_key = generate_private_key()
        self._public_key = serialization.load_pem_private_key(
            self.private_key.encode(), password=None
        ).public_key()
        self.installations: dict[int, dict[str, Any]] = {}
        self.repositories: dict[int, list[dict[str, Any]]] = {}
        self.issued: list[Issued] = []
        self.token_lifetime = timedelta(hours=1)
        self.requests: list[tuple[str, str, str]] = []  # method, path, operationId
        self.errors: list[str] = []
        self._failures: dict[str, list[Failure]] = {}
        self.client_id = "Iv1.fake" + secrets.token_hex(4)
        self.client_secret = "fake-client-secret-" + secrets.token_hex(16)
        self.webhook_secret = "fake-webhook-secret-" + secrets.token_hex(8)
        self.users: dict[str, FakeUser] = {}
        self.browser_login: str | None = None  # who is signed in to GitHub "in the browser"
        self.user_tokens: dict[str, str] = {}  # token -> login
        self._grants: dict[str, Grant] = {}
        self._lock = threading.Lock()
        # -- reporting and resync state (see the "reporting and resync" block) --
        self.latency = 0.0  # seconds each answer waits (the benchmark's 50 ms)
        self.outage: int | None = None  # when set, every request is answered this status
        self.rate_limit = 5000  # X-RateLimit-Limit; Remaining falls by one per API request
        self.deployments: dict[int, dict[str, Any]] = {}  # id -> deployment (+ "repo")
        self.deployment_statuses: dict[int, list[dict[str, Any]]] = {}
        self.check_runs: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, dict[str, Any]] = {}  # id -> comment (+ "repo", "number")
        self.branches: dict[str, dict[str, str]] = {}  # repo -> branch -> sha
        self.pulls: dict[str, list[dict[str, Any]]] = {}  # repo -> open pull requests
        self.not_modified = 0
        self._next_id = 1000
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeGitHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- test controls ------------------------------------------------------------------

    def add_installation(
        self,
        installation_id: int,
        *,
        account: str = "octo-org",
        repos: list[str] = (),  # type: ignore[assignment]
    ) -> None:
        installation = _from_example("GET", "/app/installations", "200")[0]
        installation.update(id=installation_id, app_id=self.app_id, app_slug=self.slug)
        installation["account"]["login"] = account
        self.installations[installation_id] = installation
        template = _from_example("GET", "/installation/repositories", "200")["repositories"][0]
        rows = []
        for n, full_name in enumerate(repos, start=1):
            repo = copy.deepcopy(template)
            owner, _, name = full_name.partition("/")
            repo.update(id=installation_id * 1000 + n, name=name, full_name=full_name)
            repo["owner"]["login"] = owner
            rows.append(repo)
        self.repositories[installation_id] = rows

    def add_user(
        self,
        login: str,
        *,
        push: list[str] = (),  # type: ignore[assignment]
        read: list[str] = (),  # type: ignore[assignment]
    ) -> None:
        """A person on GitHub who may push to ``push`` and only read ``read``."""
        self.users[login] = FakeUser(
            login, 9000 + len(self.users), {r.lower() for r in push}, {r.lower() for r in read}
        )

    # -- promotion gates: what an app's pipeline reports on GitHub --------------------
    # (kept in the same state the reporting block serves, so one list answers both)

    def add_deployment(
        self,
        repo: str,
        *,
        sha: str,
        environment: str,
        states: list[str] = (),  # type: ignore[assignment]
    ) -> int:
        """A GitHub deployment of ``sha`` in ``environment`` with statuses ``states``."""
        deployment = _from_example("POST", "/repos/o/r/deployments", "201")
        deployment.update(
            id=_new_id(self), sha=sha, environment=environment, ref=sha, created_at=_now()
        )
        with self._lock:
            self.deployments[deployment["id"]] = {**deployment, "repo": repo}
            self.deployment_statuses[deployment["id"]] = []
        for state in states:
            self.add_deployment_status(repo, deployment["id"], state)
        return int(deployment["id"])

    def add_deployment_status(self, repo: str, deployment_id: int, state: str) -> int:
        status = _from_example("POST", "/repos/o/r/deployments/1/statuses", "201")
        status_id = _new_id(self)  # takes the lock itself
        with self._lock:
            deployment = self.deployments[deployment_id]
            status.update(
                id=status_id,
                state=state,
                environment=deployment["environment"],
                log_url=f"https://ci.example.com/deploys/{deployment_id}/log",
                created_at=_now(),
            )
            self.deployment_statuses[deployment_id].append(status)
        return int(status["id"])

    def add_check_run(
        self,
        repo: str,
        *,
        sha: str,
        name: str,
        status: str = "completed",
        conclusion: str | None = "success",
    ) -> int:
        run = _from_example("POST", "/repos/o/r/check-runs", "201")
        run.update(id=_new_id(self), head_sha=sha, name=name, status=status, conclusion=conclusion)
        with self._lock:
            self.check_runs[run["id"]] = {**run, "repo": repo}
        return int(run["id"])

    def fail_next(self, operation_id: str, failure: Failure, *, times: int = 1) -> None:
        with self._lock:
            self._failures.setdefault(operation_id, []).extend([failure] * times)

    @property
    def issued_tokens(self) -> set[str]:
        now = datetime.now(UTC)
        with self._lock:
            return {i.token for i in self.issued if i.expires_at > now}

    def operation_ids(self) -> list[str]:
        with self._lock:
            return [op for _, _, op in self.requests]

    # -- answering ----------------------------------------------------------------------

    def answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(target)
        query = parse_qs(parts.query, keep_blank_values=True)
        if parts.path.startswith("/login/oauth/"):
            return self._web_flow(method, parts.path, query, headers, body)
        operation, params, problems = validate_request(
            method, parts.path, query, body, headers.get("content-type", "")
        )
        with self._lock:
            self.requests.append((method, parts.path, operation.operation_id if operation else "?"))
            if problems:
                self.errors.append(f"{method} {parts.path}: " + "; ".join(problems))
        if operation is None or problems:
            return 400, {}, {"message": "invalid request (fake GitHub)", "errors": problems}
        if self.latency:
            time.sleep(self.latency)
        if self.outage is not None:
            return self.outage, {}, {"message": "Service Unavailable (fake GitHub outage)"}
        with self._lock:
            queued = self._failures.get(operation.operation_id)
            failure = queued.pop(0) if queued else None
        if failure is not None:
            return failure.status, failure.headers, failure.body
        entry = _ANSWERS.get(operation.operation_id)
        if entry is None:
            for status in ("200", "201", "202", "204"):
                if status in operation.op["responses"]:
                    return int(status), {}, example(operation, status)
            return 500, {}, {"message": f"no example answer for {operation.operation_id}"}
        guard, handler = entry
        denied = guard(self, headers)
        if denied is not None:
            return denied
        flat = {name: values[-1] for name, values in query.items()}
        return handler(self, Call(headers, params, flat, json.loads(body or b"null")))

    def rate_limit_headers(self) -> dict[str, str]:
        """What GitHub sends with every REST answer (one shared window, as for an App)."""
        with self._lock:
            remaining = max(0, self.rate_limit - len(self.requests))
        reset = int(time.time()) + 3600
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Used": str(self.rate_limit - remaining),
            "X-RateLimit-Reset": str(reset),
        }

    def _app(self, headers: dict[str, str]) -> tuple[int, dict[str, Any]] | None:
        """``None`` if the JWT is the App's, else the error answer GitHub gives."""
        auth = headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return 401, {"message": "A JSON web token could not be decoded"}
        token = auth.split(" ", 1)[1]
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return 401, {"message": "A JSON web token could not be decoded"}
        if str(claims.get("iss")) != str(self.app_id):
            return 404, {"message": "Integration not found"}
        try:
            jwt.decode(token, self._public_key, algorithms=["RS256"], leeway=60)  # type: ignore[arg-type]
        except jwt.PyJWTError:
            return 401, {"message": "A JSON web token could not be decoded"}
        return None

    def _web_flow(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: bytes,
    ) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            self.requests.append((method, path, "oauth" + path.removeprefix("/login/oauth")))
        if method == "GET" and path == "/login/oauth/authorize":
            return self._authorize({k: v[-1] for k, v in query.items()})
        if method == "POST" and path == "/login/oauth/access_token":
            form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
            if "application/json" not in headers.get("accept", ""):
                self._problem("access_token: no Accept: application/json")
            return 200, {}, self._access_token(form)
        self._problem(f"{method} {path} is no endpoint of GitHub's web flow")
        return 404, {}, {"message": "Not Found"}

    def _problem(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    def _authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        if query.get("client_id") != self.client_id:
            return 404, {}, {"message": "unknown client_id"}
        wanted = {"client_id", "redirect_uri", "state", "code_challenge", "code_challenge_method"}
        missing = wanted - set(query)
        if missing or query.get("code_challenge_method") != "S256":
            self._problem(f"authorize: missing {sorted(missing)} or not S256")
            return 400, {}, {"message": "bad authorize request"}
        if self.browser_login is None:
            return 200, {}, {"message": "the sign-in page (no one is signed in)"}
        code = secrets.token_hex(10)
        with self._lock:
            self._grants[code] = Grant(
                self.browser_login, query["code_challenge"], query["redirect_uri"]
            )
        back = urlencode({"code": code, "state": query["state"]})
        return 302, {"Location": f"{query['redirect_uri']}?{back}"}, None

    def _access_token(self, form: dict[str, str]) -> dict[str, Any]:
        if (form.get("client_id"), form.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            return {"error": "incorrect_client_credentials"}
        with self._lock:
            grant = self._grants.pop(form.get("code", ""), None)
        if grant is None or form.get("redirect_uri") != grant.redirect_uri:
            return {"error": "bad_verification_code"}
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        if base64.urlsafe_b64encode(digest).decode().rstrip("=") != grant.challenge:
            return {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        token = "ghu_" + secrets.token_hex(18)
        with self._lock:
            self.user_tokens[token] = grant.login
        return {"access_token": token, "token_type": "bearer", "scope": "", "expires_in": 28800}

    def user_of(self, headers: dict[str, str]) -> FakeUser | None:
        auth = headers.get("authorization", "")
        token = auth.split(" ", 1)[1] if " " in auth else ""
        with self._lock:
            login = self.user_tokens.get(token)
        return self.users.get(login) if login else None

    def _installation_of(self, headers: dict[str, str]) -> int | None:
        auth = headers.get("authorization", "")
        token = auth.split(" ", 1)[1] if " " in auth else ""
        now = datetime.now(UTC)
        with self._lock:
            for issued in self.issued:
                if secrets.compare_digest(issued.token, token) and issued.expires_at > now:
                    return issued.installation_id
        return None


# --- answers ---------------------------------------------------------------------------
#
# One table, :data:`_ANSWERS`: operation id → (who may call it, the handler). The guard
# runs before the handler, so no handler repeats the credential check. Answers are the
# operation's example with our state laid over it. Reporting and resync lists filter as
# GitHub does for the parameters Slipway sends; records keep bookkeeping fields ("repo",
# "number", "edits") that answers leave out. Branches and pull request lists carry ETags
# and answer 304 to a matching If-None-Match (counted in ``not_modified``), as GitHub does.

Answer = tuple[int, dict[str, str], Any]
_BAD_CREDENTIALS: Answer = (401, {}, {"message": "Bad credentials"})
_NOT_FOUND: Answer = (404, {}, {"message": "Not Found"})


@dataclass(frozen=True)
class Call:
    headers: dict[str, str]
    params: dict[str, str]
    query: dict[str, str]
    body: Any


def _new_id(fake: FakeGitHub) -> int:
    with fake._lock:
        fake._next_id += 1
        return fake._next_id


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _repo(params: dict[str, str]) -> str:
    return f"{params['owner']}/{params['repo']}"


def _app_guard(fake: FakeGitHub, headers: dict[str, str]) -> Answer | None:
    denied = fake._app(headers)
    return (denied[0], {}, denied[1]) if denied else None


def _installation_guard(fake: FakeGitHub, headers: dict[str, str]) -> Answer | None:
    return _BAD_CREDENTIALS if fake._installation_of(headers) is None else None


def _user_guard(fake: FakeGitHub, headers: dict[str, str]) -> Answer | None:
    return _BAD_CREDENTIALS if fake.user_of(headers) is None else None


def _anyone(_fake: FakeGitHub, _headers: dict[str, str]) -> Answer | None:
    return None


def _shown(record: dict[str, Any], hidden: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in hidden}


def _listed(
    fake: FakeGitHub,
    store: dict[int, dict[str, Any]],
    *,
    call: Call,
    where: dict[str, Any],
    hidden: tuple[str, ...] = ("repo",),
) -> list[dict[str, Any]]:
    """The records of the call's repository (as GitHub: any case) whose fields equal each
    value of ``where`` that is not ``None`` (a filter the request did not ask for)."""
    repo = _repo(call.params).lower()
    wanted = {name: value for name, value in where.items() if value is not None}
    with fake._lock:
        return [
            _shown(record, hidden)
            for record in store.values()
            if record["repo"].lower() == repo
            and all(record.get(name) == value for name, value in wanted.items())
        ]


def _updated(
    fake: FakeGitHub,
    store: dict[int, dict[str, Any]],
    *,
    key: str,
    call: Call,
    change: Callable[[dict[str, Any]], None],
    hidden: tuple[str, ...] = ("repo",),
) -> Answer:
    with fake._lock:
        record = store.get(int(call.params[key]))
        if record is None or record["repo"] != _repo(call.params):
            return _NOT_FOUND
        change(record)
        return 200, {}, _shown(record, hidden)


def _get_app(fake: FakeGitHub, call: Call) -> Answer:
    app = _from_example("GET", "/app", "200")
    app.update(id=fake.app_id, slug=fake.slug, name=fake.slug)
    app["html_url"] = f"https://github.com/apps/{fake.slug}"
    return 200, {}, app


def _list_installations(fake: FakeGitHub, call: Call) -> Answer:
    return 200, {}, list(fake.installations.values())


def _create_token(fake: FakeGitHub, call: Call) -> Answer:
    installation_id = int(call.params["installation_id"])
    if installation_id not in fake.installations:
        return _NOT_FOUND
    expires_at = datetime.now(UTC).replace(microsecond=0) + fake.token_lifetime
    issued = Issued("ghs_" + secrets.token_hex(18), installation_id, expires_at)
    with fake._lock:
        fake.issued.append(issued)
    answer = _from_example("POST", "/app/installations/1/access_tokens", "201")
    answer.update(token=issued.token, expires_at=expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    answer.pop("repositories", None)
    return 201, {}, answer


def _installation_repositories(fake: FakeGitHub, call: Call) -> Answer:
    repos = fake.repositories.get(fake._installation_of(call.headers) or 0, [])
    return 200, {}, {"total_count": len(repos), "repositories": repos}


def _create_from_manifest(fake: FakeGitHub, call: Call) -> Answer:
    app = _from_example("POST", "/app-manifests/code/conversions", "201")
    app.update(
        id=fake.app_id,
        slug=fake.slug,
        name=fake.slug,
        html_url=f"https://github.com/apps/{fake.slug}",
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        webhook_secret=fake.webhook_secret,
        pem=fake.private_key,
    )
    return 201, {}, app


def _authenticated_user(fake: FakeGitHub, call: Call) -> Answer:
    user = fake.user_of(call.headers)
    assert user is not None
    answer = _from_example("GET", "/user", "200")
    answer.update(login=user.login, id=user.id)
    return 200, {}, answer


def _get_repository(fake: FakeGitHub, call: Call) -> Answer:
    user = fake.user_of(call.headers)
    assert user is not None
    full_name = _repo(call.params)
    push = full_name.lower() in user.push
    if not push and full_name.lower() not in user.read:
        return _NOT_FOUND
    repo = _from_example("GET", "/repos/o/r", "200")
    repo.update(name=call.params["repo"], full_name=full_name)
    repo["owner"]["login"] = call.params["owner"]
    repo["permissions"] = {
        "admin": False,
        "maintain": False,
        "push": push,
        "triage": push,
        "pull": True,
    }
    return 200, {}, repo


def _create_deployment(fake: FakeGitHub, call: Call) -> Answer:
    body = call.body
    dep = _from_example("POST", "/repos/o/r/deployments", "201")
    dep.update(
        id=_new_id(fake),
        sha=body["ref"],
        ref=body["ref"],
        task=body.get("task", "deploy"),
        payload=body.get("payload", {}),
        environment=body.get("environment", "production"),
        description=body.get("description"),
        transient_environment=body.get("transient_environment", False),
        production_environment=body.get("production_environment", False),
        created_at=_now(),
    )
    with fake._lock:
        fake.deployments[dep["id"]] = {**dep, "repo": _repo(call.params)}
        fake.deployment_statuses[dep["id"]] = []
    return 201, {}, dep


def _list_deployments(fake: FakeGitHub, call: Call) -> Answer:
    where = {name: call.query.get(name) for name in ("sha", "environment", "ref")}
    return 200, {}, _listed(fake, fake.deployments, call=call, where=where)[::-1]


def _create_deployment_status(fake: FakeGitHub, call: Call) -> Answer:
    dep_id = int(call.params["deployment_id"])
    if dep_id not in fake.deployments:
        return _NOT_FOUND
    status = _from_example("POST", "/repos/o/r/deployments/1/statuses", "201")
    status.update(id=_new_id(fake), created_at=_now(), **call.body)
    with fake._lock:
        fake.deployment_statuses[dep_id].append(status)
    return 201, {}, status


def _list_deployment_statuses(fake: FakeGitHub, call: Call) -> Answer:
    dep_id = int(call.params["deployment_id"])
    with fake._lock:
        deployment = fake.deployments.get(dep_id)
        if deployment is None or deployment["repo"].lower() != _repo(call.params).lower():
            return _NOT_FOUND
        return 200, {}, list(reversed(fake.deployment_statuses[dep_id]))


def _create_check_run(fake: FakeGitHub, call: Call) -> Answer:
    run = _from_example("POST", "/repos/o/r/check-runs", "201")
    run.update(id=_new_id(fake), started_at=_now(), conclusion=None, completed_at=None)
    run.update(call.body)
    with fake._lock:
        fake.check_runs[run["id"]] = {**run, "repo": _repo(call.params)}
    return 201, {}, run


def _update_check_run(fake: FakeGitHub, call: Call) -> Answer:
    return _updated(
        fake, fake.check_runs, key="check_run_id", call=call, change=lambda r: r.update(call.body)
    )


def _list_check_runs_for_ref(fake: FakeGitHub, call: Call) -> Answer:
    where = {"head_sha": call.params["ref"], "name": call.query.get("check_name")}
    runs = _listed(fake, fake.check_runs, call=call, where=where)
    return 200, {}, {"total_count": len(runs), "check_runs": runs}


_COMMENT_BOOKKEEPING = ("repo", "number", "edits")


def _create_comment(fake: FakeGitHub, call: Call) -> Answer:
    comment = _from_example("POST", "/repos/o/r/issues/1/comments", "201")
    comment.update(id=_new_id(fake), body=call.body["body"], created_at=_now(), updated_at=_now())
    with fake._lock:
        fake.comments[comment["id"]] = {
            **comment,
            "repo": _repo(call.params),
            "number": int(call.params["issue_number"]),
            "edits": 0,
        }
    return 201, {}, comment


def _update_comment(fake: FakeGitHub, call: Call) -> Answer:
    def edit(comment: dict[str, Any]) -> None:
        comment.update(body=call.body["body"], updated_at=_now(), edits=comment["edits"] + 1)

    return _updated(
        fake,
        fake.comments,
        key="comment_id",
        call=call,
        change=edit,
        hidden=_COMMENT_BOOKKEEPING,
    )


def _list_comments(fake: FakeGitHub, call: Call) -> Answer:
    page, per_page = int(call.query.get("page", 1)), int(call.query.get("per_page", 30))
    where = {"repo": _repo(call.params), "number": int(call.params["issue_number"])}
    found = _listed(fake, fake.comments, call=call, where=where, hidden=_COMMENT_BOOKKEEPING)
    return 200, {}, found[(page - 1) * per_page : page * per_page]


def _conditional(fake: FakeGitHub, headers: dict[str, str], answer: Any) -> Answer:
    etag = '"' + hashlib.sha256(json.dumps(answer, sort_keys=True).encode()).hexdigest()[:32] + '"'
    if headers.get("if-none-match") == etag:
        with fake._lock:
            fake.not_modified += 1
        return 304, {"ETag": etag}, None
    return 200, {"ETag": etag}, answer


def _get_branch(fake: FakeGitHub, call: Call) -> Answer:
    sha = fake.branches.get(_repo(call.params), {}).get(call.params["branch"])
    if sha is None:
        return 404, {}, {"message": "Branch not found"}
    branch = _from_example("GET", "/repos/o/r/branches/main", "200")
    branch["name"] = call.params["branch"]
    branch["commit"]["sha"] = sha
    return _conditional(fake, call.headers, branch)


def _list_pulls(fake: FakeGitHub, call: Call) -> Answer:
    return _conditional(fake, call.headers, list(fake.pulls.get(_repo(call.params), [])))


def pull_request(
    *, repo: str, number: int, branch: str, sha: str, fork_of: str | None = None
) -> dict[str, Any]:
    """An open pull request as ``GET /repos/{o}/{r}/pulls`` lists it (the spec's example)."""
    pull = _from_example("GET", "/repos/o/r/pulls", "200")[0]
    head_repo = fork_of or repo
    pull.update(number=number, state="open", draft=False)
    pull["head"].update(ref=branch, sha=sha, label=f"{head_repo.split('/')[0]}:{branch}")
    pull["head"]["repo"] = copy.deepcopy(pull["head"]["repo"])
    pull["head"]["repo"].update(full_name=head_repo, fork=fork_of is not None)
    pull["base"]["repo"] = copy.deepcopy(pull["base"]["repo"])
    pull["base"]["repo"].update(full_name=repo)
    return pull


Guard = Callable[[FakeGitHub, dict[str, str]], Answer | None]
Handler = Callable[[FakeGitHub, Call], Answer]

_ANSWERS: dict[str, tuple[Guard, Handler]] = {
    "apps/create-from-manifest": (_anyone, _create_from_manifest),
    "users/get-authenticated": (_user_guard, _authenticated_user),
    "repos/get": (_user_guard, _get_repository),
    "apps/get-authenticated": (_app_guard, _get_app),
    "apps/list-installations": (_app_guard, _list_installations),
    "apps/create-installation-access-token": (_app_guard, _create_token),
    "apps/list-repos-accessible-to-installation": (_installation_guard, _installation_repositories),
    "repos/create-deployment": (_installation_guard, _create_deployment),
    "repos/list-deployments": (_installation_guard, _list_deployments),
    "repos/create-deployment-status": (_installation_guard, _create_deployment_status),
    "repos/list-deployment-statuses": (_installation_guard, _list_deployment_statuses),
    "checks/create": (_installation_guard, _create_check_run),
    "checks/update": (_installation_guard, _update_check_run),
    "checks/list-for-ref": (_installation_guard, _list_check_runs_for_ref),
    "issues/create-comment": (_installation_guard, _create_comment),
    "issues/update-comment": (_installation_guard, _update_comment),
    "issues/list-comments": (_installation_guard, _list_comments),
    "repos/get-branch": (_installation_guard, _get_branch),
    "pulls/list": (_installation_guard, _list_pulls),
}


def _handler(fake: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, answer = fake.answer(self.command, self.path, headers, body)
            if not self.path.startswith("/login/oauth/") and not any(
                k.lower().startswith("x-ratelimit-") for k in extra
            ):
                extra = {**extra, **fake.rate_limit_headers()}
            data = b"" if answer is None or status == 304 else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")  # no handler thread outlives a test
            self.close_connection = True
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
