"""The error answers the API documents in its OpenAPI schema.

Every error body is ``{"error": message, "hint"?: how to fix it}`` (see ``app.py``'s
exception handlers). Routers list the statuses they can answer with :func:`error_responses`,
so that the schema says what the API does (schemathesis checks it in CI); path parameter
types carry the patterns the handlers enforce, so a schema-valid request is not refused.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel

from controller.models import REF_PATTERN

DESCRIPTIONS = {
    400: "The request cannot succeed as it is (the message says how to fix it)",
    401: "Missing or invalid bearer token",
    403: "The key is valid but belongs to another environment",
    404: "A named project, environment, deployment, version, task or run does not exist",
    408: "The client did not send the whole body in time",
    409: "The request contradicts the current state (archived branch, disconnected project, …)",
    413: "The body is larger than the server accepts",
    422: "The request is malformed (the message says which field)",
    503: "Temporarily unavailable; try again",
}


class ErrorBody(BaseModel):
    error: str
    hint: str | None = None


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


ENV_PATTERN = "^(production|prod|staging|stg|preview)$"

ProjectRef = Annotated[str, Path(pattern=REF_PATTERN.pattern, description="The project's ref")]
EnvName = Annotated[
    str, Path(pattern=ENV_PATTERN, description="production (or prod), staging (or stg), preview")
]
