"""Auth: the tokens file, principals, and signed browser sessions (contract section 7).

* The tokens file (TOML, ``[[token]]`` entries) holds SHA-256 hashes, never
  secrets. A presented token is hashed and compared against every entry with
  :func:`hmac.compare_digest`, so neither the comparison nor the position of
  the matching entry leaks through timing.
* A :class:`Principal` is who a request acts as: a name, a role
  (``read`` < ``write`` < ``admin``) and the workspaces it may touch (``*`` =
  every workspace). Without tokens the server is *open*: every request acts as
  :data:`OPEN_PRINCIPAL` (admin on ``*``), allowed only on loopback
  (:func:`check_bind`).
* Browser sessions: the cookie holds ``base64url(json) "." base64url(hmac)``,
  signed with the deployment's session key: ``session_secret`` if configured,
  else a random key created once in the database (``server_keys``), so every
  process on the same database accepts a session any of them issued. It names
  the token entry and a fingerprint of its hash, never the token, so removing
  or rotating a token in the file ends its sessions too. It expires after ``session_ttl_seconds``,
  and carries a random session id: signing out records it as revoked in the
  database (``db/sessions.py``), so a copy of the cookie is refused from then on.

Nothing here knows about HTTP; ``api/deps.py`` and ``api/session.py`` use it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from runevents.exceptions import ConfigError
from runevents.ids import NAME_RE

log = logging.getLogger(__name__)

#: the workspace wildcard of a token's ``workspaces``
ALL = "*"
#: name of the session signing key in the database's ``server_keys``
SESSION_KEY_NAME = "session"
#: bytes of randomness in a generated token and a generated session secret
TOKEN_BYTES = 32
_TOKEN_PREFIX = "rev_"
_HASH_PREFIX = "sha256:"


class Role(enum.StrEnum):
    """What a token may do; each role includes the ones before it."""

    #: view runs, events, configurations
    READ = "read"
    #: also create runs, append events, cancel
    WRITE = "write"
    #: everything (reserved for administrative routes)
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Role.READ: 0, Role.WRITE: 1, Role.ADMIN: 2}


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as."""

    name: str
    role: Role
    #: workspace ids this principal may touch; contains ``*`` for all of them
    workspaces: frozenset[str]

    @property
    def all_workspaces(self) -> bool:
        return ALL in self.workspaces

    def can_read(self, workspace_id: str) -> bool:
        """May this principal view ``workspace_id``?"""
        return self.all_workspaces or workspace_id in self.workspaces

    def can_write(self, workspace_id: str) -> bool:
        """May this principal create runs, append events and cancel in ``workspace_id``?"""
        return self.role.rank >= Role.WRITE.rank and self.can_read(workspace_id)

    def visible(self, workspace_ids: Iterable[str]) -> list[str]:
        """The subset of ``workspace_ids`` this principal may read, in the given order."""
        return [ws for ws in workspace_ids if self.can_read(ws)]

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``GET /api/v1/session``."""
        return {"name": self.name, "role": self.role.value, "workspaces": sorted(self.workspaces)}


#: who every request acts as when no tokens are configured (loopback only)
OPEN_PRINCIPAL = Principal(name="open", role=Role.ADMIN, workspaces=frozenset({ALL}))


@dataclasses.dataclass(frozen=True, slots=True)
class TokenEntry:
    """One ``[[token]]`` entry: a principal and the SHA-256 digest of its token."""

    principal: Principal
    digest: bytes


def hash_token(token: str) -> bytes:
    """SHA-256 digest of a presented token (what the tokens file stores, as hex)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenRegistry:
    """The configured tokens. Empty means open mode."""

    def __init__(self, entries: Sequence[TokenEntry] = (), *, source: str | None = None) -> None:
        self.entries = tuple(entries)
        #: the file the entries came from (for messages)
        self.source = source
        self._by_name = {e.principal.name: e for e in self.entries}

    @property
    def open(self) -> bool:
        """True when no token is configured: every request acts as OPEN_PRINCIPAL."""
        return not self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of ``token``, or None if no entry matches.

        Every entry is compared (no early exit), each in constant time.
        """
        digest = hash_token(token)
        found: Principal | None = None
        for entry in self.entries:
            if hmac.compare_digest(digest, entry.digest):
                found = entry.principal
        return found

    def entry(self, name: str) -> TokenEntry | None:
        """The entry named ``name`` (used to resolve sessions)."""
        return self._by_name.get(name)


def _fail(path: Path, where: str, reason: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {reason}")


def _parse_entry(path: Path, index: int, raw: object) -> TokenEntry:
    where = f"[[token]] #{index}"
    if not isinstance(raw, dict):
        raise _fail(path, where, "must be a table")
    name = raw.get("name")
    if isinstance(name, str) and name:
        where = f"[[token]] #{index} ({name!r})"
    else:
        raise _fail(path, where, "missing field 'name' (a non-empty string)")
    unknown = set(raw) - {"name", "hash", "role", "workspaces"}
    if unknown:
        raise _fail(path, where, f"unknown field(s) {', '.join(sorted(unknown))}")
    digest_text = raw.get("hash")
    if digest_text is None:
        raise _fail(path, where, "missing field 'hash' (\"sha256:<64 hex digits>\")")
    if not isinstance(digest_text, str) or not digest_text.startswith(_HASH_PREFIX):
        raise _fail(path, where, 'bad hash: must be "sha256:<64 hex digits>"')
    hex_part = digest_text[len(_HASH_PREFIX) :]
    try:
        digest = bytes.fromhex(hex_part)
    except ValueError:
        digest = b""
    if len(digest) != hashlib.sha256().digest_size or len(hex_part) != 64:
        raise _fail(path, where, 'bad hash: must be "sha256:<64 hex digits>"')
    role_text = raw.get("role")
    if role_text is None:
        raise _fail(path, where, "missing field 'role' (read, write or admin)")
    try:
        role = Role(role_text)
    except ValueError:
        raise _fail(path, where, f"bad role {role_text!r}: must be read, write or admin") from None
    workspaces = raw.get("workspaces")
    if workspaces is None:
        raise _fail(path, where, "missing field 'workspaces' (a list, or [\"*\"])")
    if not isinstance(workspaces, list) or not workspaces:
        raise _fail(path, where, 'bad workspaces: must be a non-empty list, or ["*"]')
    for ws in workspaces:
        if ws != ALL and (
            not isinstance(ws, str) or not NAME_RE.fullmatch(ws) or ws in {".", ".."}
        ):
            raise _fail(path, where, f"bad workspace id {ws!r}")
    principal = Principal(name=name, role=role, workspaces=frozenset(workspaces))
    return TokenEntry(principal=principal, digest=digest)


def load_tokens(path: Path | str) -> TokenRegistry:
    """Read a tokens file. Raises ConfigError naming the file, the entry and the reason."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read tokens file: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = set(data) - {"token"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; expected [[token]]"
        )
    raw_entries = data.get("token", [])
    if not isinstance(raw_entries, list):
        raise ConfigError(f"{path}: 'token' must be an array of tables ([[token]])")
    entries = [_parse_entry(path, i, raw) for i, raw in enumerate(raw_entries, start=1)]
    if not entries:
        # an empty file must not silently mean "open mode"
        raise ConfigError(f"{path}: no [[token]] entries; add one (see `runevents token new`)")
    names = [e.principal.name for e in entries]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{path}: [[token]] {name!r}: the name is used twice")
    digests = [e.digest for e in entries]
    if len(set(digests)) != len(digests):
        raise ConfigError(f"{path}: two [[token]] entries have the same hash")
    return TokenRegistry(entries, source=str(path))


