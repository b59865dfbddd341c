"""Open mode shut to web pages (contract section 7): Host and Origin checks.

Without tokens every request acts as admin, which is fine for the user's own
programs on the machine but not for the web pages their browser shows: any
page can send a request to ``http://127.0.0.1:8000`` (a ``no-cors`` POST needs
no preflight), and with DNS rebinding a page's own name can come to point at
127.0.0.1 so that it may even read the answers. So, in open mode only:

* a ``Host`` that is not a loopback name or address (``localhost``,
  ``127.0.0.0/8``, ``[::1]``, any port) gets **421**: a rebound name arrives as
  ``Host: evil.example``. (A request with no ``Host`` at all -- HTTP/1.0 from a
  local tool -- passes; browsers always send one.)
* a state-changing request (not GET/HEAD/OPTIONS) whose ``Origin`` is present
  and is not ``http://`` or ``https://`` plus the request's own ``Host`` gets
  **403** (CSRF). ``Origin: null`` (sandboxed frames, ``file:`` pages, some
  redirects) is foreign.

The CLI and other programs send no ``Origin`` and a loopback ``Host``; the
server's own UI sends its own origin. Jupyter and the Docker daemon closed the
same hole the same way. With tokens the checks are off: a page cannot forge
``Authorization``, and cookie requests have their own Origin rule
(``deps.principal``).
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from runevents.api import errors

#: methods that never change state
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def split_host(host: str) -> tuple[str, str | None] | None:
    """``Host`` header -> (name, port or None); None when it is not ``name[:port]``."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        name, rest = host[1:end], host[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else None
    elif host.count(":") == 1:
        name, port = host.split(":")
    elif ":" in host:
        return None  # an IPv6 address must be bracketed in a Host header
    else:
        name, port = host, None
    if port is not None and not (port.isascii() and port.isdigit()):
        return None
    return name, port


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, ``127.x.y.z`` and ``[::1]``, with or without a port."""
    parts = split_host(host.strip())
    if parts is None:
        return False
    name = parts[0]
    if name.lower() == "localhost":
        return True
    try:
        # ipaddress rejects the odd IPv4 spellings (127.1, 0x7f.0.0.1) a resolver
        # might accept, so only the plain dotted form counts
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_own_origin(origin: str, host: str) -> bool:
    """True when ``origin`` is ``http://HOST`` or ``https://HOST`` (``null`` never is)."""
    origin = origin.strip().lower()
    host = host.strip().lower()
    return origin in {f"http://{host}", f"https://{host}"}


class OpenModeGuard:
    """ASGI middleware enforcing the open-mode Host and Origin rules (module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts: list[str] = []
        origin: str | None = None
        for name, value in scope["headers"]:
            if name == b"host":
                hosts.append(value.decode("latin-1"))
            elif name == b"origin":
                origin = value.decode("latin-1")
        if len(hosts) > 1:
            # RFC 9112 3.2: 400. Which one counts would differ between this check (the
            # last) and the routes' same-origin test (the first): judge none of them
            response = errors.error_response(
                400, "bad_request", "a request must carry one Host header, not several"
            )
            await response(scope, receive, send)
            return
        host = hosts[0] if hosts else None
        if host is not None and not is_loopback_host(host):
            response = errors.error_response(
                421,
                "misdirected_request",
                f"this server runs without tokens and answers only to a loopback Host "
                f"(localhost, 127.0.0.1, [::1]), not {host[:200]!r}; give it --tokens "
                "to serve other names",
            )
            await response(scope, receive, send)
            return
        if (
            origin is not None
            and scope["method"] not in SAFE_METHODS
            and not is_own_origin(origin, host or "")
        ):
            response = errors.error_response(
                403,
                "forbidden",
                f"a request from another site (Origin {origin[:200]!r}) may not change "
                "anything on a server running without tokens",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
