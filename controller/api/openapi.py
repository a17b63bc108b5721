"""What the OpenAPI document adds to FastAPI's: the webhook route; and a complete ``Allow``.

``POST /webhooks/github`` is a plain Starlette route (it reads its body itself, bounded,
and skips FastAPI's dependency solving on the hot path), so FastAPI cannot describe it.
Its operation is written here, by hand, from what ``webhooks/receiver.py`` answers, and
merged into the generated document once (FastAPI caches ``app.openapi_schema``).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI


def _header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
        "description": description,
    }


def _answers() -> dict[str, Any]:
    answers: dict[str, Any] = {
        "202": {
            "description": "Recorded (also for a repeated delivery id, processed once)",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "delivery": {"type": "string"},
                            "duplicate": {"type": "boolean"},
                        },
                        "required": ["delivery", "duplicate"],
                    }
                }
            },
        }
    }
    described = {
        400: "The body is not a JSON object, or X-GitHub-Event / X-GitHub-Delivery is missing",
        401: "Missing or wrong X-Hub-Signature-256",
        408: "The body did not arrive in time",
        413: "The body is larger than 25 MiB",
        503: "No webhook secret is configured, or the delivery could not be recorded",
    }
    schema = {
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    }
    for code, text in described.items():
        answers[str(code)] = {
            "description": text,
            "content": {"application/json": {"schema": schema}},
        }
    return answers


WEBHOOK_OPERATION: dict[str, Any] = {
    "tags": ["webhooks"],
    "summary": "GitHub webhook deliveries",
    "description": "Verified with the webhook secret, recorded durably, then answered; "
    "routing and deployments happen after the answer.",
    "operationId": "receive_github_webhook",
    "security": [],
    "parameters": [
        _header("X-GitHub-Event", "The event name (push, pull_request, installation, …)"),
        _header("X-GitHub-Delivery", "GitHub's delivery id (at most 100 characters)"),
        _header("X-Hub-Signature-256", "sha256=<HMAC-SHA256 of the body with the secret>"),
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    "responses": _answers(),
}


def document_webhook(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema["paths"]["/webhooks/github"] = {"post": WEBHOOK_OPERATION}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def allowed_methods(app: FastAPI, path: str) -> str:
    """Every method the document lists for ``path``, for a 405's ``Allow``.

    Starlette's own 405 names the methods of the first route that matched the path only;
    a path served by several routes (``GET`` and ``POST /projects``) needs all of them.
    The document is the one list of every route (FastAPI nests included routers). Where
    templates of different shapes match (``…/envvars/{env}/import`` and
    ``…/envvars/{env}/{name}``), the one with the fewest parameters names the path, as a
    literal segment is more specific than a parameter.
    """
    by_params: dict[int, set[str]] = {}
    for template, operations in app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if "{branch}" in template:
            pattern = pattern.replace("branches/[^/]+", "branches/.+")
        if re.fullmatch(pattern, path):
            found = by_params.setdefault(template.count("{"), set())
            found |= {method.upper() for method in operations}
    return ", ".join(sorted(by_params[min(by_params)])) if by_params else ""
