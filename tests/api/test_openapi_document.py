"""Issues 9e and 19: what the OpenAPI document says about the webhook and unknown methods.

Real server: the document is the one ``slipway serve`` answers at ``/openapi.json``.
"""

from __future__ import annotations

from support.server import Server


def test_the_webhook_route_is_documented(server: Server) -> None:
    doc = server.client.get("/openapi.json").json()
    operation = doc["paths"]["/webhooks/github"]["post"]
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert headers == {"X-GitHub-Event", "X-GitHub-Delivery", "X-Hub-Signature-256"}
    assert set(operation["responses"]) == {"202", "400", "401", "408", "413", "503"}
    assert operation["security"] == []
    assert server.deliver("ping", {"zen": "Keep it logically awesome."}).status_code == 202


def test_an_unsupported_method_answers_405_with_every_allowed_method(server: Server) -> None:
    response = server.api("OPTIONS", "/api/v1/projects")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert "error" in response.json()
    one = server.api("PUT", "/api/v1/projects/demo")
    assert one.headers["allow"] == "DELETE, GET, PATCH"


def test_management_operations_document_their_errors(server: Server) -> None:
    doc = server.client.get("/openapi.json").json()
    get_project = doc["paths"]["/api/v1/projects/{ref}"]["get"]["responses"]
    assert {"401", "404", "422"} <= set(get_project)
    trigger = doc["paths"]["/api/v1/tasks/{task_id}/trigger"]["post"]
    assert {"401", "403", "404", "409", "413"} <= set(trigger["responses"])
    assert "application/json" in trigger["requestBody"]["content"]
    create = doc["components"]["schemas"]["ProjectCreate"]["properties"]
    assert create["ref"]["pattern"] and create["repo"]["pattern"]


def test_null_for_a_field_that_cannot_be_null_is_refused_not_a_500(server: Server) -> None:
    server.create_project("demo", repo="octo-org/demo")
    for field in ("repo", "previews", "fork_previews", "preview_limit"):
        response = server.api("PATCH", "/api/v1/projects/demo", json={field: None})
        assert response.status_code == 422, (field, response.text)
    assert server.ok("GET", "/api/v1/projects/demo")["repo"] == "octo-org/demo"
