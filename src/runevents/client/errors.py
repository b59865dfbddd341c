"""Errors of the client: one class, with the HTTP status when the server answered.

No message shows URL credentials: a server URL may be ``http://user:pw@host``,
and error messages end up in logs and terminals. :class:`ClientError` redacts
any ``scheme://userinfo@`` itself; the client also passes its server URL to
:func:`redact` for the forms without a scheme.
"""

from __future__ import annotations

import re

#: the userinfo of any URL in a text: ``scheme://user:pw@`` (to the authority's last ``@``)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")


class ClientError(Exception):
    """The server could not be reached, or answered with an error.

    ``status`` is the HTTP status (None when the server was not reached) and
    ``code`` the contract's error code (``run_not_found``, ...) when it sent one.
    """

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class ProducerError(ClientError):
    """A producer could not deliver a batch (the events of that batch are not in the log)."""


def redact(text: str, server: str | None = None) -> str:
    """``text`` without URL credentials: ``http://user:pw@host`` shows as ``http://***@host``.

    With ``server``, its userinfo is also removed where it appears without a
    scheme (a server URL given as ``user:pw@host``).
    """
    if server is not None:
        userinfo = _userinfo(server)
        if userinfo:
            text = text.replace(userinfo + "@", "***@")
            if ":" in userinfo:  # "user:password" is specific enough to find alone
                text = text.replace(userinfo, "***")
    return _USERINFO.sub(r"\1***@", text)


def _userinfo(url: str) -> str:
    # by hand, not urlsplit: the URL may be too broken to split, or lack its scheme
    netloc = re.split(r"[/?#]", url.split("://", 1)[-1], maxsplit=1)[0]
    return netloc.rpartition("@")[0]
