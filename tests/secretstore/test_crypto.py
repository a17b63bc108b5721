"""AES-256-GCM at rest: key ids, associated data, rotation, and Fernet-era values."""

from __future__ import annotations

import base64

import pytest
from cryptography.fernet import Fernet

from controller.errors import PermanentError
from controller.secretstore.crypto import Cipher

K1 = base64.urlsafe_b64encode(b"k1" * 16).decode()  # a Fernet key, as generated ones
K2 = "a passphrase from a secret manager, 32+ characters long"


def test_a_value_round_trips_and_names_its_key() -> None:
    cipher = Cipher([K1])
    token = cipher.encrypt("hunter2-value", aad=b"row-1")
    assert token.startswith(f"v2:{cipher.current_key_id}:")
    assert "hunter2" not in token
    assert cipher.decrypt(token, aad=b"row-1") == "hunter2-value"
    assert cipher.encrypt("hunter2-value", aad=b"row-1") != token  # a fresh nonce each time


def test_a_value_copied_to_another_row_does_not_decrypt() -> None:
    cipher = Cipher([K1])
    token = cipher.encrypt("value", aad=b"env-var\x001\x00production\x00\x00API_KEY")
    with pytest.raises(PermanentError) as caught:
        cipher.decrypt(token, aad=b"env-var\x001\x00staging\x00\x00API_KEY")
    assert "value" not in str(caught.value).replace("stored value", "")


def test_a_tampered_value_is_refused() -> None:
    cipher = Cipher([K1])
    token = cipher.encrypt("value")
    broken = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    with pytest.raises(PermanentError):
        cipher.decrypt(broken)


def test_old_keys_decrypt_until_rotation_and_the_newest_encrypts() -> None:
    old = Cipher([K1])
    token = old.encrypt("v", aad=b"a")
    both = Cipher([K2, K1])
    assert both.decrypt(token, aad=b"a") == "v"
    assert not both.is_current(token)
    rotated = both.rotate(token, aad=b"a")
    assert both.is_current(rotated)
    assert Cipher([K2]).decrypt(rotated, aad=b"a") == "v"
    with pytest.raises(PermanentError, match="not configured"):
        Cipher([K2]).decrypt(token, aad=b"a")


def test_fernet_tokens_from_an_existing_database_still_decrypt_and_rotate() -> None:
    legacy_fernet_key = Fernet(K1.encode())
    legacy = legacy_fernet_key.encrypt(b"sk_old_secret_key").decode()
    cipher = Cipher([K2, K1])
    assert cipher.decrypt(legacy) == "sk_old_secret_key"
    assert cipher.key_id_of(legacy) is None
    assert cipher.rotate(legacy).startswith(f"v2:{cipher.current_key_id}:")


def test_key_ids_do_not_reveal_the_key_and_short_keys_are_refused() -> None:
    cipher = Cipher([K1])
    assert cipher.current_key_id not in K1 and len(cipher.current_key_id) == 16
    assert Cipher([K2]).current_key_id != cipher.current_key_id
    with pytest.raises(PermanentError, match="too short"):
        Cipher(["short"])
