"""Schemathesis hooks of the project's fuzz test (``SCHEMATHESIS_HOOKS`` / ``hooks =``).

What the OpenAPI document states but no generic generator can act on:

* ``application/x-ndjson`` bodies: the document describes a body as its lines
  read as an array (OpenAPI 3.2's reading of sequential media types, plus
  ``itemSchema`` per line); the serializer writes one JSON line per item, and
  the deserializer reads NDJSON answers back into that array for validation.
* the ``runevents-cursor`` format: a list cursor carries a checksum, so only
  cursors the server could have issued are valid; the strategy makes those.
* long-poll waits (contract 14, ``?wait=S`` up to 60 s): a valid wait on a
  run with nothing new blocks for S seconds, so valid waits are sent as at
  most 1 s (still valid; invalid ones are sent as generated).

Usable from the command line as well::

    SCHEMATHESIS_HOOKS=tests.integration.api.schemathesis_hooks \\
        st --config-file tests/integration/api/schemathesis.toml run URL/api/v1/openapi.json
"""

from __future__ import annotations

import json
import re
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import re2
import schemathesis
from hypothesis import strategies as st

from runevents.api.schemas import CURSOR_FORMAT, SEARCH_CURSOR_FORMAT
from runevents.db.rows import encode_cursor

NDJSON = "application/x-ndjson"


@schemathesis.serializer(NDJSON)
def ndjson_body(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """One JSON document per line; a value that is not a list (a negative case) is one line."""
    lines = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


@schemathesis.deserializer(NDJSON)
def ndjson_answer(ctx: schemathesis.DeserializationContext, response: schemathesis.Response) -> Any:
    """The lines of an NDJSON answer, as the array the document describes."""
    return [json.loads(line) for line in response.content.split(b"\n") if line.strip()]


_run_ids = st.from_regex(r"\Arun_[0-9A-HJKMNP-TV-Z]{26}\Z")
_instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
schemathesis.openapi.format(CURSOR_FORMAT, st.builds(encode_cursor, _instants, _run_ids))
schemathesis.openapi.format(
    SEARCH_CURSOR_FORMAT,
    st.builds(
        lambda cursor, sequence: f"{cursor}.{sequence}",
        st.builds(encode_cursor, _instants, _run_ids),
        st.integers(0, 10**9),
    ),
)

#: the longest long-poll wait sent (seconds)
MAX_WAIT = 1.0


#: every generated Idempotency-Key gets this suffix, unique per request
_KEYS = iter(range(1, 1 << 62))


def _unique_keys(headers: Any) -> None:
    if not isinstance(headers, MutableMapping):
        return
    for name in list(headers):
        value = headers[name]
        # only valid keys (1..200 characters): an invalid one must stay invalid
        if name.lower() == "idempotency-key" and isinstance(value, str) and 0 < len(value) <= 200:
            headers[name] = f"{value[:180]}-{next(_KEYS)}"


def _short_wait(query: Any) -> None:
    if not isinstance(query, MutableMapping) or "wait" not in query:
        return
    value = query["wait"]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return
    try:
        seconds = float(value)
    except ValueError:
        return
    if MAX_WAIT < seconds <= 60:
        query["wait"] = 1


def _valid_regex(query: Any) -> None:
    """``regex=true`` with a ``q`` RE2 refuses is rightly 422 ``invalid_regex``: no schema
    can say which strings are valid expressions, so a generated one is made valid."""
    if not isinstance(query, MutableMapping) or query.get("regex") not in (True, "true"):
        return
    q = query.get("q")
    if not isinstance(q, str):
        return
    try:
        re2.compile(q)
    except re2.error:
        query["q"] = re.escape(q)


@schemathesis.hook
def before_call(ctx: schemathesis.HookContext, case: schemathesis.Case, kwargs: Any) -> None:
    """Shorten a valid long-poll ``wait`` to :data:`MAX_WAIT` seconds (the run stays bounded),
    and make each ``Idempotency-Key`` name one batch: a key names one batch (contract 6),
    so the same generated key with another generated body is rightly 422
    ``idempotency_key_reused`` -- state, not a schema disagreement. The case itself is
    edited (schemathesis sends ``case.query`` and ``case.headers``), and any transport
    arguments too."""
    _unique_keys(case.headers)
    _unique_keys(kwargs.get("headers"))
    _short_wait(case.query)
    _short_wait(kwargs.get("params"))
    _valid_regex(case.query)
