"""Tokens file, principals, bind check and session cookies (contract section 7)."""

from __future__ import annotations

import hashlib
import logging
import tomllib
from pathlib import Path

import pytest

from runevents.auth import (
    OPEN_PRINCIPAL,
    Principal,
    Role,
    SessionSigner,
    TokenRegistry,
    check_bind,
    generate_token,
    hash_token,
    is_loopback,
    load_tokens,
)
from runevents.exceptions import ConfigError


def entry(name: str, token: str, role: str = "write", workspaces: str = '["acme"]') -> str:
    digest = hashlib.sha256(token.encode()).hexdigest()
    return (
        f'[[token]]\nname = "{name}"\nhash = "sha256:{digest}"\nrole = "{role}"\n'
        f"workspaces = {workspaces}\n"
    )


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(
        entry("ci-bot", "secret-ci", "write", '["acme", "beta"]')
        + entry("viewer", "secret-view", "read", '["acme"]')
        + entry("root", "secret-root", "admin", '["*"]')
    )
    return path


def test_load_and_authenticate(tokens_file: Path) -> None:
    registry = load_tokens(tokens_file)
    assert len(registry) == 3
    assert not registry.open
    ci = registry.authenticate("secret-ci")
    assert ci == Principal("ci-bot", Role.WRITE, frozenset({"acme", "beta"}))
    assert registry.authenticate("secret-view") is not None
    assert registry.authenticate("secret-vie") is None
    assert registry.authenticate("") is None
    # the hash of a token is not the token
    assert registry.authenticate(hashlib.sha256(b"secret-ci").hexdigest()) is None


def test_roles_and_workspaces(tokens_file: Path) -> None:
    registry = load_tokens(tokens_file)
    ci = registry.authenticate("secret-ci")
    viewer = registry.authenticate("secret-view")
    root = registry.authenticate("secret-root")
    assert ci is not None and viewer is not None and root is not None
    assert ci.can_read("acme") and ci.can_write("beta")
    assert not ci.can_read("gamma") and not ci.can_write("gamma")
    assert viewer.can_read("acme") and not viewer.can_write("acme")
    assert not viewer.can_read("beta")
    assert root.can_read("anything") and root.can_write("anything")
    assert ci.visible(["gamma", "beta", "acme"]) == ["beta", "acme"]
    assert OPEN_PRINCIPAL.can_write("x") and OPEN_PRINCIPAL.all_workspaces


def test_to_dict_is_sorted(tokens_file: Path) -> None:
    ci = load_tokens(tokens_file).authenticate("secret-ci")
    assert ci is not None
    assert ci.to_dict() == {"name": "ci-bot", "role": "write", "workspaces": ["acme", "beta"]}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[[token]\nname=", "not valid TOML"),
        (entry("a", "t", role="superuser"), "bad role 'superuser'"),
        (entry("a", "t").replace("sha256:", "md5:"), "bad hash"),
        (entry("a", "t").replace('hash = "sha256:', 'hash = "sha256:zz'), "bad hash"),
        (
            '[[token]]\nhash = "sha256:00"\nrole = "read"\nworkspaces = ["a"]\n',
            "missing field 'name'",
        ),
        (entry("a", "t").replace('role = "write"\n', ""), "missing field 'role'"),
        (entry("a", "t").replace('workspaces = ["acme"]\n', ""), "missing field 'workspaces'"),
        (entry("a", "t", workspaces="[]"), "bad workspaces"),
        (entry("a", "t", workspaces='["../etc"]'), "bad workspace id"),
        (entry("a", "t") + 'color = "red"\n', "unknown field(s) color"),
        (entry("a", "t") + entry("a", "u"), "the name is used twice"),
        (entry("a", "t") + entry("b", "t"), "same hash"),
        ('[token]\nname = "x"\n', "array of tables"),
        ("", "no [[token]] entries"),
        ("other = 1\n", "unknown key(s) other"),
    ],
)
def test_bad_files_name_file_entry_and_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_tokens(path)
    message = str(info.value)
    assert str(path) in message
    assert reason in message


