"""What an S3 failure says: a short, credential-free reason from an obstore error.

Separate from ``s3.py`` (the store itself) because it is text parsing with its
own rules: obstore reports HTTP status and S3 error codes only inside its
message, a message may quote a presigned URL, and an operator needs "access
denied" or "cannot reach the endpoint" rather than a Rust error chain.
"""

from __future__ import annotations

import re

from obstore.exceptions import GenericError, PermissionDeniedError, UnauthenticatedError

_STATUS_RE = re.compile(r"status code: (\d{3})(?: ([A-Za-z ]+))?")
_S3_CODE_RE = re.compile(r"<Code>([A-Za-z0-9.]+)</Code>")


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, without a query string, at most 300 characters."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    # URLs in obstore messages carry no secrets, but cut any query string
    # (presigned URLs would put a signature there) and keep it short
    return re.sub(r"\?\S*", "", line)[:300]


def describe(exc: BaseException, endpoint: str | None) -> str:
    """A short, credential-free reason for an obstore failure."""
    text = str(exc)
    status = _STATUS_RE.search(text)
    code = _S3_CODE_RE.search(text)
    detail = " ".join(
        part for part in (status and f"HTTP {status.group(1)}", code and code.group(1)) if part
    )
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return f"access denied, check the S3 credentials ({detail or type(exc).__name__})"
    if code and code.group(1) == "NoSuchBucket":
        return "the bucket does not exist"
    if isinstance(exc, GenericError) and status:
        if status.group(1) in {"401", "403"}:
            return f"access denied, check the S3 credentials ({detail})"
        return detail
    lowered = text.lower()
    if "error sending request" in lowered or "connect" in lowered or "timed out" in lowered:
        where = endpoint or "the S3 endpoint"
        return f"cannot reach {where} ({first_line(exc)})"
    if detail:
        return detail
    return f"{type(exc).__name__}: {first_line(exc)}"
