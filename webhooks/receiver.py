"""``POST /webhooks/github``: bounded read → verify → record delivery and job → 202.

The handler does nothing else (Flux's receiver, Argo's webhook handler): routing runs in
the controller's workers after the answer, and the periodic resync covers anything a lost
delivery would have triggered. Answers, per SPEC.md:

* 503 when no webhook secret is configured (every delivery is refused),
* 413 over 25 MiB — checked against ``Content-Length`` first and counted while reading,
* 408 (and the connection closed) when the body is not in after the body timeout
  (``SLIPWAY_WEBHOOK_BODY_TIMEOUT``, 10 s): a slow or lying client (a body trickled a byte
  at a time, or fewer bytes than announced) must not hold a connection forever,
* 401 for a missing or wrong ``X-Hub-Signature-256`` (nothing is recorded),
* 400 for a body that is not strict UTF-8 JSON, not an object, nested deeper than the
  parser allows, or holding a lone surrogate (``"\\ud800"``: valid JSON, but no database
  can store it as text), or for missing or oversized GitHub headers,
* 202 once the delivery is durably recorded, also for a repeated delivery id,
* 503 if the database could not record it (GitHub redelivers).

A signed body is still checked before it joins a group commit: a value the database
refuses would otherwise be found only at commit time (the writer then isolates it, see
:mod:`controller.store.deliveries`, but it should not get that far).

The lone-surrogate check walks the parsed payload only when the text contains a
surrogate escape at all (``\\uD800``-``\\uDFFF``; a pair is fine), so ordinary deliveries
pay one regular-expression scan. A client that goes away mid-body is logged in one line:
it is the client's problem, not ours, and a traceback per truncated request once filled
the error log.

Logs name the delivery id (truncated), the event and the exception type; never the body,
the signature or the secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from controller.errors import InvalidInput, TemporaryError
from controller.logs import bind_log_context
from controller.store.deliveries import DeliveryWriter, Incoming
from webhooks.signatures import SignatureError, verify

log = logging.getLogger(__name__)

MAX_BODY = 25 * 1024 * 1024
BODY_TIMEOUT = 10.0
MAX_HEADER = 100  # X-GitHub-Delivery and X-GitHub-Event (their columns' length)
MAX_REPO_NAME = 300
MAX_ACTION = 100

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _TooLarge(Exception):
    pass


class _BadBody(Exception):
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


def _has_lone_surrogate(payload: Any) -> bool:
    stack = [payload]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def parse_body(body: bytes) -> dict[str, Any]:
    """The delivery's JSON object; :class:`_BadBody` says why it is not one we can store."""
    try:
        text = body.decode("utf-8")  # strict: no invalid bytes, no encoded surrogates
    except UnicodeDecodeError as exc:
        raise _BadBody("body is not valid UTF-8") from exc
    try:
        payload = json.loads(text)
    except RecursionError as exc:
        raise _BadBody("body is nested too deeply") from exc
    except ValueError as exc:
        raise _BadBody("body is not JSON") from exc
    if not isinstance(payload, dict):
        raise _BadBody("body is not a JSON object")
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(payload):
        raise _BadBody("body holds a lone UTF-16 surrogate (not valid UTF-8 text)")
    return payload


def _storable(value: Any, limit: int) -> str | None:
    """``value`` if it is a string that fits its column; None if absent or not a string."""
    if not isinstance(value, str):
        return None
    if len(value) > limit or "\x00" in value:
        raise _BadBody("body has a repository name or action that is not one GitHub sends")
    return value


def _error(status: int, message: str, *, close: bool = False) -> JSONResponse:
    headers = {"connection": "close"} if close else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _label(delivery_id: str | None) -> str:
    return repr((delivery_id or "?")[:MAX_HEADER])


def make_endpoint(
    *,
    secret: Callable[[], str | None],
    writer: Callable[[], DeliveryWriter],
    body_timeout: Callable[[], float] = lambda: BODY_TIMEOUT,
) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def receive(request: Request) -> JSONResponse:
        bind_log_context(delivery=request.headers.get("x-github-delivery", "")[:100] or None)
        key = secret()
        if not key:
            return _error(
                503, "webhook secret not configured: set SLIPWAY_WEBHOOK_SECRET on the server"
            )
        delivery_id = request.headers.get("x-github-delivery")
        timeout = body_timeout()
        try:
            async with asyncio.timeout(timeout):
                body = await _read_bounded(request, MAX_BODY)
        except _TooLarge:
            return _error(413, "payload larger than 25 MiB")
        except TimeoutError:
            log.warning(
                "webhook delivery %s: body not received within %g s; closing the connection",
                _label(delivery_id),
                timeout,
            )
            return _error(408, f"request body not received within {timeout:g} s", close=True)
        except ClientDisconnect:
            log.warning(
                "webhook delivery %s: the client disconnected before sending its whole body",
                _label(delivery_id),
            )
            return _error(400, "client disconnected")
        try:
            verify(key, body, request.headers.get("x-hub-signature-256"))
        except SignatureError as exc:
            log.warning("refused webhook delivery %s: %s", _label(delivery_id), exc)
            return _error(401, f"invalid signature: {exc}")
        event = request.headers.get("x-github-event")
        if not event or not delivery_id:
            return _error(400, "missing X-GitHub-Event or X-GitHub-Delivery header")
        if len(delivery_id) > MAX_HEADER or len(event) > MAX_HEADER:
            return _error(400, "X-GitHub-Event or X-GitHub-Delivery header too long")
        try:
            payload = parse_body(body)
            repo = payload.get("repository")
            full_name = _storable(
                repo.get("full_name") if isinstance(repo, dict) else None, MAX_REPO_NAME
            )
            action = _storable(payload.get("action"), MAX_ACTION)
        except _BadBody as exc:
            return _error(400, str(exc))
        del payload
        item = Incoming(
            delivery_id=delivery_id,
            event=event,
            action=action,
            repo_lower=full_name.lower() if full_name is not None else None,
            body=body,
        )
        try:
            created = await writer().record(item)
        except InvalidInput as exc:
            log.warning(
                "could not store webhook delivery %s (%s): %s",
                _label(delivery_id),
                _label(event),
                exc,
            )
            return _error(400, exc.message)
        except Exception as exc:
            level = logging.WARNING if isinstance(exc, TemporaryError) else logging.ERROR
            log.log(
                level,
                "could not record webhook delivery %s (%s): %s; answered 503",
                _label(delivery_id),
                _label(event),
                exc if isinstance(exc, TemporaryError) else type(exc).__name__,
            )
            return _error(503, "could not record the delivery; GitHub will redeliver it")
        return JSONResponse({"delivery": delivery_id, "duplicate": not created}, status_code=202)

    return receive