def test_bad_entry_is_named(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(entry("good", "t1") + entry("broken", "t2", role="root"))
    with pytest.raises(ConfigError, match=r"#2 \('broken'\): bad role 'root'"):
        load_tokens(path)


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_tokens(tmp_path / "nope.toml")
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read"):
        load_tokens(bad)


def test_generate_token_round_trips(tmp_path: Path) -> None:
    token, text = generate_token("ci", "write", ["acme", "beta"])
    assert token.startswith("rev_") and len(token) > 40
    assert token not in text
    data = tomllib.loads(text)
    assert data["token"][0]["hash"] == "sha256:" + hash_token(token).hex()
    path = tmp_path / "t.toml"
    path.write_text(text)
    who = load_tokens(path).authenticate(token)
    assert who == Principal("ci", Role.WRITE, frozenset({"acme", "beta"}))
    other, _ = generate_token("ci", "write", ["acme"])
    assert other != token


@pytest.mark.parametrize(
    ("name", "role", "workspaces", "match"),
    [
        ("", "read", ["a"], "--name"),
        ("n", "owner", ["a"], "bad role"),
        ("n", "read", [], "--workspace"),
        ("n", "read", [".."], "bad workspace"),
    ],
)
def test_generate_token_rejects(name: str, role: str, workspaces: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        generate_token(name, role, workspaces)


def test_generated_entry_quotes_odd_names(tmp_path: Path) -> None:
    token, text = generate_token('we"ird\\name', "read", ["*"])
    path = tmp_path / "t.toml"
    path.write_text(text)
    who = load_tokens(path).authenticate(token)
    assert who is not None and who.name == 'we"ird\\name' and who.all_workspaces


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_check_bind(tokens_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = load_tokens(tokens_file)
    check_bind("0.0.0.0", registry)  # tokens: any address
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without tokens"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ConfigError):
        check_bind("10.0.0.1", TokenRegistry())
    with caplog.at_level(logging.WARNING, logger="runevents.auth"):
        check_bind("127.0.0.1", None)
    assert "OPEN" in caplog.text


# ------------------------------------------------------------------ sessions


def test_session_round_trip_and_tamper(tokens_file: Path) -> None:
    registry = load_tokens(tokens_file)
    signer = SessionSigner(b"k" * 32, registry, ttl_seconds=60)
    ci = registry.authenticate("secret-ci")
    assert ci is not None
    value = signer.issue(ci, now=1000)
    assert "secret-ci" not in value
    assert signer.verify(value, now=1000) == ci
    assert signer.verify(value, now=1061) is None  # expired
    body, _, mac = value.partition(".")
    assert signer.verify(body + "." + mac[:-2] + "AA", now=1000) is None
    assert signer.verify(value.replace(".", ""), now=1000) is None
    assert signer.verify("x" * 5000, now=1000) is None
    assert signer.verify("!!!.???", now=1000) is None
    # another key does not accept it
    assert SessionSigner(b"j" * 32, registry, 60).verify(value, now=1000) is None


def test_session_forged_body_with_valid_mac_structure(tokens_file: Path) -> None:
    registry = load_tokens(tokens_file)
    signer = SessionSigner(b"k" * 32, registry, ttl_seconds=60)
    viewer = registry.authenticate("secret-view")
    assert viewer is not None
    value = signer.issue(viewer, now=1000)
    # swapping in another entry's name breaks the MAC
    body, _, mac = value.partition(".")
    import base64
    import json

    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data["n"] = "root"
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    assert signer.verify(forged + "." + mac, now=1000) is None


def test_session_revoked_when_token_rotated(tmp_path: Path, tokens_file: Path) -> None:
    registry = load_tokens(tokens_file)
    ci = registry.authenticate("secret-ci")
    assert ci is not None
    value = SessionSigner(b"k" * 32, registry, 60).issue(ci, now=1000)
    rotated = tmp_path / "rotated.toml"
    rotated.write_text(entry("ci-bot", "new-secret", "write", '["acme"]'))
    assert SessionSigner(b"k" * 32, load_tokens(rotated), 60).verify(value, now=1000) is None
    removed = tmp_path / "removed.toml"
    removed.write_text(entry("other", "x"))
    assert SessionSigner(b"k" * 32, load_tokens(removed), 60).verify(value, now=1000) is None


def test_session_issue_needs_a_configured_token(tokens_file: Path) -> None:
    signer = SessionSigner(b"k" * 32, load_tokens(tokens_file), 60)
    with pytest.raises(ValueError, match="no token entry"):
        signer.issue(OPEN_PRINCIPAL)


def test_session_signer_without_its_key_refuses_to_sign(tokens_file: Path) -> None:
    # the key is read from the database on first use; signing before that is a bug
    signer = SessionSigner(None, load_tokens(tokens_file), 60)
    assert not signer.ready
    ci = load_tokens(tokens_file).entry("ci-bot")
    assert ci is not None
    with pytest.raises(RuntimeError, match="not loaded"):
        signer.issue(ci.principal)
    with pytest.raises(ValueError, match="16 bytes"):
        signer.set_secret(b"short")
    signer.set_secret(b"k" * 32)
    assert signer.verify(signer.issue(ci.principal)) == ci.principal
