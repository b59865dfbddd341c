"""What the client checks before it sends anything: the ids in paths, and the token.

* Workspace and configuration ids become URL path segments. One that is not a
  contract id (section 1) could name another route (``acme/configurations/x/
  runs/<id>/cancel?``, ``../../metrics``), so it is refused here, with the
  project's own checks (:mod:`runevents.ids`), before any request is made.
* A token goes into a header: a trailing newline (a token read from a file) or
  a non-ASCII character would otherwise surface as a transport or URL error
  that names neither the token nor the fix. The token itself is never echoed.

Credentials in the server URL are kept out of messages by
:func:`runevents.client.errors.redact`.
"""

from __future__ import annotations

from runevents.client.errors import ClientError
from runevents.exceptions import InvalidInput
from runevents.ids import check_name, check_run_id


def checked_name(value: object, what: str) -> str:
    """``value`` if it is a contract id, else ClientError (no request is sent)."""
    try:
        return check_name(value, what)
    except InvalidInput as exc:
        raise ClientError(f"{value!r}: {exc.message}", code=InvalidInput.code) from None


def checked_run_id(value: object) -> str:
    """``value`` if it is a run id (``run_`` + ULID), else ClientError."""
    try:
        return check_run_id(value)
    except InvalidInput as exc:
        raise ClientError(f"{value!r}: {exc.message}", code=InvalidInput.code) from None


def check_token(token: str) -> str:
    """``token`` if it can be sent as ``Authorization: Bearer``; else a ClientError naming why."""
    if token != token.strip():
        raise ClientError(
            "the token starts or ends with whitespace (a newline from a file?): strip it"
        )
    for position, char in enumerate(token):
        if not ("!" <= char <= "~"):
            what = "a non-ASCII character" if ord(char) > 127 else "a space or control character"
            raise ClientError(
                f"the token has {what} at position {position}: "
                "a token is printable ASCII (copy it again as the server printed it)"
            )
    return token
