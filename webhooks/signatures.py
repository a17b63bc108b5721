"""HMAC-SHA256 webhook signatures, as GitHub sends them in ``X-Hub-Signature-256``.

Pure functions, no I/O. Verification fails closed both ways: a configured secret with a
missing signature is refused, and so is a signature when no secret is configured (the
receiver answers 503 before it gets here, but the function does not rely on that).
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


class SignatureError(Exception):
    """The delivery's signature is missing, malformed or wrong."""


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: str | bytes, body: bytes) -> str:
    """Return the ``X-Hub-Signature-256`` value GitHub would send for ``body``."""
    return PREFIX + hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def verify(secret: str | bytes | None, body: bytes, header: str | None) -> None:
    """Raise :class:`SignatureError` unless ``header`` is ``body`` signed with ``secret``."""
    if not secret:
        raise SignatureError("no webhook secret is configured")
    if not header:
        raise SignatureError("missing X-Hub-Signature-256 header")
    if not header.startswith(PREFIX):
        raise SignatureError("X-Hub-Signature-256 must start with 'sha256='")
    expected = sign(secret, body)
    # compare_digest on equal-length ASCII bytes: constant time in the secret material.
    if not hmac.compare_digest(expected.encode("ascii"), header.strip().encode("ascii", "replace")):
        raise SignatureError("signature does not match the body")