def generate_token(name: str, role: str, workspaces: Sequence[str]) -> tuple[str, str]:
    """A new random token and the ``[[token]]`` entry (TOML text) that admits it.

    Raises ConfigError for a bad name, role or workspace (the CLI shows the message).
    """
    if not name or not isinstance(name, str):
        raise ConfigError("the token needs a non-empty --name")
    try:
        Role(role)
    except ValueError:
        raise ConfigError(f"bad role {role!r}: must be read, write or admin") from None
    if not workspaces:
        raise ConfigError("give at least one --workspace (or '*' for every workspace)")
    for ws in workspaces:
        if ws != ALL and (not NAME_RE.fullmatch(ws) or ws in {".", ".."}):
            raise ConfigError(f"bad workspace id {ws!r}")
    token = _TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    entry = (
        "[[token]]\n"
        f"name = {json.dumps(name)}\n"
        f'hash = "{_HASH_PREFIX}{hash_token(token).hex()}"\n'
        f"role = {json.dumps(role)}\n"
        f"workspaces = [{', '.join(json.dumps(ws) for ws in workspaces)}]\n"
    )
    return token, entry


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tokens: TokenRegistry | None) -> None:
    """Refuse to serve a non-loopback address without tokens; warn in open mode.

    Called by ``runevents serve`` before the server binds. ``None`` means no
    tokens file (open mode), like an empty registry.
    """
    if tokens is not None and not tokens.open:
        return
    if not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without tokens: anyone could read and write runs. "
            "Give --tokens FILE (see `runevents token new`), or bind to 127.0.0.1."
        )
    log.warning(
        "runevents runs OPEN on %s: no tokens configured, every request acts as admin on "
        "every workspace. Give --tokens FILE to require tokens.",
        host,
    )


