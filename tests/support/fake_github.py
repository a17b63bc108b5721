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
"""

from __future__ import annotations

import copy
import functools
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
        # Promotion gates: the app's GitHub deployments (with their statuses) and check
        # runs, by lowercase repository (see add_deployment, add_check_run).
        self.deployments: dict[str, list[dict[str, Any]]] = {}
        self.check_runs: dict[str, list[dict[str, Any]]] = {}
        self._ids = iter(range(7_000_001, 8_000_000))
        self._lock = threading.Lock()
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
        spec_op = match("GET", "/app/installations")
        assert spec_op is not None
        installation = example(spec_op[0], "200")[0]
        installation.update(id=installation_id, app_id=self.app_id, app_slug=self.slug)
        installation["account"]["login"] = account
        self.installations[installation_id] = installation
        listing = match("GET", "/installation/repositories")
        assert listing is not None
        template = example(listing[0], "200")["repositories"][0]
        rows = []
        for n, full_name in enumerate(repos, start=1):
            repo = copy.deepcopy(template)
            owner, _, name = full_name.partition("/")
            repo.update(id=installation_id * 1000 + n, name=name, full_name=full_name)
            repo["owner"]["login"] = owner
            rows.append(repo)
        self.repositories[installation_id] = rows

    # -- promotion gates: what an app's pipeline reports on GitHub --------------------

    def add_deployment(
        self,
        repo: str,
        *,
        sha: str,
        environment: str,
        states: list[str] = (),  # type: ignore[assignment]
    ) -> int:
        """A GitHub deployment of ``sha`` in ``environment`` with statuses ``states``."""
        found = match("GET", "/repos/o/r/deployments")
        assert found is not None
        deployment = example(found[0], "200")[0]
        deployment.update(id=next(self._ids), sha=sha, environment=environment, ref=sha)
        deployment["statuses"] = []
        with self._lock:
            self.deployments.setdefault(repo.lower(), []).append(deployment)
        for state in states:
            self.add_deployment_status(repo, deployment["id"], state)
        return int(deployment["id"])

    def add_deployment_status(self, repo: str, deployment_id: int, state: str) -> int:
        found = match("GET", "/repos/o/r/deployments/1/statuses")
        assert found is not None
        status = example(found[0], "200")[0]
        with self._lock:
            deployment = next(d for d in self.deployments[repo.lower()] if d["id"] == deployment_id)
            status.update(
                id=next(self._ids),
                state=state,
                environment=deployment["environment"],
                log_url=f"https://ci.example.com/deploys/{deployment_id}/log",
            )
            deployment["statuses"].insert(0, status)  # GitHub lists the newest first
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
        found = match("GET", "/repos/o/r/commits/abc/check-runs")
        assert found is not None
        run = example(found[0], "200")["check_runs"][0]
        run.update(
            id=next(self._ids), head_sha=sha, name=name, status=status, conclusion=conclusion
        )
        with self._lock:
            self.check_runs.setdefault(repo.lower(), []).append(run)
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
        operation, params, problems = validate_request(
            method, parts.path, query, body, headers.get("content-type", "")
        )
        with self._lock:
            self.requests.append((method, parts.path, operation.operation_id if operation else "?"))
            if problems:
                self.errors.append(f"{method} {parts.path}: " + "; ".join(problems))
        if operation is None or problems:
            return 400, {}, {"message": "invalid request (fake GitHub)", "errors": problems}
        with self._lock:
            queued = self._failures.get(operation.operation_id)
            failure = queued.pop(0) if queued else None
        if failure is not None:
            return failure.status, failure.headers, failure.body
        handler = _STATEFUL.get(operation.operation_id)
        if handler is None:
            for status in ("200", "201", "202", "204"):
                if status in operation.op["responses"]:
                    return int(status), {}, example(operation, status)
            return 500, {}, {"message": f"no example answer for {operation.operation_id}"}
        queried = {f"?{name}": values[-1] for name, values in query.items()}
        status, answer = handler(self, headers, {**params, **queried})
        return status, {}, answer

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

    def _installation_of(self, headers: dict[str, str]) -> int | None:
        auth = headers.get("authorization", "")
        token = auth.split(" ", 1)[1] if " " in auth else ""
        now = datetime.now(UTC)
        with self._lock:
            for issued in self.issued:
                if secrets.compare_digest(issued.token, token) and issued.expires_at > now:
                    return issued.installation_id
        return None


def _get_app(fake: FakeGitHub, headers: dict[str, str], _: dict[str, str]) -> tuple[int, Any]:
    denied = fake._app(headers)
    if denied:
        return denied
    found = match("GET", "/app")
    assert found is not None
    app = example(found[0], "200")
    app.update(id=fake.app_id, slug=fake.slug, name=fake.slug)
    app["html_url"] = f"https://github.com/apps/{fake.slug}"
    return 200, app


def _list_installations(
    fake: FakeGitHub, headers: dict[str, str], _: dict[str, str]
) -> tuple[int, Any]:
    denied = fake._app(headers)
    return denied or (200, list(fake.installations.values()))


def _create_token(
    fake: FakeGitHub, headers: dict[str, str], params: dict[str, str]
) -> tuple[int, Any]:
    denied = fake._app(headers)
    if denied:
        return denied
    installation_id = int(params["installation_id"])
    if installation_id not in fake.installations:
        return 404, {"message": "Not Found"}
    expires_at = datetime.now(UTC).replace(microsecond=0) + fake.token_lifetime
    issued = Issued("ghs_" + secrets.token_hex(18), installation_id, expires_at)
    with fake._lock:
        fake.issued.append(issued)
    found = match("POST", "/app/installations/1/access_tokens")
    assert found is not None
    answer = example(found[0], "201")
    answer.update(token=issued.token, expires_at=expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    answer.pop("repositories", None)
    return 201, answer


def _installation_repositories(
    fake: FakeGitHub, headers: dict[str, str], _: dict[str, str]
) -> tuple[int, Any]:
    installation_id = fake._installation_of(headers)
    if installation_id is None:
        return 401, {"message": "Bad credentials"}
    repos = fake.repositories.get(installation_id, [])
    return 200, {"total_count": len(repos), "repositories": repos}


def _repo_key(params: dict[str, str]) -> str:
    return f"{params['owner']}/{params['repo']}".lower()


def _list_deployments(
    fake: FakeGitHub, headers: dict[str, str], params: dict[str, str]
) -> tuple[int, Any]:
    if fake._installation_of(headers) is None:
        return 401, {"message": "Bad credentials"}
    with fake._lock:
        rows = list(fake.deployments.get(_repo_key(params), []))
    sha, env = params.get("?sha"), params.get("?environment")
    rows = [d for d in rows if (sha is None or d["sha"] == sha) and (env is None or d["environment"] == env)]  # fmt: skip
    return 200, [{k: v for k, v in d.items() if k != "statuses"} for d in reversed(rows)]


def _list_deployment_statuses(
    fake: FakeGitHub, headers: dict[str, str], params: dict[str, str]
) -> tuple[int, Any]:
    if fake._installation_of(headers) is None:
        return 401, {"message": "Bad credentials"}
    with fake._lock:
        for d in fake.deployments.get(_repo_key(params), []):
            if str(d["id"]) == params["deployment_id"]:
                return 200, list(d["statuses"])
    return 404, {"message": "Not Found"}


def _list_check_runs(
    fake: FakeGitHub, headers: dict[str, str], params: dict[str, str]
) -> tuple[int, Any]:
    if fake._installation_of(headers) is None:
        return 401, {"message": "Bad credentials"}
    name = params.get("?check_name")
    with fake._lock:
        rows = [
            r
            for r in fake.check_runs.get(_repo_key(params), [])
            if r["head_sha"] == params["ref"] and (name is None or r["name"] == name)
        ]
    return 200, {"total_count": len(rows), "check_runs": rows}


_STATEFUL = {
    "repos/list-deployments": _list_deployments,
    "repos/list-deployment-statuses": _list_deployment_statuses,
    "checks/list-for-ref": _list_check_runs,
    "apps/get-authenticated": _get_app,
    "apps/list-installations": _list_installations,
    "apps/create-installation-access-token": _create_token,
    "apps/list-repos-accessible-to-installation": _installation_repositories,
}


def _handler(fake: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, answer = fake.answer(self.command, self.path, headers, body)
            data = b"" if answer is None else json.dumps(answer).encode()
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
