"""Seal short secrets for storage: encrypt-then-MAC from HMAC-SHA256 alone.

Used for the ``::add-mask::`` values of external runs, which must outlive one
process (the next batch may reach another replica) but must never sit in the
database as plain text: a dump or a ``grep`` of the database must not find
them. The key lives in the same database (``server_keys``), so this protects
against reading the table, not against someone holding the whole database --
who could not read the value from any log either, only from this table.

Construction (standard library only): keys for encryption and MAC derived from
the master key with HMAC; a random 16-byte nonce; the keystream is
HMAC-SHA256(enc_key, nonce || counter) blocks (HMAC as a PRF in counter mode);
the tag HMAC-SHA256(mac_key, nonce || ciphertext) truncated to 16 bytes is
checked in constant time before anything is decrypted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

#: bytes of a generated master key
KEY_BYTES = 32
_NONCE = 16
_TAG = 16
_BLOCK = hashlib.sha256().digest_size


def new_key() -> str:
    """A random master key, as stored (hex)."""
    return secrets.token_hex(KEY_BYTES)


class SecretBox:
    """Seal and open strings with one master key."""

    def __init__(self, master: bytes) -> None:
        self._enc = hmac.new(master, b"runevents secretbox enc", hashlib.sha256).digest()
        self._mac = hmac.new(master, b"runevents secretbox mac", hashlib.sha256).digest()
        self._id = hmac.new(master, b"runevents secretbox id", hashlib.sha256).digest()

    def digest(self, value: str) -> str:
        """A keyed hash naming ``value`` (64 hex digits): equal values, equal digests."""
        data = value.encode("utf-8", "surrogatepass")
        return hmac.new(self._id, data, hashlib.sha256).hexdigest()

    def _stream(self, nonce: bytes, size: int) -> bytes:
        blocks = [
            hmac.new(self._enc, nonce + counter.to_bytes(4, "big"), hashlib.sha256).digest()
            for counter in range(-(-size // _BLOCK))
        ]
        return b"".join(blocks)[:size]

    def seal(self, value: str) -> str:
        """``value`` encrypted and authenticated, as URL-safe base64 text."""
        data = value.encode("utf-8", "surrogatepass")
        nonce = os.urandom(_NONCE)
        stream = self._stream(nonce, len(data))
        cipher = (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(
            len(data), "big"
        )
        tag = hmac.new(self._mac, nonce + cipher, hashlib.sha256).digest()[:_TAG]
        return base64.urlsafe_b64encode(nonce + cipher + tag).decode("ascii")

    def open(self, sealed: str) -> str | None:
        """The value sealed in ``sealed``, or None if it was not sealed with this key."""
        try:
            raw = base64.urlsafe_b64decode(sealed.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return None
        if len(raw) < _NONCE + _TAG:
            return None
        nonce, cipher, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
        expected = hmac.new(self._mac, nonce + cipher, hashlib.sha256).digest()[:_TAG]
        if not hmac.compare_digest(tag, expected):
            return None
        stream = self._stream(nonce, len(cipher))
        data = (int.from_bytes(cipher, "big") ^ int.from_bytes(stream, "big")).to_bytes(
            len(cipher), "big"
        )
        return data.decode("utf-8", "surrogatepass")