# ---------------------------------------------------------------------------- sessions


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _fingerprint(entry: TokenEntry) -> str:
    # binds a session to this exact token: a rotated hash invalidates it
    return hashlib.sha256(b"runevents-session\0" + entry.digest).hexdigest()[:32]


class Session(NamedTuple):
    """A verified browser session: who it acts as, its id, and when its cookie expires."""

    principal: Principal
    id: str
    #: Unix time
    expires: int


class SessionSigner:
    """Issues and verifies ``runevents_session`` cookie values.

    ``secret`` may come later (:meth:`set_secret`): the key created in the
    database is read once the database is open.
    """

    def __init__(self, secret: bytes | None, tokens: TokenRegistry, ttl_seconds: float) -> None:
        self._secret = secret
        self.tokens = tokens
        self.ttl_seconds = ttl_seconds

    @property
    def ready(self) -> bool:
        """Whether the signing key is known."""
        return self._secret is not None

    def set_secret(self, secret: bytes) -> None:
        """Use ``secret`` from now on (the deployment's key, read from the database)."""
        if len(secret) < 16:
            raise ValueError("a session key needs at least 16 bytes")
        self._secret = secret

    def _mac(self, body: bytes) -> bytes:
        if self._secret is None:
            raise RuntimeError("the session key is not loaded yet")
        return hmac.new(self._secret, body, hashlib.sha256).digest()

    def issue(self, principal: Principal, *, now: float | None = None) -> str:
        """A signed cookie value for ``principal`` (which must be a configured token)."""
        entry = self.tokens.entry(principal.name)
        if entry is None:
            raise ValueError(f"no token entry named {principal.name!r}")
        expires = int((time.time() if now is None else now) + self.ttl_seconds)
        body = json.dumps(
            # "s": the session's own id, which signing out revokes (db/sessions.py)
            {
                "n": principal.name,
                "f": _fingerprint(entry),
                "e": expires,
                "s": secrets.token_hex(16),
            },
            separators=(",", ":"),
        ).encode()
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def verify(self, value: str, *, now: float | None = None) -> Principal | None:
        """The principal of a cookie value, or None if forged, expired or its token revoked.

        (Whether the session was signed out is the database's to say: see
        :meth:`verify_session`.)"""
        session = self.verify_session(value, now=now)
        return None if session is None else session.principal

    def verify_session(self, value: str, *, now: float | None = None) -> Session | None:
        """The session of a cookie value, or None if forged, expired or its token revoked."""
        body_text, sep, mac_text = value.partition(".")
        if not sep or len(value) > 4096:
            return None
        try:
            body = _unb64(body_text)
            mac = _unb64(mac_text)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            data = json.loads(body)
            name, fingerprint, expires, session_id = data["n"], data["f"], data["e"], data["s"]
        except (ValueError, KeyError, TypeError):
            return None  # (a cookie issued before sessions had ids: sign in again)
        if not isinstance(expires, int) or expires < (time.time() if now is None else now):
            return None
        if not isinstance(session_id, str) or not 0 < len(session_id) <= 64:
            return None
        entry = self.tokens.entry(name) if isinstance(name, str) else None
        if entry is None or not isinstance(fingerprint, str):
            return None
        if not hmac.compare_digest(fingerprint.encode(), _fingerprint(entry).encode()):
            return None
        return Session(entry.principal, session_id, expires)
