"""Encryption at rest with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``).

``SLIPWAY_ENCRYPTION_KEY`` may list several keys, newest first, separated by commas:
everything is encrypted with the first and decrypted with whichever matches
(``MultiFernet``), which is what ``slipway keys rotate`` builds on. A key that is not a
Fernet key (any string of 32+ characters) is stretched with HKDF-SHA256, so a passphrase
from a secret manager works too.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from controller.errors import PermanentError


def _fernet(key: str) -> Fernet:
    try:
        return Fernet(key.encode())
    except ValueError:
        if len(key) < 32:
            raise PermanentError(
                "SLIPWAY_ENCRYPTION_KEY is too short",
                hint="use a Fernet key or a random string of at least 32 characters",
            ) from None
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"slipway-encryption-key"
        ).derive(key.encode())
        return Fernet(base64.urlsafe_b64encode(derived))


class Cipher:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise PermanentError("no encryption key configured")
        self._fernet = MultiFernet([_fernet(k) for k in keys])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise PermanentError(
                "a stored value cannot be decrypted with the configured encryption key",
                hint="SLIPWAY_ENCRYPTION_KEY must list the key it was encrypted with",
            ) from exc

    def rotate(self, token: str) -> str:
        return self._fernet.rotate(token.encode()).decode()


def new_secret_key() -> str:
    """A run-triggering key for one environment: ``sk_`` + 192 random bits."""
    return "sk_" + secrets.token_urlsafe(24)


def key_hash(key: str) -> str:
    """Lookup hash for a secret key (keys are random, so a plain SHA-256 suffices)."""
    return hashlib.sha256(key.encode()).hexdigest()
