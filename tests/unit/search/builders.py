"""Log lines for the search tests: one console event, encoded as the log stores it."""

from __future__ import annotations

from runevents.events import Event, encode_event


def line(seq: int, message: object, type_: str = "console.line", **payload: object) -> bytes:
    return encode_event(
        Event(
            type=type_,
            event_id=f"evt_{seq}",
            created_at="2026-11-24T06:00:00.000000Z",
            sequence=seq,
            source="worker",
            workspace_id="acme",
            configuration_id="etl",
            run_id="run_X",
            build_id=None,
            payload={"stream": "stdout", "level": "info", "message": message, **payload},
        )
    )
