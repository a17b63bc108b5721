"""``POST /webhooks/github``: bounded read → verify → record delivery and job → 202.

The handler does nothing else (Flux's receiver, Argo's webhook handler): routing runs in
the controller's workers after the answer, and the periodic resync covers anything a lost
delivery would have triggered. Answers, per SPEC.md:

* 503 when no webhook secret is configured (every delivery is refused),
* 413 over 25 MiB — checked against ``Content-Length`` first and counted while reading,
* 401 for a missing or wrong ``X-Hub-Signature-256`` (nothing is recorded),
* 400 for a body that is not a JSON object, or missing GitHub headers,
* 202 once the delivery is durably recorded, also for a repeated delivery id,
* 503 if the database could not record it (GitHub redelivers).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse

from controller.logs import bind_log_context
from controller.store.deliveries import DeliveryWriter, Incoming
from webhooks.signatures import SignatureError, verify

log = logging.getLogger(__name__)

MAX_BODY = 25 * 1024 * 1024


class _TooLarge(Exception):
    pass


async def _read_bounded(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def make_endpoint(
    *, secret: Callable[[], str | None], writer: Callable[[], DeliveryWriter]
) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def receive(request: Request) -> JSONResponse:
        bind_log_context(delivery=request.headers.get("x-github-delivery", "")[:100] or None)
        key = secret()
        if not key:
            return _error(
                503, "webhook secret not configured: set SLIPWAY_WEBHOOK_SECRET on the server"
            )
        try:
            body = await _read_bounded(request, MAX_BODY)
        except _TooLarge:
            return _error(413, "payload larger than 25 MiB")
        try:
            verify(key, body, request.headers.get("x-hub-signature-256"))
        except SignatureError as exc:
            log.warning(
                "refused webhook delivery %s: %s",
                request.headers.get("x-github-delivery", "?"),
                exc,
            )
            return _error(401, f"invalid signature: {exc}")
        event = request.headers.get("x-github-event")
        delivery_id = request.headers.get("x-github-delivery")
        if not event or not delivery_id or len(delivery_id) > 100:
            return _error(400, "missing X-GitHub-Event or X-GitHub-Delivery header")
        try:
            payload = json.loads(body)
        except ValueError:
            return _error(400, "body is not JSON")
        if not isinstance(payload, dict):
            return _error(400, "body is not a JSON object")
        repo = payload.get("repository")
        full_name = repo.get("full_name") if isinstance(repo, dict) else None
        action = payload.get("action")
        item = Incoming(
            delivery_id=delivery_id,
            event=event,
            action=action if isinstance(action, str) else None,
            repo_lower=full_name.lower() if isinstance(full_name, str) else None,
            body=body,
        )
        try:
            created = await writer().record(item)
        except Exception:
            return _error(503, "could not record the delivery; GitHub will redeliver it")
        return JSONResponse({"delivery": delivery_id, "duplicate": not created}, status_code=202)

    return receive
