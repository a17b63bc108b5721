"""Issue 7 item 19 for the env var routes: their schema says exactly what they do.

One real server for the module (the checks only read the document or write throwaway
variables). Each test pins one rule the schemathesis run depends on: strict JSON types
in bodies, the name pattern (reserved ``SLIPWAY_*`` included) equal to the store's own
check, the ``x-slipway-branch`` header's documented form enforced with a 400, and the
import bound answered 413, every one of them listed in the operation's ``responses``.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.server import Server

from controller.errors import InvalidInput
from controller.secretstore.variables import validate_name

BASE = "/api/v1/projects/demo/envvars"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(Path(tmp_path_factory.mktemp("envvars-schema")) / "data")
    try:
        srv.start()
        srv.create_project("demo", repo="octo-org/demo")
        yield srv
    finally:
        srv.close()


def _operations(server: Server) -> dict[str, dict[str, Any]]:
    doc = server.client.get("/openapi.json").json()
    return {
        f"{method.upper()} {path}": operation
        for path, operations in doc["paths"].items()
        if "envvar" in path
        for method, operation in operations.items()
    }


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "production", {"variables": {"A": "1"}, "fork_safe": 0}),
        ("POST", "production", {"variables": {"A": "1"}, "secret": "true"}),
        ("POST", "production", {"name": "A", "value": 1}),
        ("PUT", "production/A", {"value": "1", "secret": 1}),
        ("PUT", "production/A", {"value": 1}),
    ],
)
def test_bodies_take_json_types_strictly(
    server: Server, method: str, path: str, body: dict[str, Any]
) -> None:
    response = server.api(method, f"{BASE}/{path}", json=body)
    assert response.status_code == 422, response.text
    assert "A" not in {v["name"] for v in server.ok("GET", f"{BASE}/production")}


def test_a_body_is_one_form_or_the_other(server: Server) -> None:
    for body in ({"name": "A"}, {"name": "A", "value": "1", "variables": {"B": "2"}}, {}):
        response = server.api("POST", f"{BASE}/staging", json=body)
        assert response.status_code == 422, (body, response.text)
    create = _operations(server)["POST /api/v1/projects/{ref}/envvars/{env}"]
    schema = create["requestBody"]["content"]["application/json"]["schema"]
    assert len(schema["anyOf"]) == 2


def _name_patterns(server: Server) -> set[str]:
    ops = _operations(server)
    found = set()
    for key in ("GET", "PUT", "DELETE"):
        params = ops[f"{key} /api/v1/projects/{{ref}}/envvars/{{env}}/{{name}}"]["parameters"]
        found |= {p["schema"]["pattern"] for p in params if p["name"] == "name"}
    doc = server.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    found.add(schemas["VariablesWrite"]["properties"]["variables"]["propertyNames"]["pattern"])
    found.add(schemas["NamedWrite"]["properties"]["name"]["pattern"])
    return found


def _store_accepts(name: str) -> bool:
    try:
        validate_name(name)
    except InvalidInput:
        return False
    return True


def test_the_documented_name_pattern_is_the_stores_rule(server: Server) -> None:
    patterns = _name_patterns(server)
    assert len(patterns) == 1
    pattern = re.compile(patterns.pop())
    rng = random.Random(7)
    pieces = ["SLIPWAY_", "SLIPWAY_BUILD_", "BUILD_", "_", "9", "A", "x", "-", "é"]
    alphabet = string.ascii_letters + string.digits + "_-."
    names = ["SLIPWAY_X", "SLIPWAY_BUILD_", "SLIPWAY_BUILD_9", "SLIPWAY_BUILD_X", "A" * 256]
    for _ in range(5000):
        name = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 3)))
        names.append(name + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4))))
    for name in names:
        assert bool(pattern.fullmatch(name)) == _store_accepts(name), name


def test_reserved_names_are_refused_and_build_names_taken(server: Server) -> None:
    for method, path, body in (
        ("POST", "production", {"variables": {"SLIPWAY_RUN_ID": "1"}}),
        ("POST", "production", {"name": "SLIPWAY_X", "value": "1"}),
        ("PUT", "production/SLIPWAY_X", {"value": "1"}),
        ("GET", "production/SLIPWAY_X", None),
        ("DELETE", "production/SLIPWAY_X", None),
    ):
        response = server.api(method, f"{BASE}/{path}", json=body)
        assert response.status_code == 422, (method, path, response.text)
        assert "reserved" in response.json()["error"]
    assert server.ok("PUT", f"{BASE}/production/SLIPWAY_BUILD_TOKEN", json={"value": "t"})


HEADER_ROUTES = [
    "/api/v1/projects/{ref}/envvars/{env}",
    "/api/v1/projects/{ref}/environments/{env}/versions",
    "/api/v1/projects/{ref}/environments/{env}/secret-key",
]


@pytest.mark.parametrize(
    "header",
    ["a%ZZ", "a%", "feat%7E1", "feat%3a1", "a b", "%FF", "%C3", "%ED%A0%80", "x" * 256],
)
def test_a_header_that_is_not_a_branch_answers_400(server: Server, header: str) -> None:
    doc = server.client.get("/openapi.json").json()
    for route in HEADER_ROUTES:
        path = route.format(ref="demo", env="preview")
        response = server.api("GET", path, headers={"x-slipway-branch": header})
        assert response.status_code == 400, (route, response.text)
        assert "x-slipway-branch" in response.json()["error"]
        operation = doc["paths"][route]["get"]
        assert "400" in operation["responses"]
        pattern = next(
            p["schema"]["pattern"]
            for p in operation["parameters"]
            if p["name"] == "x-slipway-branch"
        )
        assert not re.fullmatch(pattern, header)


def test_a_percent_encoded_branch_round_trips(server: Server) -> None:
    branch = "feat/ünï/cödé#1%"
    wire = "feat/%C3%BCn%C3%AF/c%C3%B6d%C3%A9%231%25"
    server.ok(
        "PUT", f"{BASE}/preview/ROUND", json={"value": "1"}, headers={"x-slipway-branch": wire}
    )
    read = server.api("GET", f"{BASE}/preview/ROUND", params={"branch": branch})
    assert read.status_code == 200 and read.json()["value"] == "1", read.text


def test_an_import_over_the_bound_answers_413(server: Server) -> None:
    response = server.api("POST", f"{BASE}/production/import", content=b"A=1\n" + b"#" * (4 << 20))
    assert response.status_code == 413, response.text
    assert (
        "413"
        in _operations(server)["POST /api/v1/projects/{ref}/envvars/{env}/import"]["responses"]
    )


def test_every_env_var_operation_documents_its_errors(server: Server) -> None:
    for label, operation in _operations(server).items():
        assert {"400", "401", "404", "422"} <= set(operation["responses"]), label
