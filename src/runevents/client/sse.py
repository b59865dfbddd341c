"""Incremental SSE decoding for the client (contract section 5).

SSE is parsed from bytes, split on ``\\n`` only: a console message may hold
U+2028, U+2029 or other characters that ``str.splitlines()`` (and httpx's
``aiter_lines``) would treat as line breaks.
"""

from __future__ import annotations


class SSEParser:
    """Bytes in, ``(event_id, data)`` of each complete event out.

    Lines end at ``\\n`` (a ``\\r`` before it is dropped); only that byte splits,
    so JSON in ``data`` arrives intact whatever Unicode it holds. Comments
    (``: keepalive``) and ``retry:`` are skipped.
    """

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._id: bytes | None = None

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        """The events completed by ``chunk``."""
        out: list[tuple[str | None, bytes]] = []
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if self._data:
                    event_id = None if self._id is None else self._id.decode("utf-8", "replace")
                    out.append((event_id, b"\n".join(self._data)))
                self._data = []
                self._id = None
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"id":
                self._id = value
        return out
