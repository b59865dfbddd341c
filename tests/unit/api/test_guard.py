"""The open-mode Host and Origin rules as pure functions (contract section 7)."""

from __future__ import annotations

import pytest

from runevents.api.guard import is_loopback_host, is_own_origin, split_host


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST:8000",
        "127.0.0.1",
        "127.0.0.1:8000",
        "127.1.2.3:1",
        "[::1]",
        "[::1]:8000",
    ],
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8000",
        "localhost.evil.example",
        "localhost.",  # resolved through DNS, not the loopback name
        "127.0.0.1.nip.io",
        "127.1",  # odd IPv4 spellings a resolver might take
        "0x7f.0.0.1",
        "2130706433",
        "10.0.0.1:8000",
        "[::2]:8000",
        "::1",  # an IPv6 address must be bracketed in Host
        "127.0.0.1:80x",
        "[::1]x",
        "",
    ],
)
def test_other_hosts(host: str) -> None:
    assert not is_loopback_host(host)


def test_split_host() -> None:
    assert split_host("a:1") == ("a", "1")
    assert split_host("[::1]:8000") == ("::1", "8000")
    assert split_host("[::1") is None


@pytest.mark.parametrize(
    ("origin", "host", "own"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("https://localhost:8443", "localhost:8443", True),
        ("HTTP://LocalHost:8000", "localhost:8000", True),
        ("http://127.0.0.1:8001", "127.0.0.1:8000", False),
        ("http://localhost:8000", "127.0.0.1:8000", False),
        ("https://evil.example", "127.0.0.1:8000", False),
        ("null", "127.0.0.1:8000", False),
        ("file://", "127.0.0.1:8000", False),
        ("http://127.0.0.1:8000", "", False),
    ],
)
def test_own_origin(origin: str, host: str, own: bool) -> None:
    assert is_own_origin(origin, host) is own
