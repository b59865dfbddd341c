"""Where a replica says it can be reached (replicas.default_advertise_url) and how fresh it is."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from runevents import replicas
from runevents.replicas import default_advertise_url, refresh_interval, stale_after
from runevents.settings import Settings


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("10.0.0.5", "http://10.0.0.5:8000"),
        ("::1", "http://[::1]:8000"),
        ("[::1]", "http://[::1]:8000"),
        ("api.internal", "http://api.internal:8000"),
    ],
)
def test_a_specific_bind_address_is_advertised_as_it_is(host: str, url: str) -> None:
    assert default_advertise_url(host, 8000) == url


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_wildcard_bind_advertises_this_machines_address(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 127.0.0.1 would send a replica on another machine to itself
    monkeypatch.setattr(replicas, "machine_address", lambda: "10.1.2.3")
    assert default_advertise_url(host, 9000) == "http://10.1.2.3:9000"


def test_a_wildcard_bind_without_a_routable_address_falls_back_to_loopback_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(replicas, "machine_address", lambda: None)
    with caplog.at_level(logging.WARNING, logger="runevents.replicas"):
        assert default_advertise_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert "RUNEVENTS_ADVERTISE_URL" in caplog.text


def test_machine_address_is_never_loopback() -> None:
    found = replicas.machine_address()
    assert found is None or not found.startswith("127.")


def test_refresh_and_staleness_follow_the_writer_lease() -> None:
    assert refresh_interval(8.0) == 4.0
    assert refresh_interval(0.5) == 1.0
    # a live lease holder renews every quarter lease, so 3 refreshes missed means gone
    assert stale_after(8.0) == 12.0


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000"),
        ("https://replica-1.internal:8443/", "https://replica-1.internal:8443"),
        ("  ", None),
    ],
)
def test_an_advertise_url_setting_is_kept_without_its_trailing_slash(
    given: str, kept: str | None
) -> None:
    assert Settings(advertise_url=given).advertise_url == kept


@pytest.mark.parametrize(
    "bad", ["10.0.0.5:8000", "ftp://10.0.0.5", "http://", "http://10.0.0.5:8000/api"]
)
def test_an_advertise_url_that_peers_could_not_use_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        Settings(advertise_url=bad)
