"""Encryption at rest: AES-256-GCM with key ids and associated data (``cryptography``).

``SLIPWAY_ENCRYPTION_KEY`` lists keys newest first, separated by commas. Every key string
(a generated Fernet key, or any random string of 32+ characters from a secret manager) is
stretched with HKDF-SHA256 into a 256-bit AES key; its **key id** is the first 8 bytes
of a second HKDF output, so the id names the key without revealing it.

A stored value is ``v2:<key id>:<urlsafe base64 of 12-byte nonce + ciphertext + tag>``.
Encryption always uses the newest key; decryption picks the key by id, so an old key is
needed only until ``slipway keys rotate`` has re-encrypted everything under the new one.

**Associated data** binds a ciphertext to where it belongs (an env var's value to its
project, environment, branch and name): the tag only verifies with the same bytes, so a
value copied into another row does not decrypt there. Callers pass it as ``aad``.

**Older data**: before AES-GCM, values were Fernet tokens (``gAAAAA…``) under the same
key strings. They still decrypt (with any configured key, no associated data), and
``keys rotate`` rewrites them as ``v2`` values — that is the migration path; nothing
is rewritten behind the user's back at start-up.

Errors never contain plaintext or key material: only "cannot be decrypted" and what to
configure.

**Decryption is memoised** (a bounded LRU of ``(token, aad) → plaintext``, per cipher,
in memory only): every run resolves its environment's variables afresh, and decrypting
500 values on each trigger would cost more than the run itself. A token is unique per
write (random nonce), so a changed value is a new token and can never hit a stale entry.
The trade-off is that recently used plaintexts stay in the process's memory, where they
pass through anyway on every run.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import threading
from collections import OrderedDict

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from controller.errors import PermanentError

PREFIX = "v2"
NONCE_BYTES = 12
MEMO_ENTRIES = 20000


def _hkdf(key: str, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key.encode())


def _check(key: str) -> None:
    if len(key) < 32:
        raise PermanentError(
            "SLIPWAY_ENCRYPTION_KEY is too short",
            hint="use a generated key or a random string of at least 32 characters",
        )


def _legacy_fernet(key: str) -> Fernet:
    """How the Fernet-era cipher read a key string (kept to decrypt old tokens)."""
    try:
        return Fernet(key.encode())
    except ValueError:
        derived = _hkdf(key, b"slipway-encryption-key")
        return Fernet(base64.urlsafe_b64encode(derived))


class _Key:
    def __init__(self, key: str) -> None:
        _check(key)
        self.aead = AESGCM(_hkdf(key, b"slipway-aes-256-gcm"))
        self.id = _hkdf(key, b"slipway-key-id")[:8].hex()
        self.fernet = _legacy_fernet(key)


class Cipher:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise PermanentError("no encryption key configured")
        self._keys = [_Key(k) for k in keys]
        self._by_id = {k.id: k for k in reversed(self._keys)}
        self._legacy = MultiFernet([k.fernet for k in self._keys])
        self._memo: OrderedDict[tuple[str, bytes], str] = OrderedDict()
        self._memo_lock = threading.Lock()

    @property
    def current_key_id(self) -> str:
        return self._keys[0].id

    def encrypt(self, plaintext: str, *, aad: bytes = b"") -> str:
        key = self._keys[0]
        nonce = os.urandom(NONCE_BYTES)
        sealed = key.aead.encrypt(nonce, plaintext.encode(), aad)
        return f"{PREFIX}:{key.id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, *, aad: bytes = b"") -> str:
        with self._memo_lock:
            plain = self._memo.get((token, aad))
            if plain is not None:
                self._memo.move_to_end((token, aad))
                return plain
        plain = self._decrypt(token, aad)
        with self._memo_lock:
            self._memo[(token, aad)] = plain
            if len(self._memo) > MEMO_ENTRIES:
                self._memo.popitem(last=False)
        return plain

    def _decrypt(self, token: str, aad: bytes) -> str:
        if not token.startswith(PREFIX + ":"):
            return self._decrypt_legacy(token)
        _, key_id, body = [*token.split(":", 2), "", ""][:3]
        key = self._by_id.get(key_id)
        if key is None:
            raise PermanentError(
                f"a stored value was encrypted with key {key_id}, which is not configured",
                hint="SLIPWAY_ENCRYPTION_KEY must list that key (after the new one) until "
                "`slipway keys rotate` has run",
            )
        try:
            raw = base64.urlsafe_b64decode(body.encode())
            plain = key.aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError, binascii.Error) as exc:
            raise PermanentError(
                "a stored value cannot be decrypted: it is damaged or does not belong here"
            ) from exc
        return plain.decode()

    def _decrypt_legacy(self, token: str) -> str:
        try:
            return self._legacy.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise PermanentError(
                "a stored value cannot be decrypted with the configured encryption key",
                hint="SLIPWAY_ENCRYPTION_KEY must list the key it was encrypted with",
            ) from exc

    def key_id_of(self, token: str) -> str | None:
        """The key id a value is encrypted with; ``None`` for a legacy Fernet token."""
        if token.startswith(PREFIX + ":"):
            return token.split(":", 2)[1]
        return None

    def is_current(self, token: str) -> bool:
        return self.key_id_of(token) == self.current_key_id

    def rotate(self, token: str, *, aad: bytes = b"") -> str:
        """Re-encrypt under the newest key (a legacy token becomes a ``v2`` value)."""
        return self.encrypt(self.decrypt(token, aad=aad), aad=aad)


def new_secret_key() -> str:
    """A run-triggering key for one environment: ``sk_`` + 192 random bits."""
    return "sk_" + secrets.token_urlsafe(24)


def key_hash(key: str) -> str:
    """Lookup hash for a secret key (keys are random, so a plain SHA-256 suffices)."""
    return hashlib.sha256(key.encode()).hexdigest()
