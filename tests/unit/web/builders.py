"""Runs and events as the web client receives them (JSON dicts), for the reducer
and section tests."""

from __future__ import annotations

from typing import Any

RUN = {
    "id": "run_01JABCDEFGHJKMNPQRSTVWXYZ0",
    "workspace_id": "acme",
    "configuration_id": "etl",
    "status": "queued",
    "created_at": "2026-11-24T06:00:00.000000Z",
    "started_at": None,
    "completed_at": None,
    "exit_code": None,
    "event_count": 1,
}


def ev(
    seq: int, type_: str, payload: dict[str, Any] | None = None, t: float = 0.0
) -> dict[str, Any]:
    secs = int(t)
    millis = round((t - secs) * 1000)
    return {
        "type": type_,
        "sequence": seq,
        "event_id": f"evt_{seq}",
        "created_at": f"2026-11-24T06:00:{secs:02d}.{millis:03d}000Z",
        "source": "worker",
        "workspace_id": "acme",
        "configuration_id": "etl",
        "run_id": RUN["id"],
        "build_id": None,
        "payload": payload or {},
    }


def line(
    seq: int, message: str, stream: str = "stdout", level: str = "info", t: float = 1.0
) -> dict[str, Any]:
    return ev(
        seq,
        "console.line",
        {"scope": "run", "stream": stream, "level": level, "message": message},
        t,
    )
