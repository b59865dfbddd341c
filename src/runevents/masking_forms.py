"""What a secret value looks like in a log: the forms masking searches for (masking.py).

Why these forms (GitHub Actions masks the same ones):

* the value itself;
* base64: a value inside a base64 blob (``Authorization: Basic ...``, a
  Kubernetes secret) shows up in one of three alignments. For each alignment the
  characters that depend only on the value's bytes are masked; the one or two
  edge characters that mix in the neighbours' bits stay, and they cannot tell
  the value. The whole padded form is masked too.
* percent-encoding: every byte but ``A-Za-z0-9-._~`` encoded, with upper- and
  lower-case hex digits (both are standard).
* a multi-line value: lines are split before masking, so each of its lines of
  at least :data:`MIN_SECRET_CHARS` characters is masked on its own.
"""

from __future__ import annotations

import base64
import re
from typing import Final
from urllib.parse import quote

#: shortest secret a configuration may declare (GitLab's rule: shorter values
#: would mask ordinary words)
MIN_SECRET_CHARS: Final = 8
#: shortest *derived* form (a base64 slice) that is masked; shorter ones would
#: hit ordinary text. The value itself is always masked, whatever its length.
MIN_DERIVED_CHARS: Final = 6


def encoded_forms(value: str) -> set[str]:
    """The strings to mask for ``value``: itself, base64 (3 alignments) and percent-encoded."""
    forms: set[str] = set()
    pieces = [value]
    if "\n" in value:
        # each line of a multi-line value reaches the log on its own line
        pieces += [line.rstrip("\r") for line in value.split("\n") if len(line) >= MIN_SECRET_CHARS]
    for piece in pieces:
        if not piece:
            continue
        forms.add(piece)
        raw = piece.encode("utf-8", "surrogateescape")
        forms.add(base64.b64encode(raw).decode("ascii"))
        for shift in range(3):
            encoded = base64.b64encode(b"\0" * shift + raw).decode("ascii").rstrip("=")
            # characters 6 bits each: skip those holding bits of the shift bytes,
            # stop before the one that would hold bits of whatever follows
            first = -(-8 * shift // 6)
            last = 8 * (shift + len(raw)) // 6
            forms.add(encoded[first:last])
        percent = quote(raw, safe="")
        forms.add(percent)
        forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), percent))
    return {f for f in forms if f and (f in pieces or len(f) >= MIN_DERIVED_CHARS)}
