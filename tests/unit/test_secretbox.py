"""Sealed add-mask values: round trip, tamper, another key, never the plain text."""

from __future__ import annotations

from runevents.secretbox import SecretBox, new_key


def test_seal_and_open_round_trip_without_the_plain_text() -> None:
    box = SecretBox(bytes.fromhex(new_key()))
    for value in ["tok-abc-123", "ü€😀 and more", "x" * 1000, ""]:
        sealed = box.seal(value)
        assert box.open(sealed) == value
        if value:
            assert value not in sealed
    # a fresh nonce each time: equal values are not recognisable in the table
    assert box.seal("same") != box.seal("same")
    assert box.digest("same") == box.digest("same") != box.digest("other")


def test_a_tampered_or_foreign_seal_opens_to_none() -> None:
    box = SecretBox(b"k" * 32)
    sealed = box.seal("tok-abc-123")
    flipped = sealed[:30] + ("A" if sealed[30] != "A" else "B") + sealed[31:]
    assert box.open(flipped) is None
    assert SecretBox(b"j" * 32).open(sealed) is None
    assert box.open("not base64 !!") is None
    assert box.open("") is None
