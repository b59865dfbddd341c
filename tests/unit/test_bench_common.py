"""bench/common.py: the benchmark events and the results table.

Every benchmark (and every peer) is measured on these events, so their shape
and size are what make the figures comparable.
"""

from __future__ import annotations

import importlib.util
import math
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import ModuleType

import orjson
import pytest

BENCH_COMMON = Path(__file__).resolve().parents[2] / "bench" / "common.py"


def _load() -> ModuleType:
    # bench/ is not a package: load the file under a name of its own.
    spec = importlib.util.spec_from_file_location("_bench_common_under_test", BENCH_COMMON)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


common = _load()

ENVELOPE_KEYS = [
    "type",
    "event_id",
    "created_at",
    "sequence",
    "source",
    "workspace_id",
    "configuration_id",
    "run_id",
    "build_id",
    "payload",
]


@pytest.mark.parametrize("size", [400, 1000])
def test_events_average_the_requested_encoded_size(size: int) -> None:
    events = common.make_console_events(3000, size=size)
    lengths = [len(orjson.dumps(e)) for e in events]
    assert abs(sum(lengths) / len(lengths) - size) < 0.02 * size
    # realistic output: line lengths vary
    assert max(lengths) - min(lengths) > 80


def test_events_are_deterministic_for_a_seed() -> None:
    assert common.make_console_events(200) == common.make_console_events(200)
    assert common.make_console_events(200, seed=1) != common.make_console_events(200)
    # the streaming form yields the very same events
    assert list(common.iter_console_events(200, seed=3)) == common.make_console_events(200, seed=3)


def test_events_are_contract_envelopes() -> None:
    events = common.make_console_events(2000, run_id="run_01JBENCH00000000000000000B")
    assert [e["sequence"] for e in events] == list(range(1, 2001))
    assert len({e["event_id"] for e in events}) == 2000
    stamps = []
    for e in events:
        assert list(e) == ENVELOPE_KEYS
        assert e["type"] == "console.line"
        assert e["run_id"] == "run_01JBENCH00000000000000000B"
        assert re.fullmatch(r"evt_[0-9A-HJKMNP-TV-Z]{26}", e["event_id"])
        assert e["created_at"].endswith("Z")
        stamps.append(datetime.fromisoformat(e["created_at"].replace("Z", "+00:00")))
        p = e["payload"]
        assert set(p) == {"scope", "stream", "level", "message"}
        assert p["stream"] in {"stdout", "stderr"}
        assert p["level"] in {"debug", "info", "warning", "error"}
        assert "\n" not in p["message"]
    assert stamps == sorted(stamps)
    messages = [e["payload"] for e in events]
    assert any("\x1b[" in p["message"] for p in messages)
    assert any(p["stream"] == "stderr" for p in messages)
    assert any(p["level"] == "warning" for p in messages)


def test_drafts_are_the_producer_form_of_the_same_events() -> None:
    drafts = common.make_drafts(50)
    events = common.make_console_events(50)
    assert drafts == [{"type": e["type"], "payload": e["payload"]} for e in events]


def test_append_limit_writes_the_ndjson(tmp_path: Path) -> None:
    events = common.make_console_events(100)
    path = tmp_path / "limit.ndjson"
    assert common.append_limit(path, events) > 0
    assert path.read_bytes() == common.encode_ndjson(events)


def test_render_markdown_groups_sections_and_formats_numbers() -> None:
    rows = [
        common.row("Append", "limit", 400_000.0, "events/s", "limit", 1.0),
        common.row("Replay", "SSE | one client", 250_000.0, "events/s", "limit", 0.625),
        common.row("Append", "one run", 200_000.0, "events/s", "limit", 0.5, "note"),
        common.skipped_row("append", "Redis XADD", "Redis not reachable"),
    ]
    text = common.render_markdown(rows, {"cpu": "Test CPU", "cores": 2, "command": "x --quick"})
    assert "Test CPU" in text
    assert "`x --quick`" in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0].startswith("| section | benchmark | value")
    body = table[2:]
    # grouped: both Append rows before the Replay row, section named once
    assert [re.split(r"(?<!\\)\|", line)[2].strip() for line in body] == [
        "limit",
        "one run",
        "Redis XADD",
        "SSE \\| one client",
    ]
    assert sum("**Append**" in line for line in body) == 1
    assert "400,000" in body[0]
    assert "1.00x" in body[0]
    assert "0.50x" in body[1]
    assert "—" in body[2]
    assert "skipped: Redis not reachable" in body[2]
    assert "0.62x" in body[3] or "0.63x" in body[3]


def test_ratio_format_keeps_small_ratios_visible() -> None:
    assert common.format_ratio(0.0022) == "0.0022x"
    assert common.format_ratio(0.094) == "0.094x"
    assert common.format_ratio(1.0) == "1.00x"
    assert common.format_ratio(None) == ""


def test_rows_to_json_has_no_nan() -> None:
    rows = common.rows_to_json([common.failed_row("Append", "x", RuntimeError("boom"))])
    assert rows[0]["value"] is None
    assert rows[0]["note"] == "failed: RuntimeError: boom"
    assert not any(isinstance(v, float) and math.isnan(v) for v in rows[0].values())


def test_batch_bodies_are_the_drafts_in_batches_of_a_thousand() -> None:
    bodies = common.batch_bodies(2500, seed=4)
    assert [body.count(b"\n") for body in bodies] == [1000, 1000, 500]
    drafts = [orjson.loads(line) for body in bodies for line in body.splitlines()]
    assert drafts == common.make_drafts(2500, seed=4)


def test_wait_server_fails_once_the_server_exited() -> None:
    proc = common.start_server([sys.executable, "-c", "pass"])
    url = f"http://127.0.0.1:{common.free_port()}"
    try:
        with pytest.raises(RuntimeError, match="did not start"):
            common.wait_server(url, proc, time.monotonic() + 30, lambda: "it did not start")
    finally:
        common.stop_servers([proc])


def test_stop_servers_ends_each_process_group_sigkill_after_the_grace() -> None:
    # the second one ignores SIGTERM (as a server stuck in shutdown would)
    polite = common.start_server([sys.executable, "-c", "import time; time.sleep(60)"])
    stuck = common.start_server(
        [
            sys.executable,
            "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert stuck.stdout is not None and stuck.stdout.readline() == b"ready\n"
    started = time.monotonic()
    common.stop_servers([polite, stuck], grace=1.0)
    assert polite.returncode == -signal.SIGTERM
    assert stuck.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10
    stuck.stdout.close()
